//! Fuzz target: operation sequences on the lock table, checked against a model (see `turnstile_fuzz::core_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| turnstile_fuzz::core_ops::check(data));
