//! Image locking as QEMU does it: while qemu-io holds an image (read-only or for
//! writing), every cowimg command that opens it succeeds or is refused exactly as the
//! same qemu-img command is, with the same lock message, and changes nothing; while
//! cowimg holds an image, qemu-img and qemu-io are refused.

mod common;

use common::{qemu_img, Scratch};
use cowimg::{ErrorKind, Format, Image, OpenOptions};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A qemu-io process holding an image open until dropped.
struct Holder(Child);

impl Holder {
    fn start(path: &Path, read_only: bool) -> Holder {
        let mut command = Command::new("qemu-io");
        if read_only {
            command.arg("-r");
        }
        let child = command
            .args(["-f", "qcow2", "-c", "sleep 120000"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io");
        // Held once its lock on the "consistent read" byte shows in /proc/locks.
        use std::os::unix::fs::MetadataExt;
        let needle = format!(":{} 100 ", std::fs::metadata(path).unwrap().ino());
        let start = Instant::now();
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .contains(&needle)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "qemu-io took no lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Outcome {
    code: i32,
    stderr: String,
}

fn run(program: &str, args: &[String]) -> Outcome {
    let out = Command::new(program).args(args).output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The lock sentence of an error ("Failed to get "write" lock"), if any.
fn lock_sentence(stderr: &str) -> Option<String> {
    let at = stderr.find("Failed to get ")?;
    let end = stderr[at..].find(" lock").unwrap() + at + " lock".len();
    Some(stderr[at..end].to_string())
}

/// The commands compared: {img} is the held image, {other} an unheld one, {out} a
/// path each tool writes its own output to.
const COMMANDS: &[&[&str]] = &[
    &["info", "{img}"],
    &["info", "-U", "{img}"],
    &["map", "{img}"],
    &["check", "{img}"],
    &["check", "-r", "all", "{img}"],
    &["snapshot", "-l", "{img}"],
    &["snapshot", "-c", "s1", "{img}"],
    &["resize", "{img}", "2M"],
    &["amend", "-o", "lazy_refcounts=on", "{img}"],
    &["compare", "{img}", "{other}"],
    &["convert", "-O", "raw", "{img}", "{out}"],
    &["convert", "-O", "qcow2", "{other}", "{img}"],
    &["create", "-f", "qcow2", "{img}", "1M"],
    &["commit", "{img}"],
    &["rebase", "-u", "-b", "", "{img}"],
    &["dd", "if={img}", "of={out}", "bs=64k"],
    &["measure", "-O", "qcow2", "{img}"],
    &["bench", "-c", "1", "{img}"],
    &["bench", "-w", "-c", "1", "{img}"],
    &["io", "-c", "read 0 512", "{img}"],
    &["io", "-r", "-c", "read 0 512", "{img}"],
    &["io", "-c", "write 0 512", "{img}"],
];

/// Every command of `COMMANDS` against an image qemu-io holds (read-only or not):
/// cowimg's exit code and lock message equal qemu-img's, and the held image is never
/// changed by cowimg.
fn compare_against_holder(read_only: bool) {
    let dir = Scratch::new(if read_only { "held-ro" } else { "held-rw" });
    let base = dir.str("base.qcow2");
    let img = dir.str("img.qcow2");
    qemu_img(&["create", "-f", "qcow2", &base, "1M"]);
    common::qemu_io(&["-f", "qcow2", "-c", "write -P 7 0 64k", &base]);
    let fresh = || {
        qemu_img(&["create", "-f", "qcow2", "-b", &base, "-F", "qcow2", &img]);
        common::qemu_io(&["-f", "qcow2", "-c", "write -P 9 64k 64k", &img]);
    };
    let other = dir.str("other.qcow2");
    qemu_img(&["create", "-f", "qcow2", &other, "1M"]);
    for command in COMMANDS {
        let mut outcomes = Vec::new();
        for program in ["qemu-img", env!("CARGO_BIN_EXE_cowimg")] {
            let _ = std::fs::remove_file(dir.path("out"));
            fresh();
            let before = std::fs::read(&img).unwrap();
            let holder = Holder::start(Path::new(&img), read_only);
            let args: Vec<String> = command
                .iter()
                .map(|a| {
                    a.replace("{img}", &img)
                        .replace("{other}", &other)
                        .replace("{out}", &dir.str("out"))
                })
                .collect();
            // qemu-io is qemu-img's io.
            let outcome = match (program, args[0].as_str()) {
                ("qemu-img", "io") => run("qemu-io", &args[1..]),
                _ => run(program, &args),
            };
            drop(holder);
            if outcome.code != 0 && program != "qemu-img" {
                assert_eq!(
                    std::fs::read(&img).unwrap(),
                    before,
                    "{command:?} changed the held image"
                );
            }
            outcomes.push(outcome);
        }
        let (qemu, ours) = (&outcomes[0], &outcomes[1]);
        assert_eq!(
            ours.code, qemu.code,
            "{command:?} (read-only holder: {read_only}): exit code; qemu-img said {:?}, cowimg {:?}",
            qemu.stderr, ours.stderr
        );
        assert_eq!(
            lock_sentence(&ours.stderr),
            lock_sentence(&qemu.stderr),
            "{command:?} (read-only holder: {read_only}): qemu-img said {:?}, cowimg {:?}",
            qemu.stderr,
            ours.stderr
        );
        if let Some(sentence) = lock_sentence(&qemu.stderr) {
            // The open errors read the same, but for the program's name.
            if qemu.stderr.starts_with("qemu-img: Could not open") {
                let strip = |s: &str| s.split_once(": ").unwrap().1.to_string();
                assert_eq!(strip(&ours.stderr), strip(&qemu.stderr), "{command:?}");
            }
            assert!(ours.stderr.contains(&sentence));
        }
    }
}

#[test]
fn commands_against_an_image_qemu_writes() {
    compare_against_holder(false);
}

#[test]
fn commands_against_an_image_qemu_reads() {
    compare_against_holder(true);
}

/// Opens `path`, waiting out a lock held only by a child another test thread is
/// spawning: between fork and exec the child shares this process's open files, and
/// with them the locks of an image this thread has just closed.
fn open_when_free(path: &str, options: &OpenOptions) -> Image {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Image::open(path, options) {
            Err(e) if e.kind() == ErrorKind::InUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            result => return result.unwrap(),
        }
    }
}

#[test]
fn qemu_is_refused_while_cowimg_holds_an_image() {
    let dir = Scratch::new("cowimg-holds");
    let img = dir.str("img.qcow2");
    qemu_img(&["create", "-f", "qcow2", &img, "1M"]);
    let writable = OpenOptions::new().format(Format::Qcow2).writable(true);
    {
        let _held = open_when_free(&img, &writable);
        let info = run("qemu-img", &["info".into(), img.clone()]);
        assert_eq!(info.code, 1);
        assert_eq!(
            lock_sentence(&info.stderr).as_deref(),
            Some("Failed to get shared \"write\" lock")
        );
        let io = run("qemu-io", &["-c".into(), "write 0 512".into(), img.clone()]);
        assert_eq!(io.code, 1);
        assert!(io.stderr.contains("Is another process using the image"));
        // -U reads what a writer holds, in both tools.
        assert_eq!(
            run("qemu-img", &["info".into(), "-U".into(), img.clone()]).code,
            0
        );
        // A second cowimg user is refused as QEMU would be, with its own error kind.
        let second = Image::open(&img, &OpenOptions::default()).unwrap_err();
        assert_eq!(second.kind(), ErrorKind::InUse);
        let forced = OpenOptions::new().force_share(true);
        Image::open(&img, &forced).unwrap();
    }
    {
        let _held = open_when_free(&img, &OpenOptions::default());
        // Readers share; writers are refused.
        assert_eq!(run("qemu-img", &["info".into(), img.clone()]).code, 0);
        let write = run("qemu-img", &["resize".into(), img.clone(), "2M".into()]);
        assert_eq!(write.code, 1);
        assert_eq!(
            lock_sentence(&write.stderr).as_deref(),
            Some("Failed to get \"write\" lock")
        );
    }
    // Closed: the locks went with the files (once no spawning child shares them).
    let deadline = Instant::now() + Duration::from_secs(5);
    let resize = || run("qemu-img", &["resize".into(), img.clone(), "2M".into()]);
    let mut outcome = resize();
    while outcome.code != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        outcome = resize();
    }
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
}
