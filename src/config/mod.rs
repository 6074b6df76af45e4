//! Settings (placeholder)
