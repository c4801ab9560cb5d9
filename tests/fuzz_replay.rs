//! Every saved fuzz corpus and regression input, through the same entry points the
//! fuzz targets use: CI runs them on stable without libFuzzer.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            // A running fuzzer may remove inputs it has reduced.
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target}");
}

#[test]
fn qcow2_header() {
    replay("qcow2_header", cowimg::fuzz::qcow2_header);
}

#[test]
fn qcow_header() {
    replay("qcow_header", cowimg::fuzz::qcow_header);
}

#[test]
fn cow_header() {
    replay("cow_header", cowimg::fuzz::cow_header);
}

#[test]
fn image() {
    replay("image", cowimg::fuzz::image);
}

#[test]
fn check() {
    replay("check", cowimg::fuzz::check);
}

#[test]
fn write_path() {
    replay("write_path", cowimg::fuzz::write_path);
}

#[test]
fn nbd() {
    replay("nbd", cowimg::fuzz::nbd);
}

#[test]
fn luks_header() {
    replay("luks_header", cowimg::fuzz::luks_header);
}
