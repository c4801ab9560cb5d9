//! An object in a bucket or on a web server, read where it lies: `s3://`, `gs://`,
//! `az://` and `http(s)://` URLs through the object_store crate. Read-only: remote
//! images are examined and converted from, never changed.
//!
//! Every read goes through a block cache. Reads that carry on where the last fetch
//! ended double the next fetch (up to [`MAX_FETCH`]), so a sequential read of a whole
//! image issues few, large range requests while the scattered reads of `info` fetch
//! one small block each. Requests are retried; what still fails is an I/O error naming
//! the URL (without credentials).

use super::{display_url, is_remote, scrub_urls, Run, Storage};
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;
use url::Url;

/// The smallest fetch, and the alignment of every fetch's start: a header, a table
/// and the clusters around them in one request.
pub const MIN_FETCH: u64 = 256 << 10;
/// The largest fetch a sequential read grows to.
pub const MAX_FETCH: u64 = 16 << 20;
/// Bytes of fetched blocks kept; the least recently used are dropped past it.
pub const CACHE_BYTES: usize = 64 << 20;

/// Where a file named `name` by the remote image at `image` is: a URL stays a URL, a
/// relative name is taken relative to the image's URL (`../base.qcow2` included). An
/// absolute path stays a local path, as QEMU combines names.
pub fn resolve_relative(image: &str, name: &str) -> Option<String> {
    if is_remote(name) {
        return Some(name.to_string());
    }
    if name.starts_with('/') {
        return None;
    }
    let base = Url::parse(image).ok()?;
    Some(base.join(name).ok()?.to_string())
}

/// Requests and bytes fetched by every remote storage of this process, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transfer {
    /// Range (GET) and size (HEAD) requests sent, retries included.
    pub requests: u64,
    /// Bytes of object data received.
    pub bytes: u64,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// What every remote storage of this process has transferred so far.
pub fn transfer() -> Transfer {
    Transfer {
        requests: REQUESTS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// The runtime the object store's requests run on: two worker threads serve every
/// remote storage; callers wait on it from their own threads.
fn runtime() -> io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cowimg-remote")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// How long a request may take, and how often a failed one is sent again: from
/// `COWIMG_REMOTE_TIMEOUT` (seconds, default 30) and `COWIMG_REMOTE_RETRIES` (default 3).
#[derive(Clone, Copy, Debug)]
struct Patience {
    timeout: Duration,
    retries: u32,
}

impl Patience {
    fn from_env() -> Patience {
        let number = |name: &str| std::env::var(name).ok()?.trim().parse::<f64>().ok();
        let timeout = number("COWIMG_REMOTE_TIMEOUT")
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(30.0);
        let retries = number("COWIMG_REMOTE_RETRIES")
            .filter(|r| r.is_finite() && *r >= 0.0)
            .map_or(3, |r| r.min(20.0) as u32);
        Patience {
            timeout: Duration::from_secs_f64(timeout.min(3600.0)),
            retries,
        }
    }
}

/// An object read through [`object_store`], with a block cache.
pub struct RemoteStorage {
    /// The URL as messages show it.
    shown: String,
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    patience: Patience,
    cache: Mutex<BlockCache>,
    /// Signalled whenever a fetch ends, for the readers waiting on it.
    arrived: Condvar,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("url", &self.shown)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RemoteStorage {
    /// Opens the object at `url`, asking its size. Credentials come from the usual
    /// environment variables of each service (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open(url: &str) -> io::Result<RemoteStorage> {
        let shown = display_url(url);
        let fail = |what: String| io::Error::new(io::ErrorKind::InvalidInput, scrub_urls(&what));
        let parsed = Url::parse(url).map_err(|e| fail(format!("invalid URL '{shown}': {e}")))?;
        let (scheme, path) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| fail(format!("unsupported URL '{shown}': {e}")))?;
        let patience = Patience::from_env();
        // Set key by key: a whole `ClientOptions` would drop what the environment set
        // (AWS_ALLOW_HTTP, proxies).
        use object_store::ClientConfigKey as Key;
        let timeouts = [
            (Key::Timeout, patience.timeout),
            (
                Key::ConnectTimeout,
                patience.timeout.min(Duration::from_secs(10)),
            ),
        ]
        .map(|(key, d)| (key, format!("{}ms", d.as_millis().max(1))));
        // Our own loop retries whole reads (a body cut short included): none below it.
        let retry = object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        };
        macro_rules! build {
            ($builder:expr, $key:path) => {{
                let mut builder = $builder.with_url(url).with_retry(retry);
                for (key, value) in &timeouts {
                    builder = builder.with_config($key(*key), value);
                }
                builder.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }};
        }
        let built = match scheme {
            ObjectStoreScheme::AmazonS3 => build!(
                object_store::aws::AmazonS3Builder::from_env(),
                object_store::aws::AmazonS3ConfigKey::Client
            ),
            ObjectStoreScheme::GoogleCloudStorage => build!(
                object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                object_store::gcp::GoogleConfigKey::Client
            ),
            ObjectStoreScheme::MicrosoftAzure => build!(
                object_store::azure::MicrosoftAzureBuilder::from_env(),
                object_store::azure::AzureConfigKey::Client
            ),
            ObjectStoreScheme::Http => {
                let mut builder = object_store::http::HttpBuilder::new()
                    .with_url(&parsed[..url::Position::BeforePath])
                    .with_retry(retry)
                    .with_config(Key::AllowHttp, "true");
                for (key, value) in &timeouts {
                    builder = builder.with_config(*key, value);
                }
                builder.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            other => {
                return Err(fail(format!(
                    "unsupported URL '{shown}': {other:?} is not read remotely"
                )))
            }
        };
        let store = built.map_err(|e| fail(format!("cannot read '{shown}': {e}")))?;
        let mut storage = RemoteStorage {
            shown,
            store,
            path,
            size: 0,
            patience,
            cache: Mutex::new(BlockCache::default()),
            arrived: Condvar::new(),
        };
        let store = Arc::clone(&storage.store);
        let path = storage.path.clone();
        let meta = storage.retrying("asking the size of", move || {
            let (store, path) = (Arc::clone(&store), path.clone());
            async move { store.head(&path).await }
        })?;
        storage.size = meta.size;
        Ok(storage)
    }

    /// The URL as messages show it (no credentials).
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Runs `request` until it succeeds, a missing object or a refusal says retrying
    /// is futile, or the retries run out; counts every attempt.
    fn retrying<T, F, Fut>(&self, what: &str, request: F) -> io::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let rt = runtime()?;
        let mut attempt = 0;
        loop {
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            let error = match rt.block_on(request()) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let final_kind = match &error {
                object_store::Error::NotFound { .. } => Some(io::ErrorKind::NotFound),
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => {
                    Some(io::ErrorKind::PermissionDenied)
                }
                object_store::Error::NotSupported { .. } => Some(io::ErrorKind::Unsupported),
                _ if attempt >= self.patience.retries => Some(io::ErrorKind::Other),
                _ => None,
            };
            if let Some(kind) = final_kind {
                let tries = match attempt {
                    0 => String::new(),
                    n => format!(" (after {} attempts)", n + 1),
                };
                let error = scrub_urls(&error.to_string());
                return Err(io::Error::new(
                    kind,
                    format!("{what} '{}'{tries}: {error}", self.shown),
                ));
            }
            std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
            attempt += 1;
        }
    }

    /// Fetches `[start, end)` (within the object).
    fn fetch(&self, start: u64, end: u64) -> io::Result<bytes::Bytes> {
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let what = format!("reading {} bytes at offset {start} of", end - start);
        let data = self.retrying(&what, move || {
            let (store, path) = (Arc::clone(&store), path.clone());
            async move { store.get_range(&path, start..end).await }
        })?;
        BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        if data.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{what} '{}': the server sent {} bytes",
                    self.shown,
                    data.len()
                ),
            ));
        }
        Ok(data)
    }
}

/// Fetched blocks by their start, each with when it was last used, and the fetches
/// under way (other readers of their range wait for them instead of fetching again).
#[derive(Default)]
struct BlockCache {
    blocks: BTreeMap<u64, (bytes::Bytes, u64)>,
    bytes: usize,
    clock: u64,
    /// Fetches under way: start → end.
    pending: BTreeMap<u64, u64>,
    /// Recent fetches that failed, with why: a reader that waited for one fails too
    /// rather than trying again itself.
    failed: Vec<(u64, u64, io::ErrorKind, String)>,
    /// Where the last fetch ended, and the size of the next one if a read starts there.
    sequential_end: u64,
    window: u64,
}

impl BlockCache {
    /// Copies what the cache holds at `offset` into `buf`; returns how much.
    fn copy_out(&mut self, buf: &mut [u8], offset: u64) -> usize {
        self.clock += 1;
        let clock = self.clock;
        let Some((&start, (data, used))) = self.blocks.range_mut(..=offset).next_back() else {
            return 0;
        };
        let end = start + data.len() as u64;
        if offset >= end {
            return 0;
        }
        *used = clock;
        let from = (offset - start) as usize;
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        n
    }

    /// The fetch under way that will bring `offset`, if any.
    fn pending_at(&self, offset: u64) -> Option<(u64, u64)> {
        let (&start, &end) = self.pending.range(..=offset).next_back()?;
        (offset < end).then_some((start, end))
    }

    /// The range to fetch for a read of `want` bytes at `offset` that neither the cache
    /// nor a fetch under way holds: aligned, grown while reads are sequential, ending
    /// where the next cached or coming block starts, within `size`.
    fn plan(&mut self, offset: u64, want: u64, size: u64) -> (u64, u64) {
        let mut start = offset - offset % MIN_FETCH;
        if let Some((&s, (data, _))) = self.blocks.range(..=offset).next_back() {
            start = start.max(s + data.len() as u64);
        }
        if let Some((_, &e)) = self.pending.range(..=offset).next_back() {
            start = start.max(e);
        }
        self.window = match start <= self.sequential_end && offset >= self.sequential_end {
            true => (self.window * 2).clamp(MIN_FETCH, MAX_FETCH),
            false => MIN_FETCH,
        };
        let wanted_end = offset
            .saturating_add(want)
            .min(offset.saturating_add(MAX_FETCH));
        let mut end = start.saturating_add(self.window).max(wanted_end);
        end = end.div_ceil(MIN_FETCH).saturating_mul(MIN_FETCH).min(size);
        if let Some((&next, _)) = self.blocks.range(offset + 1..).next() {
            end = end.min(next);
        }
        if let Some((&next, _)) = self.pending.range(offset + 1..).next() {
            end = end.min(next);
        }
        self.sequential_end = end;
        self.pending.insert(start, end);
        (start, end)
    }

    /// Ends the fetch of `[start, end)`: its block cached, or why it failed kept for
    /// those who waited for it.
    fn settle(&mut self, start: u64, end: u64, result: &io::Result<bytes::Bytes>) {
        self.pending.remove(&start);
        match result {
            Ok(data) => self.insert(start, data.clone()),
            Err(e) => {
                if self.failed.len() >= 16 {
                    self.failed.remove(0);
                }
                self.failed.push((start, end, e.kind(), e.to_string()));
            }
        }
    }

    /// Why the fetch of `[start, end)` failed, if it did.
    fn failure(&self, start: u64, end: u64) -> Option<io::Error> {
        self.failed
            .iter()
            .rev()
            .find(|f| f.0 == start && f.1 == end)
            .map(|f| io::Error::new(f.2, f.3.clone()))
    }

    fn insert(&mut self, start: u64, data: bytes::Bytes) {
        self.clock += 1;
        self.bytes += data.len();
        if let Some((old, _)) = self.blocks.insert(start, (data, self.clock)) {
            self.bytes -= old.len();
        }
        while self.bytes > CACHE_BYTES && self.blocks.len() > 1 {
            let oldest = self
                .blocks
                .iter()
                .filter(|(&s, _)| s != start)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&s, _)| s);
            let Some(oldest) = oldest else { break };
            if let Some((data, _)) = self.blocks.remove(&oldest) {
                self.bytes -= data.len();
            }
        }
    }
}

impl Storage for RemoteStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min((self.size - offset).min(usize::MAX as u64) as usize);
        let mut done = 0;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        while done < want {
            let at = offset + done as u64;
            let n = cache.copy_out(&mut buf[done..want], at);
            if n > 0 {
                done += n;
                continue;
            }
            if let Some((start, end)) = cache.pending_at(at) {
                cache = self.arrived.wait(cache).unwrap_or_else(|e| e.into_inner());
                if cache.pending_at(at) != Some((start, end)) {
                    if let Some(e) = cache.failure(start, end) {
                        return Err(e);
                    }
                }
                continue;
            }
            let (start, end) = cache.plan(at, (want - done) as u64, self.size);
            // Fetched without the lock held, so that other threads' reads go on.
            drop(cache);
            // Settled whatever happens, or those waiting for this range would wait on.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fetch(start, end)))
                    .unwrap_or_else(|_| {
                        Err(io::Error::other(format!("reading '{}' failed", self.shown)))
                    });
            cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.settle(start, end, &result);
            self.arrived.notify_all();
            let data = result?;
            let from = (at - start) as usize;
            let n = (want - done).min(data.len() - from);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(done)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(self.read_only())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(self.read_only())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn allocation(&self, _offset: u64) -> io::Result<Option<Run>> {
        Ok(None)
    }
}

impl RemoteStorage {
    fn read_only(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("'{}' is remote: remote images are read-only", self.shown),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            resolve_relative("s3://b/d/top.qcow2", "base.qcow2").as_deref(),
            Some("s3://b/d/base.qcow2")
        );
        assert_eq!(
            resolve_relative("http://h/d/e/top.qcow2", "../base.qcow2").as_deref(),
            Some("http://h/d/base.qcow2")
        );
        assert_eq!(resolve_relative("s3://b/top", "/abs/base"), None);
    }

    #[test]
    fn fetches_grow_while_sequential_and_stay_within_the_object() {
        let mut c = BlockCache::default();
        let size = 100 << 20;
        let fetched = |c: &mut BlockCache, offset, want| {
            let (start, end) = c.plan(offset, want, size);
            // A second reader of the same range waits for this fetch.
            assert_eq!(c.pending_at(offset), Some((start, end)));
            let data = bytes::Bytes::from(vec![0; (end - start) as usize]);
            c.settle(start, end, &Ok(data));
            (start, end)
        };
        assert_eq!(fetched(&mut c, 0, 512), (0, MIN_FETCH));
        assert_eq!(fetched(&mut c, MIN_FETCH, 512), (MIN_FETCH, 3 * MIN_FETCH));
        assert_eq!(
            fetched(&mut c, 3 * MIN_FETCH, 512),
            (3 * MIN_FETCH, 7 * MIN_FETCH)
        );
        // A jump elsewhere starts small again; the last block ends with the object.
        assert_eq!(fetched(&mut c, size - 10, 1), (size - MIN_FETCH, size));
        // A read that a cached block follows stops where that block starts.
        c.insert(10 * MIN_FETCH, bytes::Bytes::from(vec![0; 16]));
        assert_eq!(
            fetched(&mut c, 9 * MIN_FETCH + 5, 1),
            (9 * MIN_FETCH, 10 * MIN_FETCH)
        );
        // A failed fetch is remembered for whoever waited on it.
        let (start, end) = c.plan(20 * MIN_FETCH, 1, size);
        c.settle(start, end, &Err(io::Error::other("cut short")));
        assert_eq!(c.pending_at(20 * MIN_FETCH), None);
        assert!(c
            .failure(start, end)
            .unwrap()
            .to_string()
            .contains("cut short"));
    }
}
