//! `cowimg create`: a new image, with qemu-img's options.

use crate::source::{format_named, parse_options};
use cowimg::create::{CreateOptions, Encryption, LuksOptions, Preallocation};
use cowimg::Compression;
use cowimg::Secret;
use cowimg::{Backing, Error, ErrorKind, Format, Image, OpenOptions};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Image format.
    #[arg(
        short = 'f',
        long = "format",
        value_name = "FMT",
        default_value = "raw"
    )]
    format: String,
    /// Format options, as qemu-img: cluster_size=65536,compat=1.1,…
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    options: Vec<String>,
    /// Backing file.
    #[arg(short = 'b', long = "backing", value_name = "BACKING_FILE")]
    backing: Option<String>,
    /// Backing file format.
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// Do not open the backing file (the size must then be given).
    #[arg(short = 'u', long = "backing-unsafe")]
    unsafe_backing: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// A secret: secret,id=ID,data=TEXT or secret,id=ID,file=PATH.
    #[arg(long = "object", value_name = "OBJECTDEF")]
    objects: Vec<String>,
    /// The new image.
    filename: Option<String>,
    /// Virtual size, with an optional k, M, G, T, P or E suffix.
    size: Option<String>,
}

/// A size with qemu's suffixes: k/K, M, G, T, P, E (powers of 1024), b or none for bytes.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::new(
            ErrorKind::BadArgument,
            format!("Invalid image size specified: '{text}'"),
        )
    };
    let (digits, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    // Suffixes in either case, as qemu_strtosz reads them.
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return Err(bad()),
    };
    if let Ok(n) = digits.parse::<u64>() {
        return n.checked_mul(1 << shift).ok_or_else(bad);
    }
    let f: f64 = digits.parse().map_err(|_| bad())?;
    let v = f * (1u64 << shift) as f64;
    if !(0.0..1.8e19).contains(&v) {
        return Err(bad());
    }
    Ok(v as u64)
}

fn flag(key: &str, value: &str) -> Result<bool, Error> {
    match value {
        "on" | "true" | "yes" | "" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::new(
            ErrorKind::BadArgument,
            format!("Parameter '{key}' expects 'on' or 'off'"),
        )),
    }
}

/// Applies qemu-img `-o` option strings for a new `format` image to `opts` (and
/// `size`, for `-o size=`). `secrets` are the `--object secret` values an
/// `encrypt.key-secret` names (None where no key is needed, as for measure). A luks
/// image takes the `encrypt.` options without their prefix, as qemu-img's.
pub fn apply_options(
    texts: &[String],
    format: Format,
    opts: &mut CreateOptions,
    size: &mut Option<u64>,
    secrets: Option<&HashMap<String, Secret>>,
) -> Result<(), Error> {
    let mut encrypt_format = (format == Format::Luks).then(|| "luks".to_string());
    let mut luks = LuksOptions::new(Secret::default());
    let mut key_secret = None;
    let mut luks_keys = Vec::new();
    for text in texts {
        for (key, value) in parse_options(text) {
            let key = match key.as_str() {
                "key-secret" | "cipher-alg" | "cipher-mode" | "ivgen-alg" | "ivgen-hash-alg"
                | "hash-alg" | "iter-time"
                    if format == Format::Luks =>
                {
                    format!("encrypt.{key}")
                }
                _ => key,
            };
            match key.as_str() {
                "size" => *size = Some(parse_size(&value)?),
                "compat" => {
                    opts.version = match value.as_str() {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => {
                            return Err(Error::new(
                                ErrorKind::BadArgument,
                                format!("Invalid compatibility level: '{value}'"),
                            ))
                        }
                    }
                }
                "cluster_size" => opts.cluster_size = parse_size(&value)?,
                "refcount_bits" => {
                    // A number out of range is refused by creation itself, in its words.
                    let bits: i64 = value.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::BadArgument,
                            "Parameter 'refcount_bits' expects a number",
                        )
                    })?;
                    opts.refcount_bits = u32::try_from(bits).unwrap_or(0)
                }
                "backing_file" => opts.backing_file = Some(value),
                "backing_fmt" => opts.backing_format = Some(value),
                "encrypt.format" | "encryption" => encrypt_format = Some(value),
                "encrypt.key-secret" => key_secret = Some(value),
                "encrypt.cipher-alg" => luks.cipher_alg = value,
                "encrypt.cipher-mode" => luks.cipher_mode = value,
                "encrypt.ivgen-alg" => luks.ivgen_alg = value,
                "encrypt.ivgen-hash-alg" => luks.ivgen_hash_alg = Some(value),
                "encrypt.hash-alg" => luks.hash_alg = value,
                "encrypt.iter-time" => {
                    luks.iter_time_ms = value.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::BadArgument,
                            "Parameter 'encrypt.iter-time' expects a number",
                        )
                    })?
                }
                "preallocation" => {
                    opts.preallocation = Preallocation::from_name(&value).ok_or_else(|| {
                        Error::new(
                            ErrorKind::BadArgument,
                            format!("Invalid parameter '{value}'"),
                        )
                    })?
                }
                "lazy_refcounts" => opts.lazy_refcounts = flag(&key, &value)?,
                "extended_l2" => opts.extended_l2 = flag(&key, &value)?,
                "compression_type" => {
                    opts.compression = Compression::from_name(&value).ok_or_else(|| {
                        Error::new(
                            ErrorKind::BadArgument,
                            format!("Invalid parameter '{value}'"),
                        )
                    })?
                }
                "data_file" => opts.data_file = Some(value),
                "data_file_raw" => opts.data_file_raw = flag(&key, &value)?,
                // The file system's extent size hint: how it lays the file out, which
                // changes no byte of the image here.
                "extent_size_hint" => {
                    parse_size(&value).map_err(|_| {
                        Error::new(
                            ErrorKind::BadArgument,
                            format!("Parameter 'extent_size_hint' expects a size, got '{value}'"),
                        )
                    })?;
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::BadArgument,
                        format!("Invalid parameter '{key}'"),
                    ))
                }
            }
            if key.starts_with("encrypt.")
                && !matches!(key.as_str(), "encrypt.format" | "encrypt.key-secret")
            {
                luks_keys.push(key);
            }
        }
    }
    opts.encryption = match encrypt_format.as_deref() {
        None | Some("off") => Encryption::None,
        Some("aes" | "on") => Encryption::Aes,
        Some("luks") => {
            if let Some(secrets) = secrets {
                let id = key_secret.ok_or_else(|| {
                    let prefix = if format == Format::Luks {
                        ""
                    } else {
                        "encrypt."
                    };
                    Error::new(
                        ErrorKind::BadArgument,
                        format!("Parameter '{prefix}key-secret' is required for cipher"),
                    )
                })?;
                luks.passphrase = secrets.get(&id).cloned().ok_or_else(|| {
                    Error::new(
                        ErrorKind::BadArgument,
                        format!("No secret with id '{id}' found"),
                    )
                })?;
            }
            Encryption::Luks(luks)
        }
        Some(other) => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("Parameter 'encrypt.format' does not accept value '{other}'"),
            ))
        }
    };
    if let Some(key) = luks_keys
        .first()
        .filter(|_| !matches!(opts.encryption, Encryption::Luks(_)))
    {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!("Invalid parameter '{key}': it needs encrypt.format=luks"),
        ));
    }
    Ok(())
}

/// The `encrypt.key-secret` id among `-o` option strings, if any.
pub fn key_secret(texts: &[String]) -> Option<String> {
    texts
        .iter()
        .flat_map(|t| parse_options(t))
        .find(|(k, _)| k == "encrypt.key-secret")
        .map(|(_, v)| v)
}

pub fn run(args: &Args) -> Result<ExitCode, Error> {
    crate::option_help::check_option_lists(&args.options)?;
    if crate::option_help::wants_help(&args.options) {
        let help = crate::option_help::create_help(&args.format, args.filename.is_some())?;
        crate::print_out(&help);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(filename) = args.filename.as_deref() else {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!(
                "Expecting image file name\nTry '{} create --help' for more info",
                crate::program()
            ),
        ));
    };
    let format = crate::option_help::creatable(&args.format)?;
    let mut opts = CreateOptions::default()
        .backing_file(args.backing.clone())
        .backing_format(args.backing_format.clone());
    let mut size = args.size.as_deref().map(parse_size).transpose()?;
    // cow's one option, the layout version; the rest are qcow2's.
    let mut cow_version = 3;
    let mut options = Vec::new();
    for text in &args.options {
        let mut rest = Vec::new();
        for (k, v) in parse_options(text) {
            if k == "cow_version" {
                cow_version = v
                    .parse()
                    .map_err(|_| Error::new(ErrorKind::BadArgument, "cow_version takes 2 or 3"))?;
            } else {
                rest.push(if v.is_empty() {
                    k
                } else {
                    format!("{k}={}", v.replace(',', ",,"))
                });
            }
        }
        options.push(rest.join(","));
    }
    let secrets = crate::source::secrets_of(&args.objects)?;
    // An unknown compat level is refused after the Formatting line, as qemu-img's
    // driver refuses it (other option errors come first, naming the image).
    let bad_compat = options
        .iter()
        .flat_map(|t| parse_options(t))
        .rfind(|(k, _)| k == "compat")
        .map(|(_, v)| v)
        .filter(|v| !matches!(v.as_str(), "0.10" | "v2" | "1.1" | "v3"));
    let applied: Vec<String> = match bad_compat {
        Some(_) => options
            .iter()
            .map(|t| {
                crate::source::split_options(t)
                    .into_iter()
                    .filter(|p| !p.starts_with("compat="))
                    .map(|p| p.replace(',', ",,"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect(),
        None => options.clone(),
    };
    apply_options(&applied, format, &mut opts, &mut size, Some(&secrets))
        .map_err(|e| e.context(filename))?;
    // `file:NAME` is the file NAME (its own colons included); messages keep the name
    // as given.
    let target = Path::new(filename.strip_prefix("file:").unwrap_or(filename));
    if let Some(backing) = &opts.backing_file {
        let path = cowimg::image::resolve_backing(target, backing);
        let refuse = |what: &str| {
            Err(Error::new(
                ErrorKind::BadArgument,
                format!("{filename}: {what}"),
            ))
        };
        if opts.backing_format.is_none() && format != Format::Cow {
            // As qemu-img: a backing file is never named without its format, and
            // qemu-img says what it would have been, having opened it. (UML's cow,
            // which QEMU no longer creates, has no place for one.)
            let probe = OpenOptions::new()
                .backing(Backing::Ignore)
                .metadata_only(true);
            return match Image::open(&path, &probe) {
                Err(e) => refuse(&format!(
                    "{}\nCould not open backing image.",
                    crate::shown(&e)
                )),
                Ok(image) => refuse(&format!(
                    "Backing file specified without backing format\nDetected format of {}.",
                    image.chain()[0].format().name()
                )),
            };
        }
        if cowimg::create::same_file(&path, target) {
            return refuse(
                "Error: Trying to create an image with the same filename as the backing file",
            );
        }
        let backing_format = opts
            .backing_format
            .as_deref()
            .map(format_named)
            .transpose()?;
        if !args.unsafe_backing || size.is_none() {
            let image = Image::open(
                &path,
                &OpenOptions::new()
                    .format(backing_format)
                    .backing(Backing::Ignore)
                    .metadata_only(true),
            )
            .map_err(|e| {
                e.context(format_args!(
                    "Could not open backing image '{}'",
                    path.display()
                ))
            })?;
            size.get_or_insert(image.size());
        }
    }
    opts.size = size.ok_or_else(|| {
        Error::new(
            ErrorKind::BadArgument,
            "Image creation needs a size parameter",
        )
    })?;
    if !args.quiet {
        // As qemu-img, before the image is made.
        let mut given: Vec<(String, String)> = Vec::new();
        given.extend(
            args.backing
                .iter()
                .map(|b| ("backing_file".into(), b.clone())),
        );
        given.extend(
            args.backing_format
                .iter()
                .map(|f| ("backing_fmt".into(), f.clone())),
        );
        given.extend(options.iter().flat_map(|t| parse_options(t)));
        crate::print_out(&formatting_line(filename, format, &given, opts.size));
    }
    if let Some(level) = bad_compat {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!("{filename}: Parameter 'version' does not accept value '{level}'"),
        ));
    }
    // The format's own refusals name the image first, as qemu-img's do; failures to
    // make the file name it themselves.
    cowimg::create::create_file(format, target, &opts, cow_version).map_err(|e| {
        match e.kind() {
            ErrorKind::BadArgument | ErrorKind::Unsupported => e.context(filename),
            _ => e,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The line qemu-img create prints: the options given, as given (sizes in bytes), in
/// qemu-img's order for the format, with the qcow2 defaults it always shows.
fn formatting_line(
    filename: &str,
    format: Format,
    given: &[(String, String)],
    size: u64,
) -> String {
    let value = |key: &str| {
        given
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let or = |key: &str, default: &str| Some(value(key).unwrap_or_else(|| default.into()));
    let encrypt = [
        "format",
        "key-secret",
        "cipher-alg",
        "cipher-mode",
        "ivgen-alg",
        "ivgen-hash-alg",
        "hash-alg",
        "iter-time",
    ];
    let prefixed = |key: &&str| (format!("encrypt.{key}"), value(&format!("encrypt.{key}")));
    let mut fields: Vec<(String, Option<String>)> = vec![("size".into(), Some(size.to_string()))];
    match format {
        Format::Qcow2 => {
            fields = vec![("encryption".into(), value("encryption"))];
            fields.extend(encrypt.iter().map(prefixed));
            let cluster_size = value("cluster_size")
                .map(|v| parse_size(&v).map_or(v, |n| n.to_string()))
                .unwrap_or_else(|| "65536".into());
            fields.extend([
                ("cluster_size".into(), Some(cluster_size)),
                ("extended_l2".into(), or("extended_l2", "off")),
                ("preallocation".into(), value("preallocation")),
                ("compression_type".into(), or("compression_type", "zlib")),
                ("size".into(), Some(size.to_string())),
            ]);
            for key in [
                "compat",
                "backing_file",
                "backing_fmt",
                "data_file",
                "data_file_raw",
            ] {
                fields.push((key.into(), value(key)));
            }
            fields.push(("lazy_refcounts".into(), or("lazy_refcounts", "off")));
            fields.push(("refcount_bits".into(), or("refcount_bits", "16")));
        }
        Format::Luks => fields.extend(encrypt.iter().skip(1).map(|k| (k.to_string(), value(k)))),
        Format::Qcow => {
            let legacy = ["backing_file", "backing_fmt", "encryption"];
            fields.extend(legacy.map(|k| (k.into(), value(k))));
            fields.extend(encrypt.iter().take(2).map(prefixed));
        }
        Format::Cow => fields.push(("backing_file".into(), value("backing_file"))),
        _ => fields.push(("preallocation".into(), value("preallocation"))),
    }
    // The file protocol's own option comes last, in bytes.
    let hint = value("extent_size_hint").map(|v| parse_size(&v).map_or(v, |n| n.to_string()));
    fields.push(("extent_size_hint".into(), hint));
    let shown: Vec<String> = fields
        .into_iter()
        // A comma in a value is shown escaped, as it would be given.
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", v.replace(',', ",,"))))
        .collect();
    format!(
        "Formatting '{filename}', fmt={format} {}\n",
        shown.join(" ")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(super::parse_size("512").unwrap(), 512);
        assert_eq!(super::parse_size("64K").unwrap(), 65536);
        assert_eq!(super::parse_size("1.5M").unwrap(), 1536 << 10);
        assert_eq!(super::parse_size("4T").unwrap(), 4 << 40);
        assert!(super::parse_size("4X").is_err());
    }
}
