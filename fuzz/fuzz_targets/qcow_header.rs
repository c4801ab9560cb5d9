//! See `cowimg::fuzz::qcow_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::qcow_header(data));
