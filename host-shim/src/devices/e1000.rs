//! (placeholder: the e1000 model)
