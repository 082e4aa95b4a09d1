//! Fuzz target: bytes decoded as each turnstile.v1 request, then validated (see `turnstile_fuzz::requests`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| turnstile_fuzz::requests::check(data));
