//! `cowimg nbd` against real clients on loopback: qemu-img and qemu-io over
//! nbd://127.0.0.1, nbdinfo and nbdcopy (libnbd-bin) where installed, and qemu-nbd
//! serving the same image for a differential. Plus hostile peers written by hand.

mod common;

use common::{free_port, qemu_img, qemu_io, Scratch};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, stopped (SIGTERM, then waited for) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(program: &str, subcommand: &[&str], args: &[&str]) -> Server {
        let port = free_port();
        let port_text = port.to_string();
        let mut all = subcommand.to_vec();
        all.extend(["-b", "127.0.0.1", "-p", &port_text]);
        all.extend_from_slice(args);
        let child = Command::new(program)
            .args(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe was a client: a non-persistent server now waits for its end.
        std::thread::sleep(Duration::from_millis(50));
        Server { child, port }
    }

    fn cowimg(args: &[&str]) -> Server {
        Server::start(env!("CARGO_BIN_EXE_cowimg"), &["nbd"], args)
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// Stops the server as a user would (SIGTERM) and waits: its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        terminate(&self.child);
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

fn terminate(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&self.child);
        let _ = self.child.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A qcow2 image made by qemu-io with data, zeros, a hole and two snapshots.
fn sample(dir: &Scratch) -> String {
    let path = dir.str("served.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &path, "64M"]);
    qemu_io(&[
        "-c",
        "write -P 0x11 0 1M",
        "-c",
        "write -P 0x22 5M 64k",
        &path,
    ]);
    qemu_img(&["snapshot", "-c", "first", &path]);
    qemu_io(&["-c", "write -z 0 512k", "-c", "write -P 0x33 40M 3M", &path]);
    qemu_img(&["snapshot", "-c", "second", &path]);
    qemu_io(&["-c", "write -P 0x44 63M 1M", &path]);
    path
}

fn raw_of(args: &[&str], out: &Path) -> Vec<u8> {
    let out_s = out.to_str().unwrap();
    qemu_img(&[&["convert"], args, &["-O", "raw", out_s]].concat());
    std::fs::read(out).unwrap()
}

#[test]
fn qemu_img_reads_and_maps_through_cowimg_as_through_qemu_nbd() {
    let dir = Scratch::new("nbd-read");
    let image = sample(&dir);
    let ours = Server::cowimg(&["-r", "-t", "-f", "qcow2", &image]);
    let theirs = Server::start("qemu-nbd", &[], &["-r", "-t", "-f", "qcow2", &image]);
    let local = raw_of(&["-f", "qcow2", &image], &dir.path("local.raw"));
    let served = raw_of(&["-f", "raw", &ours.uri("")], &dir.path("served.raw"));
    assert!(local == served, "the served disk differs from the image");
    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", &image, &ours.uri("")]);
    let map = |uri: &str| qemu_img(&["map", "--output=json", "-f", "raw", uri]);
    assert_eq!(map(&ours.uri("")), map(&theirs.uri("")));
    // And the same ranges as the local map (where the bytes live aside): what reads as
    // data and what as zeros.
    let shape = |entries: Vec<common::MapEntry>| {
        let mut runs: Vec<(u64, u64, bool, bool)> = Vec::new();
        for e in entries {
            match runs.last_mut() {
                Some(last)
                    if (last.2, last.3) == (e.data, e.zero) && last.0 + last.1 == e.start =>
                {
                    last.1 += e.length
                }
                _ => runs.push((e.start, e.length, e.data, e.zero)),
            }
        }
        runs
    };
    assert_eq!(
        shape(common::qemu_map(Path::new(&ours.uri("")), "raw")),
        shape(common::qemu_map(Path::new(&image), "qcow2"))
    );
    let info = |uri: &str| qemu_img(&["info", "--output=json", "-f", "raw", uri]);
    assert_eq!(
        info(&ours.uri("")).replace(&ours.port.to_string(), "PORT"),
        info(&theirs.uri("")).replace(&theirs.port.to_string(), "PORT")
    );
    if have("nbdinfo") {
        let nbdinfo = |args: &[&str]| common::run_ok(None, "nbdinfo", args);
        assert_eq!(
            nbdinfo(&["--map", &ours.uri("")]),
            nbdinfo(&["--map", &theirs.uri("")])
        );
        assert_eq!(
            nbdinfo(&["--size", &ours.uri("")]),
            nbdinfo(&["--size", &theirs.uri("")])
        );
    }
    if have("nbdcopy") {
        let copy = dir.path("nbdcopy.raw");
        common::run_ok(None, "nbdcopy", &[&ours.uri(""), copy.to_str().unwrap()]);
        assert!(std::fs::read(&copy).unwrap() == local);
    }
}

#[test]
fn each_snapshot_is_its_own_read_only_export() {
    let dir = Scratch::new("nbd-snapshots");
    let image = sample(&dir);
    let server = Server::cowimg(&["-r", "-t", "-f", "qcow2", "-x", "disk", &image]);
    for name in ["first", "second"] {
        let want = raw_of(
            &[
                "-f",
                "qcow2",
                "-l",
                &format!("snapshot.name={name}"),
                &image,
            ],
            &dir.path(&format!("{name}.want")),
        );
        let got = raw_of(
            &["-f", "raw", &server.uri(&format!("snapshot:{name}"))],
            &dir.path(&format!("{name}.got")),
        );
        assert!(want == got, "snapshot {name} differs");
    }
    if have("nbdinfo") {
        let list = common::run_ok(None, "nbdinfo", &["--list", "--json", &server.uri("disk")]);
        for name in ["\"disk\"", "\"snapshot:first\"", "\"snapshot:second\""] {
            assert!(list.contains(name), "{name} not listed: {list}");
        }
    }
    // -l serves one snapshot, read-only, as qemu-nbd does.
    let one = Server::cowimg(&["-t", "-f", "qcow2", "-l", "snapshot.name=first", &image]);
    let got = raw_of(&["-f", "raw", &one.uri("")], &dir.path("l.got"));
    assert!(got == std::fs::read(dir.path("first.want")).unwrap());
    let refused = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512", &one.uri("")])
        .output()
        .unwrap();
    assert!(
        !refused.status.success() || !String::from_utf8_lossy(&refused.stdout).contains("wrote")
    );
}

#[test]
fn writes_through_nbd_land_in_the_image_as_qemu_io_would_write_them() {
    let dir = Scratch::new("nbd-write");
    let image = sample(&dir);
    let model = dir.str("model.qcow2");
    std::fs::copy(&image, &model).unwrap();
    let commands = [
        "write -P 0x55 100k 300k",
        "write -z 5M 64k",
        "discard 40M 1M",
        "write -f -P 0x66 62M 4k",
        "flush",
        "write -P 0x77 63M 512",
    ];
    let server = Server::cowimg(&["-t", "-f", "qcow2", "-e", "2", &image]);
    let mut args = vec!["-f", "raw", "-d", "unmap"];
    for c in &commands {
        args.extend(["-c", *c]);
    }
    let uri = server.uri("");
    args.push(&uri);
    let out = qemu_io(&args);
    assert!(out.contains("wrote 307200/307200"), "{out}");
    assert!(server.stop().success());
    let mut local = vec!["-f", "qcow2", "-d", "unmap"];
    for c in &commands {
        local.extend(["-c", *c]);
    }
    local.push(&model);
    qemu_io(&local);
    qemu_img(&["check", &image]);
    qemu_img(&["compare", "-f", "qcow2", "-F", "qcow2", &model, &image]);
}

#[test]
fn a_unix_socket_and_a_server_that_ends_with_its_last_client() {
    let dir = Scratch::new("nbd-unix");
    let image = sample(&dir);
    let socket = dir.path("nbd.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args([
            "nbd",
            "-r",
            "-f",
            "qcow2",
            "-k",
            socket.to_str().unwrap(),
            &image,
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let got = raw_of(&["-f", "raw", &uri], &dir.path("unix.raw"));
    assert!(got == raw_of(&["-f", "qcow2", &image], &dir.path("local.raw")));
    // Not persistent: the one client left, so the server ends by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server outlived its last client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!socket.exists(), "the socket file was left behind");
}

#[test]
fn connect_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["nbd", "-c", "/dev/nbd0", "x.qcow2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connect"));
}

// ---- hostile peers, by hand ------------------------------------------------------------

/// A connection past the greeting, with the client flags sent.
fn greeted(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// The next option reply: (option, type, payload).
fn option_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).unwrap();
    assert_eq!(
        u64::from_be_bytes(head[..8].try_into().unwrap()),
        0x3e889045565a9
    );
    let len = u32::from_be_bytes(head[16..].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).unwrap();
    (
        u32::from_be_bytes(head[8..12].try_into().unwrap()),
        u32::from_be_bytes(head[12..16].try_into().unwrap()),
        data,
    )
}

fn go(s: &mut TcpStream, name: &str) {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    send_option(s, 7, &data);
    loop {
        let (_, kind, _) = option_reply(s);
        if kind == 1 {
            return;
        }
        assert_eq!(kind, 3, "GO failed");
    }
}

fn request(s: &mut TcpStream, kind: u16, offset: u64, length: u32) -> u32 {
    let mut m = 0x25609513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&7u64.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&length.to_be_bytes());
    s.write_all(&m).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &0x67446698u32.to_be_bytes());
    u32::from_be_bytes(reply[4..8].try_into().unwrap())
}

#[test]
fn hostile_clients_get_errors_or_a_closed_connection_and_others_go_on() {
    let dir = Scratch::new("nbd-hostile");
    let image = sample(&dir);
    let server = Server::cowimg(&["-r", "-t", "-e", "8", "-f", "qcow2", &image]);
    let port = server.port;

    // A bad option magic: the connection is closed.
    let mut s = greeted(port);
    s.write_all(b"IHAVEOPS\0\0\0\x07\0\0\0\0").unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));

    // An option longer than the server holds: skipped, refused as too big, and the
    // same connection goes on to work.
    let mut s = greeted(port);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(1u32 << 20).to_be_bytes());
    s.write_all(&m).unwrap();
    s.write_all(&vec![0u8; 1 << 20]).unwrap();
    let (_, kind, _) = option_reply(&mut s);
    assert_eq!(kind, (1 << 31) + 9);
    // An unknown option, and an INFO whose name length overflows its payload.
    send_option(&mut s, 99, b"");
    assert_eq!(option_reply(&mut s).1, (1 << 31) + 1);
    send_option(&mut s, 6, &[0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert_eq!(option_reply(&mut s).1, (1 << 31) + 3);
    go(&mut s, "");
    // Past the end, an unknown command, a write to a read-only export: errors, and the
    // connection still answers.
    assert_eq!(request(&mut s, 0, 64 << 20, 512), 22);
    assert_eq!(request(&mut s, 0, u64::MAX - 100, 512), 22);
    assert_eq!(request(&mut s, 42, 0, 0), 22);
    assert_eq!(request(&mut s, 4, 0, 4096), 1);
    assert_eq!(request(&mut s, 3, 0, 0), 0);

    // A client that vanishes in the middle of a request.
    let mut s = greeted(port);
    go(&mut s, "");
    s.write_all(&0x25609513u32.to_be_bytes()).unwrap();
    drop(s);

    // A client that announces a huge write: cut off, not buffered.
    let mut s = greeted(port);
    go(&mut s, "");
    let mut m = 0x25609513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 0, 0, 1]);
    m.extend_from_slice(&[0; 16]);
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));

    // Through all of that, a real client still reads the disk.
    let got = raw_of(&["-f", "raw", &server.uri("")], &dir.path("after.raw"));
    assert!(got == raw_of(&["-f", "qcow2", &image], &dir.path("local.raw")));
}

#[test]
fn allocation_depth_through_a_chain_matches_qemu_nbd() {
    let dir = Scratch::new("nbd-depth");
    let base = dir.str("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "16M"]);
    qemu_io(&["-c", "write -P 1 0 4M", "-c", "write -z 8M 1M", &base]);
    let top = dir.str("top.qcow2");
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &top,
    ]);
    qemu_io(&["-c", "write -P 2 2M 4M", &top]);
    let ours = Server::cowimg(&["-r", "-t", "-A", "-f", "qcow2", &top]);
    let theirs = Server::start("qemu-nbd", &[], &["-r", "-t", "-A", "-f", "qcow2", &top]);
    let map = |uri: &str| qemu_img(&["map", "--output=json", "-f", "raw", uri]);
    assert_eq!(map(&ours.uri("")), map(&theirs.uri("")));
    if have("nbdinfo") {
        let depth =
            |uri: &str| common::run_ok(None, "nbdinfo", &["--map=qemu:allocation-depth", uri]);
        let ours_map = depth(&ours.uri(""));
        assert!(
            ours_map.contains("local") || ours_map.contains("backing"),
            "{ours_map}"
        );
        assert_eq!(ours_map, depth(&theirs.uri("")));
    }
}

#[test]
fn several_clients_at_once_and_a_forked_server_with_a_pid_file() {
    let dir = Scratch::new("nbd-many");
    let image = sample(&dir);
    let port = free_port().to_string();
    let pid_file = dir.path("nbd.pid");
    let status = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["nbd", "--fork", "--pid-file", pid_file.to_str().unwrap()])
        .args([
            "-r",
            "-t",
            "-e",
            "3",
            "-f",
            "qcow2",
            "-b",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args(["-D", "the sample disk", &image])
        .status()
        .unwrap();
    assert!(status.success(), "the parent of --fork failed");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let uri = format!("nbd://127.0.0.1:{port}/");
    let clients: Vec<_> = (0..3)
        .map(|_| {
            Command::new("qemu-img")
                .args(["compare", "-f", "qcow2", "-F", "raw", &image, &uri])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(
            c.wait().unwrap().success(),
            "a concurrent client saw other bytes"
        );
    }
    if have("nbdinfo") {
        let list = common::run_ok(None, "nbdinfo", &["--list", "--json", &uri]);
        assert!(list.contains("the sample disk"), "{list}");
    }
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the forked server did not end on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
