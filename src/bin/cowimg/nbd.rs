//! `cowimg nbd`: qemu-nbd's drop-in. Serves an image (and, read-only, each of its
//! internal snapshots) over TCP or a Unix socket, one thread per client, until the last
//! client leaves (or, with `-t`, until SIGINT/SIGTERM), then flushes and exits.

use crate::flags::PartitionArgs;
use crate::source::SnapshotSourceArgs;
use cowimg::nbd::{serve, Export};
use cowimg::{Error, ErrorKind, Image, SharedImage};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SnapshotSourceArgs,
    #[command(flatten)]
    partition: PartitionArgs,
    /// Export read-only.
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// The export's name (default: the empty name).
    #[arg(short = 'x', long = "export-name", default_value = "")]
    export_name: String,
    /// The export's description.
    #[arg(short = 'D', long = "description", default_value = "")]
    description: String,
    /// TCP port.
    #[arg(short = 'p', long = "port", default_value_t = 10809)]
    port: u16,
    /// Address to listen on.
    #[arg(short = 'b', long = "bind", default_value = "0.0.0.0")]
    bind: String,
    /// Listen on this Unix socket instead of TCP.
    #[arg(short = 'k', long = "socket")]
    socket: Option<PathBuf>,
    /// Keep serving after the last client leaves.
    #[arg(short = 't', long = "persistent")]
    persistent: bool,
    /// Clients served at once.
    #[arg(short = 'e', long = "shared", default_value_t = 1)]
    shared: usize,
    /// Offer the qemu:allocation-depth metadata context.
    #[arg(short = 'A', long = "allocation-depth")]
    allocation_depth: bool,
    /// Connect a kernel NBD device (refused: cowimg has no kernel client).
    #[arg(short = 'c', long = "connect")]
    connect: Option<String>,
    /// Go to the background once listening.
    #[arg(long = "fork")]
    fork: bool,
    /// Write the server's process id to this file.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// The image file.
    filename: String,
}

/// Set by SIGINT and SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

/// A listening socket of either kind.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A connected client of either kind, and a handle to shut it down from outside.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn halves(&self) -> std::io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok(match self {
            Stream::Tcp(s) => {
                s.set_nodelay(true)?;
                (Box::new(s.try_clone()?), Box::new(s.try_clone()?))
            }
            Stream::Unix(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Listener {
    fn bind(args: &Args) -> Result<Listener, Error> {
        let listener = match &args.socket {
            Some(path) => {
                let l = UnixListener::bind(path).map_err(|e| {
                    Error::io(format!("Failed to bind socket to {}", path.display()), e)
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| Error::io("setting up the socket", e))?;
                Listener::Unix(l, path.clone())
            }
            None => {
                let addr = format!("{}:{}", args.bind, args.port);
                let l = TcpListener::bind(&addr)
                    .map_err(|e| Error::io(format!("Failed to bind socket to {addr}"), e))?;
                l.set_nonblocking(true)
                    .map_err(|e| Error::io("setting up the socket", e))?;
                Listener::Tcp(l)
            }
        };
        Ok(listener)
    }

    /// A client, if one is waiting.
    fn accept(&self) -> std::io::Result<Option<Stream>> {
        let result = match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nonblocking(false);
                Stream::Tcp(s)
            }),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| {
                let _ = s.set_nonblocking(false);
                Stream::Unix(s)
            }),
        };
        match result {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The exports: the image (writable unless `-r` or a snapshot was asked for) and, when
/// it is served read-only, each of its internal snapshots as `snapshot:NAME`.
fn exports(args: &Args) -> Result<Vec<Export>, Error> {
    let (path, mut options) = args.input.source.resolve(&args.filename)?;
    let read_only = args.read_only || args.input.snapshot.is_some();
    if args.input.snapshot.is_some() {
        let mut image = args.input.open(&args.filename)?;
        args.partition.apply(&mut image)?;
        let export = Export::new(args.export_name.clone(), Arc::new(SharedImage::new(image)));
        return Ok(vec![export
            .description(args.description.clone())
            .allocation_depth(args.allocation_depth)]);
    }
    options.writable = !read_only;
    if !read_only && options.format.is_none() {
        let probed = crate::source::probed_self_describing(&path)?;
        options.format = Some(probed.ok_or_else(|| {
            bad("the image probed as raw: state its format with -f to serve it writable")
        })?);
    }
    let mut image = Image::open(&path, &options)?;
    crate::print_warnings(&image);
    args.partition.apply(&mut image)?;
    let snapshots: Vec<(String, String)> = image.snapshot_names();
    let main = Export::new(args.export_name.clone(), Arc::new(SharedImage::new(image)))
        .read_only(read_only)
        .description(args.description.clone())
        .allocation_depth(args.allocation_depth)
        .multi_conn(args.shared > 1);
    let mut out = vec![main];
    if read_only {
        for (id, name) in snapshots {
            let image = args.partition.open_snapshot(&path, &options, &id)?;
            let export = Export::new(
                format!("snapshot:{name}"),
                Arc::new(SharedImage::new(image)),
            )
            .description(format!("internal snapshot {id} ({name})"))
            .allocation_depth(args.allocation_depth);
            out.push(export);
        }
    }
    Ok(out)
}

/// Detaches into the background. The parent waits for the child's word through a pipe
/// and exits with success once the server is ready (exports open, pid file written),
/// with failure if the child gives up first. Returns the pipe's writing end.
fn daemonize() -> Result<libc::c_int, Error> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) fills the two descriptors of `fds`.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: fork in a process that has started no threads yet; the child goes on
    // alone and the parent only waits and exits.
    match unsafe { libc::fork() } {
        -1 => Err(Error::io("fork", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: closing our copy of the reading end; setsid has no preconditions.
            unsafe {
                libc::close(fds[0]);
                libc::setsid();
            }
            Ok(fds[1])
        }
        _ => {
            let mut byte = 0u8;
            // SAFETY: closing our copy of the writing end, then one read into `byte`.
            let n = unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], (&mut byte as *mut u8).cast(), 1)
            };
            std::process::exit(if n == 1 { 0 } else { 1 })
        }
    }
}

/// Tells the waiting parent the server is ready, and lets go of the terminal.
fn ready(pipe: libc::c_int) {
    // SAFETY: writing one byte to, then closing, the pipe daemonize made; /dev/null is
    // opened and put in place of stdin, stdout and stderr.
    unsafe {
        libc::write(pipe, b"1".as_ptr().cast(), 1);
        libc::close(pipe);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    if args.connect.is_some() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "-c/--connect needs the kernel's NBD client, which cowimg does not drive: \
             serve with cowimg nbd and connect with nbd-client",
        ));
    }
    if args.shared == 0 {
        return Err(bad("-e/--shared must be at least 1"));
    }
    let listener = Listener::bind(args)?;
    let pipe = if args.fork { Some(daemonize()?) } else { None };
    let exports = Arc::new(exports(args)?);
    if let Some(path) = &args.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| Error::io(format!("writing '{}'", path.display()), e))?;
    }
    if let Some(pipe) = pipe {
        ready(pipe);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let active = Arc::new(AtomicUsize::new(0));
    let clients: Arc<Mutex<Vec<(usize, Stream)>>> = Arc::default();
    let mut served_any = false;
    let mut next_id = 0;
    let mut threads = Vec::new();
    while !STOP.load(Ordering::SeqCst) {
        if !args.persistent && served_any && active.load(Ordering::SeqCst) == 0 {
            break;
        }
        if active.load(Ordering::SeqCst) >= args.shared {
            // At the limit: new clients wait in the listen queue, as qemu-nbd's do,
            // until one of these leaves.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(Error::io("accepting a connection", e)),
        };
        served_any = true;
        active.fetch_add(1, Ordering::SeqCst);
        let (reader, writer) = stream
            .halves()
            .map_err(|e| Error::io("setting up a connection", e))?;
        let id = next_id;
        next_id += 1;
        clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, stream));
        let (exports, active, clients) = (exports.clone(), active.clone(), clients.clone());
        threads.push(std::thread::spawn(move || {
            if let Err(e) = serve(reader, writer, &exports, &STOP) {
                complain!("a client's connection ended: {e}");
            }
            clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(n, _)| *n != id);
            active.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    // Drain: clients still connected stop being read (a request being answered is
    // answered whole), then every image is flushed.
    for (_, stream) in clients.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        stream.shutdown(Shutdown::Read);
    }
    for t in threads {
        let _ = t.join();
    }
    drop(listener);
    for export in exports.iter() {
        if !export.read_only {
            export.image.flush()?;
        }
    }
    if let Some(path) = &args.pid_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(ExitCode::SUCCESS)
}
