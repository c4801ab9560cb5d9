//! See `cowimg::fuzz::luks_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::luks_header(data));
