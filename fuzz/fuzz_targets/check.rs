//! See `cowimg::fuzz::check`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::check(data));
