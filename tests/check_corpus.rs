//! `cowimg check` exits as `qemu-img check` does on a corpus of damaged images: the
//! check fuzzer's saved inputs (fuzz/corpus/check), hundreds of qcow2 files with every
//! kind of broken header, table, refcount and snapshot entry. The exit code is what a
//! script acts on (0 clean, 1 not checked, 2 corrupt, 3 leaks), so it must agree.

mod common;

use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The share of images on which both tools must exit alike.
const REQUIRED_AGREEMENT: f64 = 0.99;

/// Exit code of `program check -f qcow2 image`, run in `dir` (a backing file named by
/// a damaged header is looked for there), or None if it ran past a minute.
fn check_exit(program: &str, dir: &Path, image: &Path) -> Option<i32> {
    let mut child = Command::new(program)
        .current_dir(dir)
        .args(["check", "-f", "qcow2"])
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn check_exit_codes_match_qemu_img_on_damaged_images() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/check");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(inputs.len() > 100, "the corpus is there ({})", inputs.len());
    let next = Mutex::new(inputs.iter());
    let differences = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let (next, differences) = (&next, &differences);
            scope.spawn(move || {
                let dir = Scratch::new(&format!("corpus-{worker}"));
                loop {
                    let Some(input) = next.lock().unwrap().next() else {
                        break;
                    };
                    // A copy each: neither tool may see what the other did (nothing,
                    // for a check without -r, but that is not taken on trust).
                    let image = dir.path("image.qcow2");
                    std::fs::copy(input, &image).unwrap();
                    let theirs = check_exit("qemu-img", &dir.path(""), &image);
                    std::fs::copy(input, &image).unwrap();
                    let ours = check_exit(env!("CARGO_BIN_EXE_cowimg"), &dir.path(""), &image);
                    assert!(
                        ours.is_some(),
                        "{}: cowimg check ran past a minute",
                        input.display()
                    );
                    if ours != theirs {
                        let name = input.file_name().unwrap().to_string_lossy().into_owned();
                        differences.lock().unwrap().push((name, theirs, ours));
                    }
                }
            });
        }
    });
    let differences = differences.into_inner().unwrap();
    for (name, theirs, ours) in &differences {
        eprintln!("{name}: qemu-img check exits {theirs:?}, cowimg check {ours:?}");
    }
    let agreement = 1.0 - differences.len() as f64 / inputs.len() as f64;
    eprintln!(
        "exit codes agree on {} of {} images ({:.1}%)",
        inputs.len() - differences.len(),
        inputs.len(),
        agreement * 100.0
    );
    assert!(
        agreement >= REQUIRED_AGREEMENT,
        "exit codes differ on {} images",
        differences.len()
    );
}
