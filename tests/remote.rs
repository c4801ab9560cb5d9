//! Images read where they lie, against real servers on loopback that this test starts:
//! an HTTP server that honours Range (`rangehttpserver` from PyPI) and an S3 server
//! (`moto[server]`), each serving QEMU-made images (a backing chain named relatively, a
//! snapshot, compressed clusters, a partition table). Every answer is compared with
//! qemu-img's on the local copies. Then servers that fail: one that cuts a response
//! short, one that stalls, one that lacks the object.

mod common;

use common::{free_port, qemu_img, qemu_io, run_ok, Scratch};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "cowimg-test-secret-Zq8v";

/// A server process, stopped when dropped, with its log (stderr) in a file.
struct Server {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Server {
    fn start(dir: &Path, program: &str, args: &[&str], port: u16, log: &Path) -> Server {
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (see .ci/run): {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            port,
            log: log.to_path_buf(),
        }
    }

    /// Requests the server has logged so far whose line holds `method`.
    fn logged(&self, method: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains(method)).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A Range-honouring HTTP server over `dir` (files under it by their relative paths).
fn http_server(dir: &Path, log: &Path) -> Server {
    let port = free_port();
    let p = port.to_string();
    let args = ["-m", "RangeHTTPServer", &p, "--bind", "127.0.0.1"];
    Server::start(dir, "python3", &args, port, log)
}

/// The environment that points cowimg's (and boto3's) S3 client at a moto server.
fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "cowimg-test-key".into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// A moto S3 server holding `files` of `dir` in bucket `evidence` under `d/`.
fn s3_server(dir: &Path, files: &[&str], log: &Path) -> Server {
    let port = free_port();
    let p = port.to_string();
    let server = Server::start(
        dir,
        "python3",
        &["-m", "moto.server", "-H", "127.0.0.1", "-p", &p],
        port,
        log,
    );
    let script = format!(
        "import boto3\ns = boto3.client('s3')\ns.create_bucket(Bucket='evidence')\n\
         for n in {files:?}: s.upload_file(n, 'evidence', 'd/' + n)\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .current_dir(dir)
        .envs(s3_env(port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
}

/// Runs cowimg with `env`; asserts the secret is in neither output stream.
fn cowimg_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .output()
        .unwrap();
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(SECRET), "cowimg {args:?} printed the secret");
        assert!(
            !text.contains("sig=cowimg"),
            "cowimg {args:?} printed a signature"
        );
    }
    out
}

fn ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = cowimg_env(args, env);
    assert!(
        out.status.success(),
        "cowimg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// QEMU-made images in `dir`: `top.qcow2` over `base.qcow2` (named relatively) with a
/// snapshot, `packed.qcow2` (zlib-compressed clusters), `parts.qcow2` (an MBR table).
/// Returns the names to serve.
fn images(dir: &Scratch) -> Vec<&'static str> {
    let p = |n: &str| dir.str(n);
    qemu_img(&["create", "-q", "-f", "qcow2", &p("base.qcow2"), "64M"]);
    qemu_io(&[
        "-c",
        "write -P 0x11 0 4M",
        "-c",
        "write -P 0x22 10M 3M",
        &p("base.qcow2"),
    ]);
    let create = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
    ];
    run_ok(
        Some(&dir.path("")),
        "qemu-img",
        &[&create[..], &["top.qcow2"]].concat(),
    );
    qemu_io(&["-c", "write -P 0x33 1M 2M", &p("top.qcow2")]);
    qemu_img(&["snapshot", "-c", "snap1", &p("top.qcow2")]);
    qemu_io(&[
        "-c",
        "write -P 0x44 3M 1M",
        "-c",
        "write -z 11M 64k",
        &p("top.qcow2"),
    ]);
    // Compressible data that is not all one byte: counters, then a run of text.
    let mut raw: Vec<u8> = (0..12u32 << 20)
        .map(|i| ((i / 3) ^ (i >> 9)) as u8)
        .collect();
    raw.extend(b"cowimg remote ".repeat(1 << 18));
    std::fs::write(dir.path("packed.raw"), &raw).unwrap();
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &p("packed.raw"),
        &p("packed.qcow2"),
    ]);
    qemu_img(&["create", "-q", "-f", "raw", &p("parts.raw"), "32M"]);
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", &p("parts.raw")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (fdisk) is needed");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,8M,83\n,,7\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &p("parts.raw"),
        &p("parts.qcow2"),
    ]);
    // An external data file named relatively, and a raw file that ends mid-sector
    // (QEMU reads it as whole sectors: the last range asked runs past the object).
    run_ok(
        Some(&dir.path("")),
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=ext.data",
            "ext.qcow2",
            "8M",
        ],
    );
    run_ok(
        Some(&dir.path("")),
        "qemu-io",
        &["-c", "write -P 0x55 64k 1M", "ext.qcow2"],
    );
    let odd: Vec<u8> = (0..1234u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(dir.path("odd.raw"), odd).unwrap();
    vec![
        "top.qcow2",
        "base.qcow2",
        "packed.qcow2",
        "parts.qcow2",
        "ext.qcow2",
        "ext.data",
        "odd.raw",
    ]
}

/// `qemu-img info --output=json` without what names or measures the file itself.
fn info_facts(json: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    let o = v.as_object_mut().unwrap();
    for key in [
        "filename",
        "full-backing-filename",
        "actual-size",
        "children",
    ] {
        o.remove(key);
    }
    v
}

/// Every read-type command on the image `name` at `url`, against qemu-img on the copy
/// in `dir`.
fn same_as_qemu(dir: &Scratch, name: &str, url: &str, env: &[(&str, String)]) {
    // In the image's folder: QEMU resolves a data file against its working directory.
    let qemu_img = |args: &[&str]| run_ok(Some(&dir.path("")), "qemu-img", args);
    let local = dir.str(name);
    let qemu_raw = dir.path(&format!("{name}.qemu.raw"));
    qemu_img(&["convert", "-O", "raw", &local, qemu_raw.to_str().unwrap()]);
    let expected = std::fs::read(&qemu_raw).unwrap();

    let ours = dir.path(&format!("{name}.ours.raw"));
    ok(&["convert", "-O", "raw", url, ours.to_str().unwrap()], env);
    assert!(
        std::fs::read(&ours).unwrap() == expected,
        "{url}: convert differs"
    );
    let ours_qcow2 = dir.path(&format!("{name}.ours.qcow2"));
    ok(
        &["convert", "-O", "qcow2", url, ours_qcow2.to_str().unwrap()],
        env,
    );
    let compared = Command::new("qemu-img")
        .args(["compare", &local, ours_qcow2.to_str().unwrap()])
        .current_dir(dir.path(""))
        .output()
        .unwrap();
    assert!(compared.status.success(), "{url}: qcow2 convert differs");

    // Names of the chain's files, local or remote, as one word.
    let folder = url.rsplit_once('/').unwrap().0;
    // (A data file is named as resolved against the image's folder, where qemu-img
    // names it as its working directory sees it: the README's deliberate difference.)
    let unnamed = |text: &str| {
        text.replace(&format!("{folder}/"), "DIR/")
            .replace(&dir.str(""), "DIR/")
            .replace("DIR/ext.data", "ext.data")
    };
    // The same exit code and words (errors included: qemu-img refuses the human map of
    // compressed clusters and the check of a raw image, so must we).
    let same = |words: &[&str]| {
        let text = |out: &Output| {
            let all = [&out.stdout, &out.stderr].map(|s| String::from_utf8_lossy(s).into_owned());
            let all = all.join("");
            unnamed(
                &all.replacen("qemu-img: ", "", 1)
                    .replacen("cowimg: ", "", 1),
            )
        };
        let mut ours: Vec<&str> = words.to_vec();
        ours.push(url);
        let ours = cowimg_env(&ours, env);
        let qemu = Command::new("qemu-img")
            .args(words)
            .arg(&local)
            .current_dir(dir.path(""))
            .output()
            .unwrap();
        assert_eq!(ours.status.code(), qemu.status.code(), "{url}: {words:?}");
        assert_eq!(text(&ours), text(&qemu), "{url}: {words:?}");
    };
    same(&["map", "--output=json"]);
    same(&["map", "--output=human"]);
    same(&["check"]);
    assert_eq!(
        info_facts(&ok(&["info", "--output=json", url], env)),
        info_facts(&qemu_img(&["info", "--output=json", &local])),
        "{url}: info"
    );
    ok(&["compare", url, &local], env);

    let hashes = ok(&["hash", "--snapshot", "all", url], env);
    let mut lines = hashes.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("sha256 {}  {url}", sha256_hex(&expected))
    );
    for line in lines {
        let snapshot = line.rsplit_once('@').unwrap().1;
        let raw = dir.path(&format!("{name}.{snapshot}.raw"));
        qemu_img(&[
            "convert",
            "-l",
            snapshot,
            "-O",
            "raw",
            &local,
            raw.to_str().unwrap(),
        ]);
        let digest = sha256_hex(&std::fs::read(&raw).unwrap());
        assert_eq!(line, format!("sha256 {digest}  {url}@{snapshot}"));
    }

    // Commands qemu-img lacks: the same answer as for the local copy.
    for command in [&["partitions"][..], &["inspect", "--output=json"]] {
        let run = |image: &str| {
            let mut args = command.to_vec();
            args.push(image);
            let out = cowimg_env(&args, env);
            (
                out.status.code(),
                unnamed(&String::from_utf8_lossy(&out.stdout)),
            )
        };
        assert_eq!(run(url), run(&local), "{url}: {command:?}");
    }
    let carve = |image: &str, to: &str| {
        let to = dir.str(to);
        let code = cowimg_env(&["carve", image, &to], env).status.code();
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&to)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .map(|(n, b)| (n.rsplit('/').next().unwrap().to_string(), b))
            .collect();
        files.sort();
        (code, files)
    };
    assert_eq!(
        carve(url, &format!("{name}.carved.remote")),
        carve(&local, &format!("{name}.carved.local")),
        "{url}: carve"
    );
}

/// `info` of a URL naming no object fails with exit 1, naming it as `shown`.
fn refused_as_missing(url: &str, shown: &str, env: &[(&str, String)]) {
    let missing = cowimg_env(&["info", url], env);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&format!("'{shown}'")) && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn http_images_read_as_qemu_img_reads_the_local_copies() {
    let dir = Scratch::new("remote-http");
    let names = images(&dir);
    std::fs::create_dir_all(dir.path("srv")).unwrap();
    for n in &names {
        std::fs::copy(dir.path(n), dir.path(&format!("srv/{n}"))).unwrap();
    }
    let server = http_server(&dir.path("srv"), &dir.path("http.log"));
    let base = format!("http://127.0.0.1:{}", server.port);
    for name in [
        "top.qcow2",
        "packed.qcow2",
        "parts.qcow2",
        "ext.qcow2",
        "odd.raw",
    ] {
        same_as_qemu(&dir, name, &format!("{base}/{name}"), &[]);
    }

    // Credentials and signatures in the URL are never shown.
    let signed = format!(
        "http://user:{SECRET}@127.0.0.1:{}/top.qcow2?sig=cowimg",
        server.port
    );
    let info = ok(&["info", &signed], &[]);
    assert!(
        info.starts_with(&format!("image: {base}/top.qcow2\n")),
        "{info}"
    );
    assert!(
        info.contains(&format!("(actual path: {base}/base.qcow2)")),
        "{info}"
    );
    assert!(info.contains("disk size: unavailable\n"), "{info}");
    refused_as_missing(
        &signed.replace("top", "absent"),
        &format!("{base}/absent.qcow2"),
        &[],
    );

    // Remote images are read-only, refused by name.
    let written = cowimg_env(
        &[
            "io",
            "-f",
            "qcow2",
            "-c",
            "write 0 512",
            &format!("{base}/top.qcow2"),
        ],
        &[],
    );
    assert!(!written.status.success());
    assert!(String::from_utf8_lossy(&written.stderr).contains("remote images are read-only"));

    // Few requests: info reads each header with one size and one range request; a
    // whole convert fetches ever larger blocks.
    let before = (server.logged("\"HEAD "), server.logged("\"GET "));
    ok(&["info", &format!("{base}/packed.qcow2")], &[]);
    let after = (server.logged("\"HEAD "), server.logged("\"GET "));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "info's requests"
    );
    let out = dir.str("count.raw");
    ok(
        &[
            "convert",
            "-O",
            "raw",
            &format!("{base}/packed.qcow2"),
            &out,
        ],
        &[],
    );
    let gets = server.logged("\"GET ") - after.1;
    let size = std::fs::metadata(dir.path("packed.qcow2")).unwrap().len();
    assert!(
        gets as u64 <= size.div_ceil(1 << 20) / 2 + 4,
        "{gets} requests to read {size} bytes"
    );
}

#[test]
fn s3_images_read_as_qemu_img_reads_the_local_copies() {
    let dir = Scratch::new("remote-s3");
    let names = images(&dir);
    let server = s3_server(&dir.path(""), &names, &dir.path("moto.log"));
    let env = s3_env(server.port);
    for name in ["top.qcow2", "packed.qcow2"] {
        same_as_qemu(&dir, name, &format!("s3://evidence/d/{name}"), &env);
    }
    let absent = "s3://evidence/d/absent.qcow2";
    refused_as_missing(absent, absent, &env);
}

#[test]
fn a_bucket_image_is_served_over_nbd_and_fuse() {
    let dir = Scratch::new("remote-exports");
    let names = images(&dir);
    let server = s3_server(&dir.path(""), &names, &dir.path("moto.log"));
    let env = s3_env(server.port);
    let port = free_port();
    let nbd = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "nbd",
            "-r",
            "-t",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg("s3://evidence/d/top.qcow2")
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nbd = common::Stopped(nbd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "cowimg nbd never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(50));
    let uri = format!("nbd://127.0.0.1:{port}");
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        &uri,
        &dir.str("top.qcow2"),
    ]);
    drop(nbd);

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped the FUSE half: mounts need root and /dev/fuse");
        return;
    }
    let point = dir.path("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let mount = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "mount",
            "s3://evidence/d/top.qcow2",
            point.to_str().unwrap(),
        ])
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .spawn()
        .unwrap();
    let mount = common::Stopped(mount);
    let disk = point.join("disk");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !disk.exists() {
        assert!(Instant::now() < deadline, "never mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected = dir.path("top.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        &dir.str("top.qcow2"),
        expected.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&disk).unwrap() == std::fs::read(&expected).unwrap());
    let snapshot = point.join("snapshots/snap1");
    let expected = dir.path("snap1.raw");
    qemu_img(&[
        "convert",
        "-l",
        "snap1",
        "-O",
        "raw",
        &dir.str("top.qcow2"),
        expected.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&snapshot).unwrap() == std::fs::read(&expected).unwrap());
    drop(mount);
}

/// How a hand-written server misbehaves on every range request.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Sends half the body, then closes the connection.
    CutShort,
    /// Sends half the body, then sends nothing more.
    Stall,
}

/// A server that answers HEAD truthfully (an 8 MiB qcow2 magic) and misbehaves on GET.
fn broken_server(how: Misbehaviour) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_badly(conn, how));
        }
    });
    port
}

fn serve_badly(mut conn: TcpStream, how: Misbehaviour) {
    let size: u64 = 8 << 20;
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(r) = lower.strip_prefix("range: bytes=") {
                let (a, b) = r.trim().split_once('-').unwrap();
                range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
            }
        }
        if request.starts_with("HEAD") {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n\r\n"
            );
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let (a, b) = range.unwrap_or((0, size - 1));
        let n = b - a + 1;
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {n}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n"
        );
        let mut body = vec![0u8; (n / 2) as usize];
        if a == 0 {
            body[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        }
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body);
        if let Misbehaviour::Stall = how {
            let _ = conn.read(&mut [0; 1]);
        }
        return;
    }
}

#[test]
fn a_server_that_stops_mid_read_gives_a_clear_error_not_a_hang() {
    let dir = Scratch::new("remote-broken");
    for how in [Misbehaviour::CutShort, Misbehaviour::Stall] {
        let port = broken_server(how);
        let url = format!("http://127.0.0.1:{port}/disk.qcow2");
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .args(["convert", "-O", "raw", &url, &dir.str("out.raw")])
            .env("COWIMG_REMOTE_TIMEOUT", "1")
            .env("COWIMG_REMOTE_RETRIES", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("cowimg hung on a server that stopped mid-read");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("of '{url}' (after 2 attempts)")) && err.contains("reading"),
            "{err}"
        );
    }
}

/// COWIMG_REMOTE_TIMEOUT and COWIMG_REMOTE_RETRIES that do not parse, or lie outside
/// their range, are refused by name before any request (never silently defaulted).
#[test]
fn bad_remote_settings_are_refused_by_name() {
    let url = "http://127.0.0.1:9/disk.qcow2";
    for (name, value) in [
        ("COWIMG_REMOTE_TIMEOUT", "abc"),
        ("COWIMG_REMOTE_TIMEOUT", "0"),
        ("COWIMG_REMOTE_TIMEOUT", "7200"),
        ("COWIMG_REMOTE_RETRIES", "2.5"),
        ("COWIMG_REMOTE_RETRIES", "-1"),
        ("COWIMG_REMOTE_RETRIES", "21"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .args(["info", url])
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{name} must be")) && err.contains(&format!("'{value}'")),
            "{err}"
        );
    }
}
