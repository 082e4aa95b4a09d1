//! turnstile's fuzz targets, as plain functions: `fuzz_targets/` hands them
//! libFuzzer's input, `examples/seeds.rs` writes the committed corpus with them.
//!
//! # Layout
//! - [`requests`]: request bytes decoded with prost and run through the
//!   server's validation, against the documented limits.
//! - [`core_ops`]: operation sequences on the lock table, against a model
//!   that asserts G1–G4, G6, G7 and the table's next deadline after every step.

pub mod core_ops;
pub mod requests;
