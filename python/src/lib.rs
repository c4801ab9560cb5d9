//! The native half of the `cowimg` Python package: images opened through the library's
//! public API, shared across Python threads, with the GIL released while cowimg works.
//! The Python half (`cowimg/__init__.py`) wraps `NativeDisk` in an `io.RawIOBase`.

use cowimg::convert::{convert, ConvertOptions};
use cowimg::storage::Storage;
use cowimg::{
    Backing, CreateOptions, ErrorKind, Format, Image, OpenOptions, Preallocation, SharedImage,
    SnapshotRef,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

create_exception!(_cowimg, Error, PyException, "Any failure cowimg reports.");
create_exception!(
    _cowimg,
    InvalidFormat,
    Error,
    "The bytes are not an image of the format asked for."
);
create_exception!(
    _cowimg,
    Unsupported,
    Error,
    "A valid image uses something cowimg refuses, named in the message."
);
create_exception!(
    _cowimg,
    Corrupt,
    Error,
    "The image's metadata contradicts itself."
);
create_exception!(
    _cowimg,
    BadArgument,
    Error,
    "The caller asked for something impossible."
);
create_exception!(
    _cowimg,
    InUse,
    Error,
    "Another process holds the image in a conflicting way."
);

/// cowimg's error as the Python exception of its kind; I/O failures are `OSError` with
/// their errno where there is one.
fn py_err(e: cowimg::Error) -> PyErr {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::Io => {
            let errno = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .and_then(io::Error::raw_os_error);
            match errno {
                Some(n) => PyOSError::new_err((n, message)),
                None => PyOSError::new_err(message),
            }
        }
        ErrorKind::InvalidFormat => InvalidFormat::new_err(message),
        ErrorKind::Unsupported => Unsupported::new_err(message),
        ErrorKind::Corrupt => Corrupt::new_err(message),
        ErrorKind::BadArgument => BadArgument::new_err(message),
        ErrorKind::InUse => InUse::new_err(message),
        _ => Error::new_err(message),
    }
}

fn bad(message: impl Into<String>) -> PyErr {
    BadArgument::new_err(message.into())
}

fn format_named(name: Option<&str>) -> PyResult<Option<Format>> {
    name.map(|n| Format::from_name(n).ok_or_else(|| bad(format!("Unknown format '{n}'"))))
        .transpose()
}

/// A Python object with `read`, `seek` (and, for writing, `write`, `flush`) as storage.
/// Every call takes the GIL; one lock keeps a seek and its read together.
#[derive(Debug)]
struct PyFileStorage {
    file: Py<PyAny>,
    lock: Mutex<()>,
}

fn to_io(e: PyErr) -> io::Error {
    io::Error::other(e.to_string())
}

impl PyFileStorage {
    fn call<R>(
        &self,
        f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<R>,
    ) -> io::Result<R> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Python::with_gil(|py| f(py, self.file.bind(py))).map_err(to_io)
    }
}

impl Storage for PyFileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.call(|_, file| {
            file.call_method1("seek", (offset, 0))?;
            let data = file.call_method1("read", (buf.len(),))?;
            let bytes: &[u8] = data.extract()?;
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok(n)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.call(|py, file| {
            file.call_method1("seek", (offset, 0))?;
            file.call_method1("write", (PyBytes::new(py, buf),))?;
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.call(|_, file| file.call_method1("seek", (0, 2))?.extract())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.call(|_, file| file.call_method1("truncate", (len,)).map(drop))
    }

    fn flush(&self) -> io::Result<()> {
        self.call(|_, file| {
            if file.hasattr("flush")? {
                file.call_method0("flush")?;
            }
            Ok(())
        })
    }
}

/// One open image: the chain read as one disk, safe to use from several threads.
#[pyclass(frozen, module = "cowimg._cowimg")]
struct NativeDisk {
    image: Mutex<Option<Arc<SharedImage>>>,
    writable: bool,
}

impl NativeDisk {
    fn shared(&self) -> PyResult<Arc<SharedImage>> {
        self.image
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| bad("I/O operation on closed disk"))
    }
}

#[pymethods]
impl NativeDisk {
    /// Virtual size in bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.shared()?.size())
    }

    #[getter]
    fn writable(&self) -> bool {
        self.writable
    }

    /// Up to `length` guest bytes at `offset` (fewer at the end of the disk).
    fn read_at(&self, py: Python<'_>, offset: u64, length: usize) -> PyResult<Py<PyBytes>> {
        let shared = self.shared()?;
        let end = shared.size().min(offset.saturating_add(length as u64));
        let n = end.saturating_sub(offset) as usize;
        let mut buf = vec![0u8; n];
        if n > 0 {
            py.allow_threads(|| shared.read_at(&mut buf, offset))
                .map_err(py_err)?;
        }
        Ok(PyBytes::new(py, &buf).unbind())
    }

    /// Writes `data` at guest `offset` (inside the disk).
    fn write_at(&self, py: Python<'_>, data: Vec<u8>, offset: u64) -> PyResult<usize> {
        let shared = self.shared()?;
        py.allow_threads(|| shared.write_at(&data, offset))
            .map_err(py_err)?;
        Ok(data.len())
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let shared = self.shared()?;
        py.allow_threads(|| shared.flush()).map_err(py_err)
    }

    /// Flushes what was written and lets the files go.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.image.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(shared) = taken {
            if self.writable {
                py.allow_threads(|| shared.flush()).map_err(py_err)?;
            }
        }
        Ok(())
    }

    /// `qemu-img info --output=json --backing-chain` for every file of the chain.
    fn info_json(&self, py: Python<'_>) -> PyResult<String> {
        let shared = self.shared()?;
        let infos = py
            .allow_threads(|| shared.with(|i| i.info()))
            .map_err(py_err)?;
        let list = infos.iter().map(cowimg::report::info).collect();
        Ok(cowimg::report::Json::Array(list).pretty())
    }

    /// `qemu-img map --output=json`.
    fn map_json(&self, py: Python<'_>) -> PyResult<String> {
        let shared = self.shared()?;
        let ranges = py
            .allow_threads(|| shared.with(|i| i.map()))
            .map_err(py_err)?;
        Ok(cowimg::report::map(&ranges))
    }

    /// `qemu-img check --output=json` of the image's own file (repairing nothing).
    fn check_json(&self, py: Python<'_>, filename: String) -> PyResult<String> {
        let shared = self.shared()?;
        let result = py
            .allow_threads(|| shared.with(|i| i.check()))
            .map_err(py_err)?;
        Ok(cowimg::report::check(&result, &filename).pretty())
    }

    /// Digests of the guest disk, (algorithm, lower-case hex) for each name asked: what
    /// `cowimg hash` computes, decompressing on every core.
    fn hash(&self, py: Python<'_>, algorithms: Vec<String>) -> PyResult<Vec<(String, String)>> {
        let algorithms = algorithms
            .iter()
            .map(|n| {
                cowimg::hash::Algorithm::from_name(n).ok_or_else(|| {
                    bad(format!(
                        "unknown digest algorithm '{n}' (sha256, sha1, md5)"
                    ))
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let shared = self.shared()?;
        let found = py
            .allow_threads(|| {
                shared.with(|i| cowimg::hash::hash(i, &algorithms, None, None, &|_| {}))
            })
            .map_err(py_err)?;
        Ok(found
            .whole
            .digests
            .into_iter()
            .map(|(a, hex)| (a.name().to_string(), hex))
            .collect())
    }

    /// (path, format) of every file of the chain, the image first.
    /// Names as text, not paths: a URL's `//` must survive, and its credentials not.
    fn chain(&self) -> PyResult<Vec<(String, String)>> {
        let shared = self.shared()?;
        Ok(shared.with(|i| {
            i.chain()
                .iter()
                .map(|e| {
                    let name = cowimg::storage::display_url(&e.path.to_string_lossy());
                    (name, e.format().name().to_string())
                })
                .collect()
        }))
    }

    /// The internal snapshots: (id, name, date_sec, date_nsec, vm_clock_nsec,
    /// vm_state_size, disk_size, icount).
    #[allow(clippy::type_complexity)]
    fn snapshots(&self) -> PyResult<Vec<(String, String, u32, u32, u64, u64, u64, Option<u64>)>> {
        let shared = self.shared()?;
        Ok(shared.with(|i| {
            i.snapshots()
                .iter()
                .map(|s| {
                    let when = (s.date_sec(), s.date_nsec(), s.vm_clock_nsec());
                    let sizes = (s.vm_state_size, s.disk_size, s.icount);
                    (
                        s.id.clone(),
                        s.name.clone(),
                        when.0,
                        when.1,
                        when.2,
                        sizes.0,
                        sizes.1,
                        sizes.2,
                    )
                })
                .collect()
        }))
    }
}

/// How `open` reaches the image's backing files.
fn backing_from(backing: &Bound<'_, PyAny>) -> PyResult<Backing> {
    if let Ok(word) = backing.extract::<String>() {
        return match word.as_str() {
            "follow" => Ok(Backing::Follow),
            "ignore" => Ok(Backing::Ignore),
            path => Ok(Backing::Override {
                path: PathBuf::from(path),
                format: None,
            }),
        };
    }
    let path: PathBuf = backing.extract()?;
    Ok(Backing::Override { path, format: None })
}

/// Opens an image from a path or from a Python file object (`read`/`seek`).
#[pyfunction]
#[pyo3(signature = (source, format=None, passphrase=None, snapshot=None, backing=None, writable=false, data_file=None))]
#[allow(clippy::too_many_arguments)]
fn open(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    format: Option<&str>,
    passphrase: Option<Vec<u8>>,
    snapshot: Option<&str>,
    backing: Option<&Bound<'_, PyAny>>,
    writable: bool,
    data_file: Option<PathBuf>,
) -> PyResult<NativeDisk> {
    let from_path: Option<PathBuf> = source.extract().ok();
    let mut options = OpenOptions::new()
        .format(format_named(format)?)
        .writable(writable)
        .passphrase(passphrase.map(cowimg::Secret::from));
    if let Some(path) = data_file {
        options = options.data_file(path);
    }
    let backing = match backing {
        Some(b) => backing_from(b)?,
        // A file object has no folder to find relative backing names in.
        None if from_path.is_none() => Backing::Ignore,
        None => Backing::Follow,
    };
    options = options.backing(backing);
    let image = match from_path {
        Some(path) => py.allow_threads(|| {
            with_snapshot(&options, snapshot, |options| Image::open(&path, options))
        }),
        None => {
            let storage: Arc<dyn Storage> = Arc::new(PyFileStorage {
                file: source.clone().unbind(),
                lock: Mutex::new(()),
            });
            let format = match options.format {
                Some(f) => f,
                None => cowimg::probe(storage.as_ref())
                    .map_err(|e| cowimg::Error::io("probing the image format", e))
                    .map_err(py_err)?,
            };
            with_snapshot(&options, snapshot, |options| {
                Image::open_storage(storage.clone(), format, options)
            })
        }
    }
    .map_err(py_err)?;
    Ok(NativeDisk {
        image: Mutex::new(Some(Arc::new(SharedImage::new(image)))),
        writable,
    })
}

/// Opens with `open`, at the snapshot `snapshot` names: its ID when one matches, else
/// its name (as qemu-img's `-l` takes either).
fn with_snapshot(
    options: &OpenOptions,
    snapshot: Option<&str>,
    open: impl Fn(&OpenOptions) -> cowimg::Result<Image>,
) -> cowimg::Result<Image> {
    let Some(wanted) = snapshot else {
        return open(options);
    };
    open(
        &options
            .clone()
            .snapshot(SnapshotRef::IdOrName(wanted.into())),
    )
}

/// Creates an empty image file.
#[pyfunction]
#[pyo3(signature = (path, size, format="qcow2", cluster_size=None, backing_file=None, backing_format=None, compat=None, preallocation=None, lazy_refcounts=false, extended_l2=false, compression=None, encryption=None, passphrase=None, iter_time=None))]
#[allow(clippy::too_many_arguments)]
fn create(
    py: Python<'_>,
    path: PathBuf,
    size: u64,
    format: &str,
    cluster_size: Option<u64>,
    backing_file: Option<String>,
    backing_format: Option<String>,
    compat: Option<&str>,
    preallocation: Option<&str>,
    lazy_refcounts: bool,
    extended_l2: bool,
    compression: Option<&str>,
    encryption: Option<&str>,
    passphrase: Option<Vec<u8>>,
    iter_time: Option<u64>,
) -> PyResult<()> {
    let format = format_named(Some(format))?.unwrap_or(Format::Qcow2);
    // "luks" (qcow2's encrypt.format=luks, or the whole of a luks image) or "aes"
    // (legacy); LUKS puts the passphrase in its first key slot.
    let encryption = match (encryption, format) {
        (None, Format::Luks) | (Some("luks"), _) => {
            let secret = passphrase
                .map(cowimg::Secret::new)
                .ok_or_else(|| bad("LUKS encryption needs a passphrase"))?;
            let mut luks = cowimg::create::LuksOptions::new(secret);
            if let Some(ms) = iter_time {
                luks = luks.iter_time_ms(ms);
            }
            cowimg::create::Encryption::Luks(luks)
        }
        (Some("aes"), _) => cowimg::create::Encryption::Aes,
        (None, _) => cowimg::create::Encryption::None,
        (Some(other), _) => return Err(bad(format!("Invalid encryption format: '{other}'"))),
    };
    let options = create_options(
        size,
        cluster_size,
        backing_file,
        backing_format,
        compat,
        preallocation,
        compression,
    )?
    .lazy_refcounts(lazy_refcounts)
    .extended_l2(extended_l2)
    .encryption(encryption);
    py.allow_threads(|| cowimg::create::create_file(format, &path, &options, 3))
        .map_err(py_err)
}

fn create_options(
    size: u64,
    cluster_size: Option<u64>,
    backing_file: Option<String>,
    backing_format: Option<String>,
    compat: Option<&str>,
    preallocation: Option<&str>,
    compression: Option<&str>,
) -> PyResult<CreateOptions> {
    let mut options = CreateOptions::new(size)
        .backing_file(backing_file)
        .backing_format(backing_format);
    if let Some(cs) = cluster_size {
        options = options.cluster_size(cs);
    }
    if let Some(name) = compat {
        let compat = cowimg::Compat::from_name(name)
            .ok_or_else(|| bad(format!("Invalid compatibility level: '{name}'")))?;
        options = options.compat(compat);
    }
    if let Some(name) = preallocation {
        let mode = Preallocation::from_name(name)
            .ok_or_else(|| bad(format!("Invalid preallocation mode: '{name}'")))?;
        options = options.preallocation(mode);
    }
    if let Some(name) = compression {
        let c = cowimg::Compression::from_name(name)
            .ok_or_else(|| bad(format!("Invalid compression type: '{name}'")))?;
        options = options.compression(c);
    }
    Ok(options)
}

/// Copies `source` (a path) into a new image file at `destination`.
#[pyfunction]
#[pyo3(signature = (source, destination, format="qcow2", compress=false, cluster_size=None, progress=None, source_format=None))]
#[allow(clippy::too_many_arguments)]
fn convert_file(
    py: Python<'_>,
    source: PathBuf,
    destination: PathBuf,
    format: &str,
    compress: bool,
    cluster_size: Option<u64>,
    progress: Option<Py<PyAny>>,
    source_format: Option<&str>,
) -> PyResult<()> {
    let format = format_named(Some(format))?.unwrap_or(Format::Qcow2);
    let open = OpenOptions::new().format(format_named(source_format)?);
    let create = create_options(0, cluster_size, None, None, None, None, None)?;
    let options = ConvertOptions::new(format)
        .compress(compress)
        .create(create);
    // Workers report from several threads: one lock keeps the calls in order, so the
    // callback sees `done` only grow.
    let done = Mutex::new(0u64);
    py.allow_threads(|| {
        let image = Image::open(&source, &open)?;
        let total = image.size();
        convert(&image, &destination, &options, &|n| {
            let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
            *done += n;
            let now = *done;
            if let Some(callback) = &progress {
                // A callback that fails is the caller's to see in its own output.
                Python::with_gil(|py| {
                    if let Err(e) = callback.call1(py, (now, total)) {
                        e.print(py);
                    }
                });
            }
        })
        .map(drop)
    })
    .map_err(py_err)
}

#[pymodule]
fn _cowimg(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<NativeDisk>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(create, m)?)?;
    m.add_function(wrap_pyfunction!(convert_file, m)?)?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("InvalidFormat", py.get_type::<InvalidFormat>())?;
    m.add("Unsupported", py.get_type::<Unsupported>())?;
    m.add("Corrupt", py.get_type::<Corrupt>())?;
    m.add("BadArgument", py.get_type::<BadArgument>())?;
    m.add("InUse", py.get_type::<InUse>())?;
    Ok(())
}
