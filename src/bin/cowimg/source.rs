//! How a command names its input image: qemu-img's `-f`, `--object secret,…`,
//! `--image-opts` and `-U`, plus the COWIMG_PASSPHRASE environment variable, so that a
//! passphrase never has to appear on the command line.

use cowimg::create::create_file;
use cowimg::{Backing, CacheSizes, CreateOptions, Error, ErrorKind, Format, Image, OpenOptions};
use cowimg::{Secret, SnapshotRef};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The environment variable that may hold the legacy AES passphrase.
pub const PASSPHRASE_ENV: &str = "COWIMG_PASSPHRASE";

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SourceArgs {
    /// Image format (qcow2, qcow, cow, raw); probed when absent. (convert's
    /// --source-format and compare's --a-format are its other spellings.)
    #[arg(short = 'f', long = "format", value_name = "FMT",
          visible_aliases = ["source-format", "a-format"])]
    pub format: Option<String>,
    /// A secret: secret,id=ID,data=TEXT or secret,id=ID,file=PATH.
    #[arg(long = "object", value_name = "OBJECTDEF")]
    pub objects: Vec<String>,
    /// The filename is an option list: driver=qcow2,file.filename=PATH,encrypt.key-secret=ID.
    #[arg(long = "image-opts", visible_alias = "source-image-opts")]
    pub image_opts: bool,
    /// Read the image whatever other processes do to it: take no lock that keeps a
    /// writer out (read-only use only).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
}

/// The values of `--object secret,id=ID,data=TEXT` (or `file=PATH`) definitions, by id.
pub fn secrets_of(objects: &[String]) -> Result<HashMap<String, Secret>, Error> {
    let mut out = HashMap::new();
    for object in objects {
        let opts = parse_options(object);
        let Some((kind, _)) = opts.first() else {
            continue;
        };
        if kind != "secret" {
            return Err(bad(format!(
                "Object type '{kind}' is not supported; only 'secret' is"
            )));
        }
        let get = |key: &str| opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let id = get("id").ok_or_else(|| bad("Parameter 'id' is missing"))?;
        if get("format").is_some_and(|f| f != "raw") {
            return Err(bad("only format=raw secrets are supported"));
        }
        let value = match (get("data"), get("file")) {
            (Some(data), None) => data.into_bytes(),
            (None, Some(file)) => std::fs::read(&file)
                .map_err(|e| Error::io(format!("Unable to read secret file '{file}'"), e))?,
            _ => {
                return Err(bad(format!(
                    "secret '{id}' needs exactly one of data= or file="
                )))
            }
        };
        out.insert(id, Secret::new(value));
    }
    Ok(out)
}

/// A `json:` filename's object as `key=value` pairs, nested objects' keys joined with
/// dots (`{"file": {"filename": "x"}}` is `file.filename=x`), as QEMU flattens it.
fn json_options(text: &str) -> Result<Vec<(String, String)>, Error> {
    fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let value: serde_json::Value = serde_json::from_str(&double_quoted(text))
        .map_err(|e| bad(format!("Could not parse 'json:' filename: {e}")))?;
    if !value.is_object() {
        return Err(bad("A 'json:' filename must be a JSON object"));
    }
    let mut out = Vec::new();
    flatten("", &value, &mut out);
    Ok(out)
}

/// QEMU's JSON parser also takes 'single-quoted' strings: the same text with every
/// such string double-quoted (its `"` escaped, its `\'` unescaped), for a standard
/// parser.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push('"');
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push('"');
            }
            (Some(q), '\\') => match chars.next() {
                Some('\'') if q == '\'' => out.push('\''),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            (Some('\''), '"') => out.push_str("\\\""),
            (_, c) => out.push(c),
        }
    }
    out
}

/// Splits a QEMU option string at commas, where ",," stands for a comma.
pub fn split_options(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(last) = parts.last_mut() {
                    last.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

/// `key=value` pairs of an option string (a bare word maps to "").
pub fn parse_options(text: &str) -> Vec<(String, String)> {
    split_options(text)
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p, String::new()),
        })
        .collect()
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadArgument, message)
}

pub fn format_named(name: &str) -> Result<Format, Error> {
    Format::from_name(name).ok_or_else(|| bad(format!("Unknown file format '{name}'")))
}

impl SourceArgs {
    /// The secrets defined with --object, by id.
    pub fn secrets(&self) -> Result<HashMap<String, Secret>, Error> {
        secrets_of(&self.objects)
    }

    /// Opens the image for writing. A header that names its format is trusted, as QEMU
    /// trusts it; a raw file must be named with -f.
    pub fn open_writable(&self, filename: &str, backing: Backing) -> Result<Image, Error> {
        let (path, mut options) = self.resolve(filename)?;
        if options.format.is_none() {
            let probed = probed_self_describing(&path)?;
            options.format = Some(probed.ok_or_else(|| bad("give the image format with -f"))?);
        }
        options.writable = true;
        options.backing = backing;
        opened(filename, Image::open(&path, &options))
    }

    /// Opens the image's own headers only (no backing file, no data), to learn what it
    /// is.
    pub fn open_metadata(&self, filename: &str) -> Result<Image, Error> {
        let (path, options) = self.resolve(filename)?;
        let options = options.backing(Backing::Ignore).metadata_only(true);
        opened(filename, Image::open(&path, &options))
    }

    /// The path to open and the options to open it with.
    pub fn resolve(&self, filename: &str) -> Result<(PathBuf, OpenOptions), Error> {
        let secrets = self.secrets()?;
        let mut options = OpenOptions::new().force_share(self.force_share);
        let mut path = PathBuf::from(filename);
        let mut key_secret = None;
        if let Some(f) = &self.format {
            options.format = Some(format_named(f)?);
        }
        // `json:{…}` is an option list too, nested objects giving dotted keys; `file:`
        // names the file protocol, the only one there is here.
        let json = filename
            .strip_prefix("json:")
            .map(json_options)
            .transpose()?;
        if !self.image_opts && json.is_none() {
            if let Some(plain) = filename.strip_prefix("file:") {
                path = PathBuf::from(unambiguous(plain));
            }
            if let Some(plain) = without_blkdebug(filename)? {
                path = PathBuf::from(plain);
            }
        }
        if self.image_opts || json.is_some() {
            let (mut file, mut backing_file, mut backing_format) = (None, None, None);
            let mut backing_key = None;
            let (mut raw_offset, mut raw_size) = (None, None);
            let (mut detect_zeroes, mut discard) = (None, None);
            let mut null = false;
            let pairs = without_blkdebug_node(json.unwrap_or_else(|| parse_options(filename)))?;
            for (key, value) in pairs {
                match key.as_str() {
                    // The file protocol alone reads the bytes as they are: raw.
                    "driver" if value == "file" => options.format = Some(Format::Raw),
                    "driver" if value == "null-co" || value == "null-aio" => null = true,
                    // null-co's zeros are always zeros (QEMU's default leaves them
                    // unspecified); its latency is not simulated.
                    "read-zeroes" | "latency-ns" if null => {}
                    "driver" => options.format = Some(format_named(&value)?),
                    "detect-zeroes" => detect_zeroes = Some(value),
                    "discard" => discard = Some(value),
                    "offset" => raw_offset = Some(crate::create::parse_size(&value)?),
                    "size" => raw_size = Some(crate::create::parse_size(&value)?),
                    "file.filename" | "file" | "filename" => file = Some(value),
                    "file.driver" if value == "file" => {}
                    "file.driver" => options.file_format = Some(format_named(&value)?),
                    "file.file.filename" | "file.file" => file = Some(value),
                    "file.file.driver" if value == "file" => {}
                    "encrypt.key-secret" | "key-secret" => key_secret = Some(value),
                    // The backing node, named as QEMU names its options; its key must be
                    // the image's (one passphrase serves the chain).
                    "backing" if value == "null" || value.is_empty() => {
                        options.backing = Backing::Ignore
                    }
                    "backing.driver" => backing_format = Some(format_named(&value)?),
                    "backing.file.filename" | "backing.file" => backing_file = Some(value),
                    "backing.file.driver" if value == "file" => {}
                    "backing.encrypt.key-secret" => backing_key = Some(value),
                    key if cache_option(&mut options.qcow2_caches, key, &value)? => {}
                    key if cache_mode_option(key, &value)? => {}
                    "encrypt.format" => {}
                    "data-file" | "data-file.filename" => {
                        options.data_file = Some(PathBuf::from(value))
                    }
                    _ => return Err(bad(format!("Invalid parameter '{key}'"))),
                }
            }
            if null {
                options.format = Some(Format::Raw);
                options.null_size = Some(raw_size.take().unwrap_or(1 << 30));
                file = file.or(Some(String::new()));
            }
            path = PathBuf::from(file.ok_or_else(|| bad("Parameter 'file.filename' is required"))?);
            options.detect_zeroes =
                detect_zeroes_mode(detect_zeroes.as_deref(), discard.as_deref())?;
            if raw_offset.is_some() || raw_size.is_some() {
                options.raw_range = Some((raw_offset.unwrap_or(0), raw_size));
            }
            match (&key_secret, backing_key) {
                (Some(id), Some(other)) if *id != other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "a backing file keyed by another secret than its overlay \
                         (backing.encrypt.key-secret) is not supported",
                    ))
                }
                (None, Some(id)) => key_secret = Some(id),
                _ => {}
            }
            match (backing_file, backing_format) {
                (Some(file), format) => {
                    options.backing = Backing::Override {
                        path: PathBuf::from(file),
                        format,
                    }
                }
                (None, Some(format)) => options.backing = Backing::Format(format),
                (None, None) => {}
            }
        }
        options.passphrase = match key_secret {
            Some(id) => Some(
                secrets
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| bad(format!("No secret with id '{id}' found")))?,
            ),
            None => std::env::var_os(PASSPHRASE_ENV).map(|v| Secret::new(v.into_encoded_bytes())),
        };
        Ok((path, options))
    }
}

/// Whether `key` is one of QEMU's cache-mode options (`cache.direct`, `cache.no-flush`,
/// on a node or its file), which change how QEMU reaches the file, never what is
/// read or written; its value is checked as QEMU checks a boolean.
pub fn cache_mode_option(key: &str, value: &str) -> Result<bool, Error> {
    let name = key.strip_prefix("file.").unwrap_or(key);
    if !matches!(name, "cache.direct" | "cache.no-flush") {
        return Ok(false);
    }
    match value {
        "on" | "off" | "true" | "false" | "yes" | "no" => Ok(true),
        _ => Err(bad(format!("Parameter '{key}' expects 'on' or 'off'"))),
    }
}

/// Takes one of QEMU's qcow2 cache options (`cache-size`, `l2-cache-size`,
/// `refcount-cache-size`, `l2-cache-entry-size`, `cache-clean-interval`) into
/// `caches`; false when `key` is none of them. The sizes are checked when the image
/// opens, against its cluster size, as QEMU checks them.
pub fn cache_option(caches: &mut CacheSizes, key: &str, value: &str) -> Result<bool, Error> {
    let size = || {
        crate::create::parse_size(value).map_err(|_| {
            bad(format!(
                "Parameter '{key}' expects a non-negative number below 2^64"
            ))
        })
    };
    match key {
        "cache-size" => caches.cache_size = Some(size()?),
        "l2-cache-size" => caches.l2_cache_size = Some(size()?),
        "refcount-cache-size" => caches.refcount_cache_size = Some(size()?),
        "l2-cache-entry-size" => caches.l2_cache_entry_size = Some(size()?),
        // How often unused cache entries are dropped: memory, nothing read.
        "cache-clean-interval" => {
            value
                .parse::<u64>()
                .map_err(|_| bad("Parameter 'cache-clean-interval' expects an unsigned integer"))?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The image named by QEMU's `blkdebug:CONFIG:IMAGE` when CONFIG is empty: blkdebug
/// without rules passes every request through unchanged (it only splits them at
/// its alignment), so the image is read as itself. Rules (error injection, request
/// suspension) are refused by name; None when `name` does not start with blkdebug.
pub fn without_blkdebug(name: &str) -> Result<Option<&str>, Error> {
    let Some(rest) = name.strip_prefix("blkdebug:") else {
        return Ok(None);
    };
    match rest.split_once(':') {
        Some(("", image)) => Ok(Some(image)),
        _ => Err(Error::new(
            ErrorKind::Unsupported,
            "blkdebug rules (error injection, request suspension) are not supported",
        )),
    }
}

/// Options naming a blkdebug node without rules over an image (`driver=blkdebug,
/// image.driver=qcow2,image.file.filename=…,align=4k`), as the image's own options:
/// blkdebug without rules passes every request through, only shaping them (its
/// limits are checked as sizes and dropped). Other options are returned as given;
/// rules (`config`, `inject-error`, `set-state`…) are left for the caller to refuse.
pub fn without_blkdebug_node(pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>, Error> {
    if !pairs.iter().any(|(k, v)| k == "driver" && v == "blkdebug") {
        return Ok(pairs);
    }
    let limits = [
        "align",
        "max-transfer",
        "opt-write-zero",
        "max-write-zero",
        "opt-discard",
        "max-discard",
    ];
    let mut out = Vec::new();
    for (key, value) in pairs {
        if key == "driver" {
            continue;
        }
        if limits.contains(&key.as_str()) {
            crate::create::parse_size(&value)?;
            continue;
        }
        match key.strip_prefix("image.") {
            Some(inner) => out.push((inner.to_string(), value)),
            None => out.push((key, value)),
        }
    }
    Ok(out)
}

/// QEMU's `detect-zeroes` (off, on, unmap) with its `discard` (ignore, unmap), checked
/// as QEMU checks them: None off, Some(unmap).
fn detect_zeroes_mode(detect: Option<&str>, discard: Option<&str>) -> Result<Option<bool>, Error> {
    // qemu-io opens with discard=unmap unless told otherwise.
    let unmap_allowed = match discard {
        Some("ignore" | "off") => false,
        None | Some("unmap" | "on") => true,
        Some(other) => return Err(bad(format!("Invalid discard option: '{other}'"))),
    };
    match detect {
        None | Some("off") => Ok(None),
        Some("on") => Ok(Some(false)),
        Some("unmap") if unmap_allowed => Ok(Some(true)),
        Some("unmap") => Err(bad(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        )),
        Some(other) => Err(bad(format!(
            "Parameter 'detect-zeroes' does not accept value '{other}'"
        ))),
    }
}

/// A file name as QEMU shows one given after `file:`: a relative name whose first
/// component has a colon ("a:b") would read as a protocol, so it gets "./" before it
/// (and so do the names of backing files found beside it).
fn unambiguous(name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    match first.contains(':') {
        true => format!("./{name}"),
        false => name.to_string(),
    }
}

/// The target of convert and measure: qemu-img's `-O` and `-o`.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// Output format: raw, qcow2 (or qcow, for convert).
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub output_format: String,
    /// Output options, as for create: cluster_size=…,compat=…,compression_type=…
    #[arg(short = 'o', long = "target-options", value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// An input image that may be read at an internal snapshot (qemu-img's `-l`).
#[derive(clap::Args, Clone, Debug)]
pub struct SnapshotSourceArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Read an internal snapshot: snapshot.id=ID or snapshot.name=NAME (or a bare id or name).
    #[arg(
        short = 'l',
        long = "snapshot",
        visible_alias = "source-snapshot",
        value_name = "SNAPSHOT"
    )]
    pub snapshot: Option<String>,
}

impl SnapshotSourceArgs {
    /// Opens `filename` as these options say, printing the chain's warnings.
    pub fn open(&self, filename: &str) -> Result<Image, Error> {
        let (path, mut options) = self.source.resolve(filename)?;
        if let Some(spec) = &self.snapshot {
            options.snapshot = Some(snapshot_ref(spec)?);
        }
        let image = opened(filename, Image::open(&path, &options))?;
        crate::print_warnings(&image);
        Ok(image)
    }
}

/// An open's failure as qemu-img words it: "Could not open 'NAME': why" (a missing
/// file's "why" names it again, as QEMU's file driver does; a lock conflict's message
/// is already worded whole).
pub fn opened(filename: &str, result: Result<Image, Error>) -> Result<Image, Error> {
    result.map_err(|e| {
        if e.kind() == ErrorKind::InUse {
            // qemu-img names the image as it was given (an --image-opts string too);
            // the library named the file.
            let why = (e.message().strip_prefix("Could not open '"))
                .and_then(|rest| rest.split_once("': "))
                .map(|(_, why)| why.to_string());
            match why {
                Some(why) => Error::new(
                    ErrorKind::InUse,
                    format!("Could not open '{filename}': {why}"),
                ),
                None => e,
            }
        } else if e.message().ends_with("creates an infinite loop.") {
            e
        } else {
            let shown = cowimg::storage::display_url(filename);
            e.context(format_args!("Could not open '{shown}'"))
        }
    })
}

/// qemu-img's `-l`: snapshot.id=ID, snapshot.name=NAME, or a bare id or name.
fn snapshot_ref(spec: &str) -> Result<SnapshotRef, Error> {
    if !spec.contains('=') {
        // qemu-img: a bare word is an id or a name, tried as an id first.
        return Ok(SnapshotRef::IdOrName(spec.to_string()));
    }
    match parse_options(spec).as_slice() {
        [(k, v)] if k == "snapshot.id" => Ok(SnapshotRef::Id(v.clone())),
        [(k, v)] if k == "snapshot.name" => Ok(SnapshotRef::Name(v.clone())),
        _ => Err(Error::new(
            ErrorKind::BadArgument,
            format!("Invalid snapshot option '{spec}'"),
        )),
    }
}

/// The format the file at `path` probes as, when its header names it (every format
/// but raw): such a format is written without `-f`, as QEMU writes it; a file that
/// probes as raw is only read unless `-f raw` says so.
pub fn probed_self_describing(path: &Path) -> Result<Option<Format>, Error> {
    let storage = cowimg::image::open_file(path, false, true)?;
    let format = cowimg::probe(&storage).map_err(|e| Error::io("probing", e))?;
    Ok((format != Format::Raw).then_some(format))
}

/// A new qcow2 file at `overlay` whose backing file is `base` (its format stated or
/// probed), opened for writing with `options` (their passphrase reaches the base):
/// writes land in the overlay and `base` is only read (mount's `--overlay`, qemu-io's
/// `-s`).
pub fn new_overlay(
    overlay: &Path,
    base: &Path,
    format: Option<Format>,
    options: &OpenOptions,
) -> Result<Image, Error> {
    // The overlay names its base by an absolute path, or by the URL a remote base has.
    let base = match cowimg::storage::remote_url(base) {
        Some(url) => PathBuf::from(url),
        None => std::fs::canonicalize(base)
            .map_err(|e| Error::io(format!("Could not open '{}'", base.display()), e))?,
    };
    let format = match format {
        Some(f) => f,
        None => {
            let storage = cowimg::image::open_file(&base, false, true)?;
            cowimg::probe(storage.as_ref()).map_err(|e| Error::io("probing", e))?
        }
    };
    let read_base = options.clone().format(format).writable(false);
    let mut create = CreateOptions::default()
        .backing_file(base.display().to_string())
        .backing_format(format.name().to_string());
    create.size = Image::open(&base, &read_base)?.size();
    create_file(Format::Qcow2, overlay, &create, 3)?;
    Image::open(
        overlay,
        &options
            .clone()
            .format(Format::Qcow2)
            .writable(true)
            .backing(Backing::Follow),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_quoted_json_as_qemu_reads_it() {
        assert_eq!(
            double_quoted(r#"{'a': 'x"y', "b": 'it\'s', 'c': "q'"}"#),
            r#"{"a": "x\"y", "b": "it's", "c": "q'"}"#
        );
    }

    #[test]
    fn qemu_option_strings() {
        assert_eq!(split_options("a=1,b=x,,y,c"), vec!["a=1", "b=x,y", "c"]);
        let args = SourceArgs {
            objects: vec!["secret,id=s0,data=pa,,ss".into()],
            image_opts: true,
            ..Default::default()
        };
        let (path, opts) = args
            .resolve("driver=qcow2,file.filename=/x/y.qcow2,encrypt.key-secret=s0")
            .unwrap();
        assert_eq!(path, PathBuf::from("/x/y.qcow2"));
        assert_eq!(opts.format, Some(Format::Qcow2));
        assert_eq!(
            opts.passphrase.as_ref().map(|p| p.as_bytes()),
            Some(&b"pa,ss"[..])
        );
        assert!(args
            .resolve("driver=qcow2,file.filename=a,encrypt.key-secret=nope")
            .is_err());
    }
}
