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
    /// The settings from the environment; a value set but not understood is refused by
    /// its variable's name (never silently replaced by the default).
    fn from_env() -> io::Result<Patience> {
        let setting = |name: &str, ok: &dyn Fn(f64) -> bool, wanted: &str| match std::env::var(name)
        {
            Err(_) => Ok(None),
            Ok(text) => match text.trim().parse::<f64>() {
                Ok(v) if ok(v) => Ok(Some(v)),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} must be {wanted} (it is '{text}')"),
                )),
            },
        };
        let timeout = setting(
            "COWIMG_REMOTE_TIMEOUT",
            &|t| t.is_finite() && t > 0.0 && t <= 3600.0,
            "a number of seconds above 0, at most 3600",
        )?;
        let retries = setting(
            "COWIMG_REMOTE_RETRIES",
            &|r| r.fract() == 0.0 && (0.0..=20.0).contains(&r),
            "a whole number from 0 to 20",
        )?;
        Ok(Patience {
            timeout: Duration::from_secs_f64(timeout.unwrap_or(30.0)),
            retries: retries.map_or(3, |r| r as u32),
        })
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
    shared: Arc<Shared>,
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
        let patience = Patience::from_env()?;
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
            shared: Arc::new(Shared::default()),
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

/// A fetched block: its bytes, when it was last used, and whether it was fetched
/// ahead of any reader (its first reader then asks for the next one).
struct Block {
    data: bytes::Bytes,
    used: u64,
    ahead: bool,
}

/// A fetch under way: where it ends, and whether it runs ahead of any reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    end: u64,
    ahead: bool,
}

/// Fetched blocks by their start, and the fetches under way (other readers of their
/// range wait for them instead of fetching again).
#[derive(Default)]
struct BlockCache {
    blocks: BTreeMap<u64, Block>,
    bytes: usize,
    clock: u64,
    /// Fetches under way, by start.
    pending: BTreeMap<u64, Pending>,
    /// Recent fetches that failed, with why: a reader that waited for one fails too
    /// rather than trying again itself.
    failed: Vec<(u64, u64, io::ErrorKind, String)>,
    /// Where the sequential run of fetches ends, and the size of the next one.
    sequential_end: u64,
    window: u64,
}

/// What a look into the cache found at an offset.
enum Found {
    /// Bytes copied; `ahead`: they came from a block fetched ahead, read for the
    /// first time, which ends where the run of fetches ends (so the next may start).
    Copied { n: usize, ahead: bool },
    /// A fetch under way brings it: wait. `ahead`: it is a fetch ahead of readers
    /// and the last of the run (so the next may start: one block ahead, never more).
    Coming { start: u64, end: u64, ahead: bool },
    /// Nothing: it must be fetched.
    Missing,
}

impl BlockCache {
    /// Copies what the cache holds at `offset` into `buf`, or says what is coming.
    fn look(&mut self, buf: &mut [u8], offset: u64) -> Found {
        self.clock += 1;
        let clock = self.clock;
        if let Some((&start, block)) = self.blocks.range_mut(..=offset).next_back() {
            let from = (offset - start) as usize;
            if from < block.data.len() {
                block.used = clock;
                let n = buf.len().min(block.data.len() - from);
                buf[..n].copy_from_slice(&block.data[from..from + n]);
                let end = start + block.data.len() as u64;
                let ahead = std::mem::take(&mut block.ahead) && end == self.sequential_end;
                return Found::Copied { n, ahead };
            }
        }
        match self.pending_at(offset) {
            Some((start, p)) => Found::Coming {
                start,
                end: p.end,
                ahead: p.ahead && p.end == self.sequential_end,
            },
            None => Found::Missing,
        }
    }

    /// The fetch under way that will bring `offset`, if any.
    fn pending_at(&self, offset: u64) -> Option<(u64, Pending)> {
        let (&start, &p) = self.pending.range(..=offset).next_back()?;
        (offset < p.end).then_some((start, p))
    }

    /// Where a fetch for `offset` may end at most: where the next cached or coming
    /// block starts, or the object ends.
    fn limit(&self, offset: u64, size: u64) -> u64 {
        let next_block = self.blocks.range(offset + 1..).next().map(|(&s, _)| s);
        let next_pending = self.pending.range(offset + 1..).next().map(|(&s, _)| s);
        [Some(size), next_block, next_pending]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(size)
    }

    /// The range to fetch for a read of `want` bytes at `offset` that neither the cache
    /// nor a fetch under way holds: aligned, grown while reads are sequential, ending
    /// where the next cached or coming block starts, within `size`. Registered as under
    /// way.
    fn plan(&mut self, offset: u64, want: u64, size: u64) -> (u64, u64) {
        let mut start = offset - offset % MIN_FETCH;
        if let Some((&s, block)) = self.blocks.range(..=offset).next_back() {
            start = start.max(s + block.data.len() as u64);
        }
        if let Some((_, p)) = self.pending.range(..=offset).next_back() {
            start = start.max(p.end);
        }
        self.window = match start <= self.sequential_end && offset >= self.sequential_end {
            true => (self.window * 2).clamp(MIN_FETCH, MAX_FETCH),
            false => MIN_FETCH,
        };
        let wanted_end = offset
            .saturating_add(want)
            .min(offset.saturating_add(MAX_FETCH));
        let end = start.saturating_add(self.window).max(wanted_end);
        let end = (end.div_ceil(MIN_FETCH).saturating_mul(MIN_FETCH)).min(self.limit(offset, size));
        self.sequential_end = end;
        self.pending.insert(start, Pending { end, ahead: false });
        (start, end)
    }

    /// The next fetch ahead of a sequential reader, from where the run of fetches
    /// ends, when nothing holds or brings those bytes yet. Registered as under way.
    fn plan_ahead(&mut self, size: u64) -> Option<(u64, u64)> {
        let start = self.sequential_end;
        if start >= size || self.pending_at(start).is_some() {
            return None;
        }
        if let Some((&s, block)) = self.blocks.range(..=start).next_back() {
            if start < s + block.data.len() as u64 {
                return None;
            }
        }
        self.window = (self.window * 2).clamp(MIN_FETCH, MAX_FETCH);
        let end = start
            .saturating_add(self.window)
            .min(self.limit(start, size));
        self.sequential_end = end;
        self.pending.insert(start, Pending { end, ahead: true });
        Some((start, end))
    }

    /// Ends the fetch of `[start, end)`: its block cached, or why it failed kept for
    /// those who waited for it.
    fn settle(&mut self, start: u64, end: u64, result: &io::Result<bytes::Bytes>) {
        let ahead = self.pending.remove(&start).is_some_and(|p| p.ahead);
        match result {
            Ok(data) => self.insert(start, data.clone(), ahead),
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

    fn insert(&mut self, start: u64, data: bytes::Bytes, ahead: bool) {
        self.clock += 1;
        self.bytes += data.len();
        let block = Block {
            data,
            used: self.clock,
            ahead,
        };
        if let Some(old) = self.blocks.insert(start, block) {
            self.bytes -= old.data.len();
        }
        while self.bytes > CACHE_BYTES && self.blocks.len() > 1 {
            let oldest = self
                .blocks
                .iter()
                .filter(|(&s, _)| s != start)
                .min_by_key(|(_, b)| b.used)
                .map(|(&s, _)| s);
            let Some(oldest) = oldest else { break };
            if let Some(block) = self.blocks.remove(&oldest) {
                self.bytes -= block.data.len();
            }
        }
    }
}

/// The cache and the signal its waiters wait on, shared with fetches running ahead.
#[derive(Default)]
struct Shared {
    cache: Mutex<BlockCache>,
    /// Signalled whenever a fetch ends, for the readers waiting on it.
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BlockCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RemoteStorage {
    /// Starts fetching `[start, end)` in the background, ahead of the reader. One try:
    /// if it fails, it is simply dropped, and a reader that needs the bytes fetches
    /// them itself (with retries).
    fn fetch_ahead(&self, start: u64, end: u64) {
        let (store, path, shared) = (
            Arc::clone(&self.store),
            self.path.clone(),
            Arc::clone(&self.shared),
        );
        let task = async move {
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            let result = store.get_range(&path, start..end).await;
            let mut cache = shared.lock();
            match result {
                Ok(data) if data.len() as u64 == end - start => {
                    BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
                    cache.settle(start, end, &Ok(data));
                }
                _ => {
                    cache.pending.remove(&start);
                }
            }
            drop(cache);
            shared.arrived.notify_all();
        };
        match runtime() {
            Ok(rt) => drop(rt.spawn(task)),
            Err(_) => {
                self.shared.lock().pending.remove(&start);
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
        let mut cache = self.shared.lock();
        while done < want {
            let at = offset + done as u64;
            match cache.look(&mut buf[done..want], at) {
                Found::Copied { n, ahead } => {
                    done += n;
                    // A block fetched ahead is being read: fetch the next one.
                    if ahead {
                        if let Some((s, e)) = cache.plan_ahead(self.size) {
                            self.fetch_ahead(s, e);
                        }
                    }
                    continue;
                }
                Found::Coming { start, end, ahead } => {
                    if ahead {
                        if let Some((s, e)) = cache.plan_ahead(self.size) {
                            self.fetch_ahead(s, e);
                        }
                    }
                    cache = self
                        .shared
                        .arrived
                        .wait(cache)
                        .unwrap_or_else(|e| e.into_inner());
                    if cache.pending_at(at).map(|(s, p)| (s, p.end)) != Some((start, end)) {
                        if let Some(e) = cache.failure(start, end) {
                            return Err(e);
                        }
                    }
                    continue;
                }
                Found::Missing => {}
            }
            // Carrying on where the last fetch ended (not merely starting at 0: a
            // header read alone fetches nothing ahead).
            let sequential = at > 0 && at == cache.sequential_end;
            let (start, end) = cache.plan(at, (want - done) as u64, self.size);
            if sequential {
                if let Some((s, e)) = cache.plan_ahead(self.size) {
                    self.fetch_ahead(s, e);
                }
            }
            // Fetched without the lock held, so that other threads' reads go on.
            drop(cache);
            // Settled whatever happens, or those waiting for this range would wait on.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fetch(start, end)))
                    .unwrap_or_else(|_| {
                        Err(io::Error::other(format!("reading '{}' failed", self.shown)))
                    });
            cache = self.shared.lock();
            cache.settle(start, end, &result);
            self.shared.arrived.notify_all();
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
        let block = |start: u64, end: u64| bytes::Bytes::from(vec![0; (end - start) as usize]);
        let fetched = |c: &mut BlockCache, offset, want| {
            let (start, end) = c.plan(offset, want, size);
            // A second reader of the same range waits for this fetch.
            assert!(matches!(c.look(&mut [0], offset), Found::Coming { .. }));
            c.settle(start, end, &Ok(block(start, end)));
            (start, end)
        };
        assert_eq!(fetched(&mut c, 0, 512), (0, MIN_FETCH));
        assert_eq!(fetched(&mut c, MIN_FETCH, 512), (MIN_FETCH, 3 * MIN_FETCH));
        // Ahead of a sequential reader: the next, larger block, once.
        let ahead = c.plan_ahead(size).unwrap();
        assert_eq!(ahead, (3 * MIN_FETCH, 7 * MIN_FETCH));
        assert_eq!(c.plan_ahead(size), Some((7 * MIN_FETCH, 15 * MIN_FETCH)));
        c.pending.remove(&(7 * MIN_FETCH));
        c.sequential_end = 7 * MIN_FETCH;
        assert!(matches!(
            c.look(&mut [0], 5 * MIN_FETCH),
            Found::Coming { ahead: true, .. }
        ));
        c.settle(ahead.0, ahead.1, &Ok(block(ahead.0, ahead.1)));
        // Its first reader learns it was fetched ahead; the next does not.
        assert!(matches!(
            c.look(&mut [0], 4 * MIN_FETCH),
            Found::Copied { ahead: true, .. }
        ));
        assert!(matches!(
            c.look(&mut [0], 4 * MIN_FETCH),
            Found::Copied { ahead: false, .. }
        ));
        // A jump elsewhere starts small again; the last block ends with the object.
        assert_eq!(fetched(&mut c, size - 10, 1), (size - MIN_FETCH, size));
        assert_eq!(c.plan_ahead(size), None);
        // A read that a cached block follows stops where that block starts.
        c.insert(40 * MIN_FETCH, bytes::Bytes::from(vec![0; 16]), false);
        assert_eq!(
            fetched(&mut c, 39 * MIN_FETCH + 5, 1),
            (39 * MIN_FETCH, 40 * MIN_FETCH)
        );
        // A failed fetch is remembered for whoever waited on it.
        let (start, end) = c.plan(60 * MIN_FETCH, 1, size);
        c.settle(start, end, &Err(io::Error::other("cut short")));
        assert!(matches!(c.look(&mut [0], 60 * MIN_FETCH), Found::Missing));
        assert!(c
            .failure(start, end)
            .unwrap()
            .to_string()
            .contains("cut short"));
    }
}
