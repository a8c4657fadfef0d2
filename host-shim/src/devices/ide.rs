//! (placeholder: the PIIX3 IDE model)
