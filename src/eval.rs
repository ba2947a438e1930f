//! WER/CER (being written)
