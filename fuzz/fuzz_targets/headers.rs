//! Any bytes, read as the start of a qcow2, qcow or cow file: an error or a header,
//! never a panic, a hang or a huge allocation.
#![no_main]

use cowimg::storage::MemoryStorage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = MemoryStorage::new(data.to_vec());
    let _ = cowimg::qcow2::Header::read(&storage);
    let _ = cowimg::qcow::Header::read(&storage);
    let _ = cowimg::cow::Header::read(&storage);
    let _ = cowimg::probe(&storage);
});
