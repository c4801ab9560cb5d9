//! See `cowimg::fuzz::write_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::write_path(data));
