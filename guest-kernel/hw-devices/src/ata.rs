//! (placeholder: filled by the ata work)
