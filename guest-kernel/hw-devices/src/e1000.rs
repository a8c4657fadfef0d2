//! (placeholder: filled by the e1000 work)
