//! Model names and fetching (being written)
