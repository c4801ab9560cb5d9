//! Helpers shared by the integration tests: golden files, qemu-img as the oracle, and
//! scratch paths.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The path of a golden file in tests/data.
pub fn data_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The bytes of a golden file in tests/data.
pub fn data(name: &str) -> Vec<u8> {
    std::fs::read(data_path(name)).unwrap_or_else(|e| panic!("tests/data/{name}: {e}"))
}

/// Runs qemu-img and returns its standard output; panics with its stderr on failure.
pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// Runs qemu-io and returns its standard output; panics with its stderr on failure.
/// Runs `program` with `args` in `dir` (or here), which must succeed; its output.
pub fn run_ok(dir: Option<&Path>, program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs cowimg, which must succeed; its standard output.
pub fn cowimg(args: &[&str]) -> String {
    run_ok(None, env!("CARGO_BIN_EXE_cowimg"), args)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process stopped (SIGTERM, then waited for) when dropped, even by a failed
/// assertion, so that no server outlives its test.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn qemu_io(args: &[&str]) -> String {
    run("qemu-io", args)
}

fn run(program: &str, args: &[&str]) -> String {
    // Relative names inside golden images (data files) resolve against tests/data, as
    // QEMU resolves them against its working directory.
    let out = Command::new(program)
        .current_dir(data_path(""))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A fresh scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cowimg-test-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn str(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One range of `qemu-img map --output=json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
}

/// The value of the first `"key": value` in JSON text, as text (a string without its
/// quotes): enough for the flat objects the tests read.
pub fn json_value(obj: &str, key: &str) -> Option<String> {
    let at = obj.find(&format!("\"{key}\": "))? + key.len() + 4;
    let value = obj[at..]
        .trim_start_matches('"')
        .split(['"', ',', '\n', '}'])
        .next()?;
    Some(value.trim().to_string())
}

/// The number of the first `"key": N` in JSON text.
pub fn json_number(obj: &str, key: &str) -> Option<u64> {
    json_value(obj, key)?.parse().ok()
}

/// qemu-img's map of an image.
pub fn qemu_map(path: &Path, format: &str) -> Vec<MapEntry> {
    let text = qemu_img(&["map", "--output=json", "-f", format, path.to_str().unwrap()]);
    text.split('{')
        .skip(1)
        .map(|obj| {
            let num = |key: &str| json_number(obj, key);
            let flag = |key: &str| obj.contains(&format!("\"{key}\": true"));
            MapEntry {
                start: num("start").unwrap(),
                length: num("length").unwrap(),
                depth: num("depth").unwrap(),
                present: flag("present"),
                zero: flag("zero"),
                data: flag("data"),
                compressed: flag("compressed"),
                offset: num("offset"),
            }
        })
        .collect()
}

pub fn be64(bytes: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

pub fn be32(bytes: &[u8], at: u64) -> u32 {
    u32::from_be_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap())
}
