//! Restart and recovery states (filled below).
