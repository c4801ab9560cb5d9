//! kill -9 at every moment of a repair and of snapshot create, apply and delete: what
//! is left is always repaired by cowimg's own `check -r all`, after which both checks
//! find the image clean and its content is one of the states before or after the
//! operation. The killed repair is itself killed and repaired again.

mod common;

use common::{qemu_img, qemu_io, Scratch};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COWIMG: &str = env!("CARGO_BIN_EXE_cowimg");
/// Kill points per operation, spread over its unkilled run time.
const KILLS: u32 = 24;

fn check_code(program: &str, args: &[&str]) -> i32 {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

/// Runs cowimg with `args`, killed with SIGKILL after `delay` if still running.
fn run_killed(args: &[String], delay: Duration) {
    let mut child = Command::new(COWIMG)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

fn guest(path: &str) -> Vec<u8> {
    let out = format!("{path}.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", path, &out]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// After whatever a kill left, `check -r all` (itself killed once part-way, then run
/// to the end) leaves an image both tools find clean, reading as one of `states`.
/// Returns whether qemu-img found corruption before the repair.
fn repair_converges(img: &str, states: &[Vec<u8>], context: &str, half: Duration) -> bool {
    let corrupt = check_code("qemu-img", &["check", "-f", "qcow2", img]) == 2;
    run_killed(
        &["check".into(), "-r".into(), "all".into(), img.into()],
        half,
    );
    let code = check_code(COWIMG, &["check", "-r", "all", "-f", "qcow2", img]);
    assert!(matches!(code, 0 | 3), "{context}: check -r all exit {code}");
    assert_eq!(
        check_code(COWIMG, &["check", "-f", "qcow2", img]),
        0,
        "{context}: cowimg check after repair"
    );
    assert_eq!(
        check_code("qemu-img", &["check", "-f", "qcow2", img]),
        0,
        "{context}: qemu-img check after cowimg's repair"
    );
    let now = guest(img);
    assert!(
        states.contains(&now),
        "{context}: the guest content is neither before nor after"
    );
    corrupt
}

/// Kills `args` ({img} the image) at `KILLS` points of its run on copies of `source`,
/// and has each result repaired (see `repair_converges`). Returns how many kills left
/// corruption for the repair.
fn kill_sweep(
    dir: &Scratch,
    source: &str,
    args: &[String],
    states: &[Vec<u8>],
    half: f64,
) -> usize {
    let full = duration_of(dir, source, args);
    let mut corrupt = 0;
    for k in 0..KILLS {
        let img = dir.str("killed.qcow2");
        std::fs::copy(source, &img).unwrap();
        let delay = full * k / KILLS;
        let run: Vec<String> = args.iter().map(|a| a.replace("{img}", &img)).collect();
        run_killed(&run, delay);
        let context = format!("{args:?} killed after {delay:?} of {full:?}");
        corrupt += usize::from(repair_converges(&img, states, &context, full.mul_f64(half)));
    }
    corrupt
}

/// Times `args` run to the end on a copy of `source`.
fn duration_of(dir: &Scratch, source: &str, args: &[String]) -> Duration {
    let img = dir.str("timed.qcow2");
    std::fs::copy(source, &img).unwrap();
    let args: Vec<String> = args.iter().map(|a| a.replace("{img}", &img)).collect();
    let start = Instant::now();
    let status = Command::new(COWIMG)
        .args(&args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.code().is_some_and(|c| c == 0 || c == 3), "{args:?}");
    start.elapsed()
}

#[test]
fn kills_during_snapshot_operations_leave_a_repairable_image() {
    let dir = Scratch::new("kill-snapshot");
    let base = dir.str("base.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        &base,
        "16M",
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 3 0 16M", &base]);
    let before = guest(&base);
    qemu_img(&["snapshot", "-c", "s0", &base]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 4 0 8M", &base]);
    let after = guest(&base);
    let states = [before, after];
    let mut corrupt_before_repair = 0;
    for op in [
        &["snapshot", "-c", "s1"][..],
        &["snapshot", "-a", "s0"],
        &["snapshot", "-d", "s0"],
    ] {
        let mut args: Vec<String> = op.iter().map(|s| s.to_string()).collect();
        args.push("{img}".into());
        corrupt_before_repair += kill_sweep(&dir, &base, &args, &states, 1.0 / 3.0);
    }
    eprintln!("kills that left corruption for the repair: {corrupt_before_repair}");
}

#[test]
fn kills_during_a_repair_leave_a_repairable_image() {
    let dir = Scratch::new("kill-repair");
    let base = dir.str("dirty.qcow2");
    // A crash with lazy refcounts: the refcounts are stale and the repair rebuilds them.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,lazy_refcounts=on",
        &base,
        "16M",
    ]);
    let status = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 5 0 12M",
            "-c",
            "abort",
            &base,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "qemu-io aborted");
    // Spare room at the end of the file, where the rebuilt structures may go.
    let len = std::fs::metadata(&base).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&base)
        .unwrap()
        .set_len(len + (16 << 10))
        .unwrap();
    let mut expected = vec![5u8; 12 << 20];
    expected.resize(16 << 20, 0);
    let args: Vec<String> = ["check", "-r", "all", "{img}"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    kill_sweep(&dir, &base, &args, std::slice::from_ref(&expected), 0.5);
}
