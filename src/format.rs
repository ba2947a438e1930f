//! Output formats (being written)
