//! berth's analysis-ready data library: NetCDF (or Zarr) in, Zarr v3 out, content-addressed
//! versions.
//!
//! [`Library::add`] converts one or several sources (NetCDF-3 classic, NetCDF-4/HDF5, or
//! Zarr v2/v3 stores; merged, or concatenated along one dimension) into one Zarr v3 store
//! that `xarray.open_zarr` reads identical to `xarray.open_dataset` of the source. The store
//! is registered under a name as an immutable version whose id is the SHA-256 of its content
//! ([`hash_store`]). Layout of the library root ([`default_root`]):
//!
//! ```text
//! ROOT/versions/<sha256 hex>/   one Zarr v3 store per version (immutable)
//! ROOT/names/<NAME>.json        the name's history of versions, newest last
//! ROOT/names/.lock              held (advisory file lock) while a name file changes
//! ROOT/tmp/                     stores being written; renamed into versions/ when complete
//! ```
//!
//! Readers never see partial state: a store appears in `versions/` by one rename of a
//! complete directory, and a name file is replaced by one rename. See `DESIGN.md`.
#![deny(missing_docs)]

mod classic;
mod dtype;
mod error;
mod ingest;
mod inspect;
mod quicklook;
mod source;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::DataError;
pub use inspect::{Inspection, Stats, VariableInfo};
pub use quicklook::{Quicklook, MISSING_COLOUR};

/// Compression of the chunks (a Zarr v3 bytes-to-bytes codec after the `bytes` codec with
/// little-endian byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "name")]
pub enum Codec {
    /// Zstandard (Zarr v3 `zstd` codec), without checksum.
    Zstd {
        /// Compression level, 1..=22 (3 by default).
        level: i32,
    },
    /// Gzip (Zarr v3 `gzip` codec, RFC 1952).
    Gzip {
        /// Compression level, 0..=9.
        level: u32,
    },
    /// No compression.
    None,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::Zstd { level: 3 }
    }
}

impl std::str::FromStr for Codec {
    type Err = DataError;
    /// `zstd`, `gzip` or `none`, with an optional level: `zstd:5`, `gzip:9`.
    fn from_str(s: &str) -> Result<Codec, DataError> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let bad = || {
            DataError::InvalidOptions(format!(
                "codec {s:?}: expected zstd[:1-22], gzip[:0-9] or none"
            ))
        };
        match (name, level) {
            ("zstd", None) => Ok(Codec::default()),
            ("zstd", Some(l)) => match l.parse::<i32>() {
                Ok(l @ 1..=22) => Ok(Codec::Zstd { level: l }),
                _ => Err(bad()),
            },
            ("gzip", None) => Ok(Codec::Gzip { level: 6 }),
            ("gzip", Some(l)) => match l.parse::<u32>() {
                Ok(l @ 0..=9) => Ok(Codec::Gzip { level: l }),
                _ => Err(bad()),
            },
            ("none", None) => Ok(Codec::None),
            _ => Err(bad()),
        }
    }
}

/// How [`Library::add`] converts its sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOptions {
    /// Concatenate the sources along this dimension, in the order given (Pangeo Forge's file
    /// pattern). The other dimensions and the variables without it must agree. `None`: the
    /// sources are merged (a variable in several sources must be the same in each).
    pub concat: Option<String>,
    /// Chunk size (elements) per dimension name, overriding the default rule (about 4 MiB
    /// along the leading dimension, whole extent on the others). An unknown dimension or 0 is
    /// [`DataError::InvalidOptions`].
    pub chunks: Vec<(String, u64)>,
    /// Chunk compression.
    pub codec: Codec,
}

/// Progress of an ingest, reported after each chunk written (and once at the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestProgress {
    /// Uncompressed bytes of the chunks written so far.
    pub bytes_done: u64,
    /// Uncompressed bytes of all variables.
    pub bytes_total: u64,
    /// Chunks written so far.
    pub chunks_done: u64,
    /// Chunks to write.
    pub chunks_total: u64,
}

/// One version of a data set as recorded in the name's history (`names/<NAME>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version id: SHA-256 (lower-case hex, 64 digits) of the store, see [`hash_store`].
    pub version: String,
    /// When this version was added to the name (UTC).
    pub created: chrono::DateTime<chrono::Utc>,
    /// The sources it was made from, absolute paths, in order.
    pub sources: Vec<PathBuf>,
    /// Options of the ingest.
    pub options: IngestOptions,
    /// Size of the store's files, bytes.
    pub stored_bytes: u64,
    /// Uncompressed size of all variables, bytes.
    pub logical_bytes: u64,
}

/// A resolved version of a named data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The data set's name.
    pub name: String,
    /// Its history entry.
    pub record: VersionRecord,
    /// The Zarr v3 store (`ROOT/versions/<id>`); open it read-only.
    pub path: PathBuf,
}

impl Version {
    /// The version id (SHA-256 hex).
    pub fn id(&self) -> &str {
        &self.record.version
    }
}

/// A line of [`Library::ls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSummary {
    /// The data set's name.
    pub name: String,
    /// Its newest version.
    pub newest: VersionRecord,
    /// Number of versions in its history.
    pub versions: usize,
}

/// What [`Library::rm`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Versions taken out of the name's history.
    pub unregistered: Vec<String>,
    /// Version stores deleted from disk (no name referenced them any more).
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct NameFile {
    name: String,
    versions: Vec<VersionRecord>,
}

/// The default library root: `$BERTH_DATA_DIR` if set, else `$XDG_DATA_HOME/berth/data`, else
/// `$HOME/.local/share/berth/data` (XDG Base Directory specification).
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
                .join(".local/share")
        });
    base.join("berth/data")
}

/// Checks a data set name: 1 to 64 characters among ASCII letters, digits, `-`, `_` and `.`,
/// not starting with `.` and without `..` (so no hidden files, no path tricks, no `/`).
pub fn validate_name(name: &str) -> Result<(), DataError> {
    let bad = |reason| {
        Err(DataError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if name.contains('/') {
        return bad("it contains '/'");
    }
    if name.contains("..") {
        return bad("it contains '..'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The content hash of a store directory, which is a version's id: SHA-256 over every regular
/// file of the directory, in byte order of their keys, where a file's key is its path relative
/// to the directory with `/` separators (the Zarr store key, e.g. `sst/c/0/0/0`), framed as
///
/// ```text
/// key bytes (UTF-8) | 0x00 | length of the content, 8 bytes big-endian | content
/// ```
///
/// Returned as 64 lower-case hex digits. Symbolic links and other non-regular files are an
/// error ([`DataError::Metadata`]): a store holds files only.
pub fn hash_store(dir: &Path) -> Result<String, DataError> {
    let files = store_keys(dir)?;
    let mut h = Sha256::new();
    for key in files {
        let p = dir.join(&key);
        let mut f = std::fs::File::open(&p)
            .map_err(|e| DataError::io(format!("reading {}", p.display()), e))?;
        let len = f
            .metadata()
            .map_err(|e| DataError::io(format!("reading {}", p.display()), e))?
            .len();
        h.update(key.as_bytes());
        h.update([0u8]);
        h.update(len.to_be_bytes());
        let n = std::io::copy(&mut f, &mut h)
            .map_err(|e| DataError::io(format!("reading {}", p.display()), e))?;
        if n != len {
            return Err(DataError::Metadata {
                path: p,
                message: "changed while being hashed".into(),
            });
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The keys of the store in `dir` (file paths relative to it, `/`-separated), sorted: the
/// order [`hash_store`] reads them in.
///
/// # Errors
/// [`DataError::Io`]; [`DataError::Metadata`] for a key that is not UTF-8 or an entry other
/// than a file or folder.
pub fn store_keys(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut files = Vec::new();
    list_files(dir, "", &mut files)?;
    files.sort();
    Ok(files)
}

fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), DataError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(format!("listing {}", dir.display()), e))?;
    for e in rd {
        let e = e.map_err(|e| DataError::io(format!("listing {}", dir.display()), e))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| DataError::Metadata {
                path: dir.join(n),
                message: "a store key is not UTF-8".into(),
            })?;
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let ft = e
            .file_type()
            .map_err(|err| DataError::io(format!("reading {}", e.path().display()), err))?;
        if ft.is_dir() {
            list_files(&e.path(), &key, out)?;
        } else if ft.is_file() {
            out.push(key);
        } else {
            return Err(DataError::Metadata {
                path: e.path(),
                message: "not a regular file or directory".into(),
            });
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64, DataError> {
    let mut files = Vec::new();
    list_files(dir, "", &mut files)?;
    let mut total = 0;
    for k in files {
        let p = dir.join(k);
        total += std::fs::metadata(&p)
            .map_err(|e| DataError::io(format!("reading {}", p.display()), e))?
            .len();
    }
    Ok(total)
}

/// Removes a directory when dropped, unless disarmed.
struct TempDir(Option<PathBuf>);
impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Parses `NAME` or `NAME@HEXPREFIX`.
/// Every chunk's grid index of an array of `shape` in chunks of `chunk` (elements per
/// dimension), in C order (last dimension fastest), as the Zarr v3 spec's regular chunk grid
/// numbers them. None for an array with an empty dimension; one (`[]`) for a scalar.
fn chunk_indices(shape: &[u64], chunk: &[u64]) -> impl Iterator<Item = Vec<u64>> {
    let grid: Vec<u64> = shape
        .iter()
        .zip(chunk)
        .map(|(&n, &c)| n.div_ceil(c.max(1)))
        .collect();
    let total: u64 = if grid.contains(&0) {
        0
    } else {
        grid.iter().product()
    };
    (0..total).map(move |lin| {
        let mut idx = vec![0u64; grid.len()];
        let mut rest = lin;
        for k in (0..grid.len()).rev() {
            idx[k] = rest % grid[k];
            rest /= grid[k];
        }
        idx
    })
}

/// Splits a data set spec, `NAME` or `NAME@PREFIX`, into the name and the version prefix
/// (lower-cased hex digits), checking both without a library: the name with
/// [`validate_name`], the prefix as one or more hex digits.
///
/// # Errors
/// [`DataError::InvalidName`]; [`DataError::UnknownVersion`] for a prefix that is empty or
/// not hex digits.
pub fn parse_spec(spec: &str) -> Result<(&str, Option<String>), DataError> {
    match spec.split_once('@') {
        None => {
            validate_name(spec)?;
            Ok((spec, None))
        }
        Some((name, prefix)) => {
            validate_name(name)?;
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(DataError::UnknownVersion {
                    name: name.to_string(),
                    prefix: prefix.to_string(),
                });
            }
            Ok((name, Some(prefix.to_ascii_lowercase())))
        }
    }
}

/// A data library rooted at a directory. Cheap to clone; safe to share between threads
/// (`Send + Sync`) and between processes: writers (`add`, `rm`) serialize on an advisory
/// file lock; readers take no lock and see either the old or the new state, never a partial
/// one (every change is a rename).
#[derive(Debug, Clone)]
pub struct Library {
    root: PathBuf,
}

impl Library {
    /// Opens (creating the directories if needed) the library at `root`.
    ///
    /// # Errors
    /// [`DataError::Io`] if the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Library, DataError> {
        let root = root.into();
        for d in ["versions", "names", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)
                .map_err(|e| DataError::io(format!("creating {}", p.display()), e))?;
        }
        let lib = Library { root };
        lib.remove_stale_temporaries();
        Ok(lib)
    }

    /// Removes `tmp/ingest-<pid>-…`, `tmp/import-<pid>-…` and `tmp/rm-<pid>-…` left by processes that died (no
    /// `/proc/<pid>`; Linux only, elsewhere nothing is removed).
    fn remove_stale_temporaries(&self) {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name
                .strip_prefix("ingest-")
                .or_else(|| name.strip_prefix("rm-"))
                .or_else(|| name.strip_prefix("import-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    tracing::info!(path = %e.path().display(), "removing a temporary store of a dead process");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// The library's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn name_path(&self, name: &str) -> PathBuf {
        self.root.join("names").join(format!("{name}.json"))
    }

    fn version_path(&self, id: &str) -> PathBuf {
        self.root.join("versions").join(id)
    }

    fn lock(&self) -> Result<std::fs::File, DataError> {
        let p = self.root.join("names/.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| DataError::io(format!("opening {}", p.display()), e))?;
        f.lock()
            .map_err(|e| DataError::io(format!("locking {}", p.display()), e))?;
        Ok(f)
    }

    fn read_name(&self, name: &str) -> Result<Option<NameFile>, DataError> {
        let p = self.name_path(name);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| DataError::Metadata {
                    path: p,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DataError::io(format!("reading {}", p.display()), e)),
        }
    }

    /// Replaces a name file atomically (write to a temporary file, fsync, rename).
    fn write_name(&self, nf: &NameFile) -> Result<(), DataError> {
        let p = self.name_path(&nf.name);
        let tmp = self
            .root
            .join("names")
            .join(format!(".{}.{}.tmp", nf.name, unique_suffix()));
        let text = serde_json::to_vec_pretty(nf).map_err(|e| DataError::Metadata {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(DataError::io(format!("writing {}", p.display()), e));
        }
        Ok(())
    }

    fn all_names(&self) -> Result<Vec<String>, DataError> {
        let dir = self.root.join("names");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| DataError::io(format!("listing {}", dir.display()), e))?
        {
            let e = e.map_err(|e| DataError::io(format!("listing {}", dir.display()), e))?;
            let f = e.file_name().to_string_lossy().to_string();
            if let Some(n) = f.strip_suffix(".json") {
                if validate_name(n).is_ok() {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Converts `sources` into a Zarr v3 store and registers it as the newest version of
    /// `name`.
    ///
    /// `sources`: NetCDF files (classic, 64-bit offset, NetCDF-4/HDF5) or Zarr store
    /// directories (v2 or v3, as xarray writes them). Several sources are merged, or
    /// concatenated along `opts.concat`. The store is written chunk by chunk (bounded memory:
    /// a few chunks per core in flight), chunks compressed in parallel on all cores, into
    /// `ROOT/tmp/`; then hashed ([`hash_store`]), renamed to `ROOT/versions/<id>` and appended
    /// to `ROOT/names/<name>.json`. Identical content gives the same id and reuses the stored
    /// version. `progress` is called on the calling thread.
    ///
    /// # Errors
    /// [`DataError::InvalidName`], [`DataError::InvalidOptions`] (chunks, concat dimension),
    /// [`DataError::UnreadableSource`] (not NetCDF/Zarr, truncated), [`DataError::Unsupported`]
    /// (non-numeric variables, groups), [`DataError::Incompatible`] (sources that do not
    /// join), [`DataError::Io`] (e.g. a full disk), [`DataError::Zarr`]. On any error nothing
    /// is registered and the temporary store is removed.
    pub fn add(
        &self,
        name: &str,
        sources: &[PathBuf],
        opts: IngestOptions,
        progress: &dyn Fn(IngestProgress),
    ) -> Result<Version, DataError> {
        let span = tracing::info_span!("ingest", name, sources = ?sources, concat = ?opts.concat);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        validate_name(name)?;
        if sources.is_empty() {
            return Err(DataError::InvalidOptions("no source given".into()));
        }
        let abs: Vec<PathBuf> = sources
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let opened = abs
            .iter()
            .map(|p| source::Source::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let plan = source::plan(&opened, opts.concat.as_deref())?;
        ingest::check_chunks(&plan, &opts.chunks)?;

        let tmp_path = self
            .root
            .join("tmp")
            .join(format!("ingest-{}", unique_suffix()));
        std::fs::create_dir_all(&tmp_path)
            .map_err(|e| DataError::io(format!("creating {}", tmp_path.display()), e))?;
        let tmp = TempDir(Some(tmp_path.clone()));
        let logical_bytes = ingest::write_store(&tmp_path, &opened, &plan, &opts, progress)?;
        drop(opened);
        let id = hash_store(&tmp_path)?;
        let stored_bytes = dir_size(&tmp_path)?;
        let v = self.register(name, tmp, &id, || VersionRecord {
            version: id.clone(),
            created: chrono::Utc::now(),
            sources: abs,
            options: opts,
            stored_bytes,
            logical_bytes,
        })?;
        tracing::info!(version = %id, stored_bytes, logical_bytes, elapsed = ?started.elapsed(), "ingested");
        Ok(v)
    }

    /// A new empty folder under `ROOT/tmp/` to assemble a store in for [`Library::adopt`]
    /// (removed by the next [`Library::open`] if this process dies).
    ///
    /// # Errors
    /// [`DataError::Io`].
    pub fn staging_dir(&self) -> Result<PathBuf, DataError> {
        let p = self
            .root
            .join("tmp")
            .join(format!("import-{}", unique_suffix()));
        std::fs::create_dir_all(&p)
            .map_err(|e| DataError::io(format!("creating {}", p.display()), e))?;
        Ok(p)
    }

    /// Registers the complete Zarr store assembled in `dir` (a [`Library::staging_dir`]) as
    /// the newest version of `name`, byte for byte, as it was recorded elsewhere (a bundle's
    /// data set): the store must hash ([`hash_store`]) to `record.version`. `record` becomes
    /// the history entry (its `stored_bytes` recomputed). `dir` is moved into
    /// `ROOT/versions/`, or removed when that version is stored already; on any error it is
    /// removed and nothing is registered.
    ///
    /// # Errors
    /// [`DataError::InvalidName`]; [`DataError::Corrupt`] when the store is not the version
    /// recorded; [`DataError::Metadata`] for a `dir` outside `ROOT/tmp/` or with other than
    /// files and folders; [`DataError::Io`].
    pub fn adopt(
        &self,
        name: &str,
        dir: &Path,
        record: VersionRecord,
    ) -> Result<Version, DataError> {
        let _span = tracing::info_span!("adopt", name, version = %record.version).entered();
        let tmp = TempDir(Some(dir.to_path_buf()));
        validate_name(name)?;
        if dir.parent() != Some(self.root.join("tmp").as_path()) {
            return Err(DataError::Metadata {
                path: dir.to_path_buf(),
                message: "not a staging folder of this library".into(),
            });
        }
        let id = hash_store(dir)?;
        if id != record.version {
            return Err(DataError::Corrupt {
                name: name.to_string(),
                version: record.version,
                actual: id,
            });
        }
        let stored_bytes = dir_size(dir)?;
        self.register(name, tmp, &id, || VersionRecord {
            stored_bytes,
            ..record
        })
    }

    /// Moves the complete store `tmp` (under `ROOT/tmp/`, hashing to `id`) to
    /// `ROOT/versions/<id>`, or drops it when that version is stored already, and appends the
    /// version `record` makes to `name`'s history unless it is the newest already. If the
    /// history cannot be written, a store this call put in place is removed again.
    fn register(
        &self,
        name: &str,
        mut tmp: TempDir,
        id: &str,
        record: impl FnOnce() -> VersionRecord,
    ) -> Result<Version, DataError> {
        let Some(tmp_path) = tmp.0.clone() else {
            return Err(DataError::Metadata {
                path: self.root.join("tmp"),
                message: "no store to register".into(),
            });
        };
        let dest = self.version_path(id);

        let _lock = self.lock()?;
        let mut created = false;
        if dest.exists() {
            tracing::info!(version = %id, "identical content already stored");
        } else {
            match std::fs::rename(&tmp_path, &dest) {
                Ok(()) => {
                    tmp.0 = None;
                    created = true;
                }
                Err(_) if dest.exists() => {}
                Err(e) => {
                    return Err(DataError::io(
                        format!("moving the store to {}", dest.display()),
                        e,
                    ))
                }
            }
        }
        drop(tmp);
        let registered = (|| {
            let mut nf = self.read_name(name)?.unwrap_or_else(|| NameFile {
                name: name.to_string(),
                versions: Vec::new(),
            });
            Ok(match nf.versions.last() {
                Some(last) if last.version == id => last.clone(),
                _ => {
                    let r = record();
                    nf.versions.push(r.clone());
                    self.write_name(&nf)?;
                    r
                }
            })
        })();
        let record = match registered {
            Ok(r) => r,
            Err(e) => {
                // Not registered (e.g. the disk is full): a store this call put in place goes
                // too (nobody else can reference it: the lock is held).
                if created {
                    let _ = self.delete_store(id);
                }
                return Err(e);
            }
        };
        Ok(Version {
            name: name.to_string(),
            record,
            path: dest,
        })
    }

    /// Deletes a version's store if it exists: renamed into `tmp/` first (readers see the
    /// whole store or none of it), then removed. Returns whether it existed.
    fn delete_store(&self, id: &str) -> Result<bool, DataError> {
        let p = self.version_path(id);
        if !p.exists() {
            return Ok(false);
        }
        let trash = self
            .root
            .join("tmp")
            .join(format!("rm-{}", unique_suffix()));
        std::fs::rename(&p, &trash)
            .map_err(|e| DataError::io(format!("removing {}", p.display()), e))?;
        std::fs::remove_dir_all(&trash)
            .map_err(|e| DataError::io(format!("removing {}", trash.display()), e))?;
        Ok(true)
    }

    /// The history of `name`, oldest first.
    ///
    /// # Errors
    /// [`DataError::InvalidName`], [`DataError::UnknownName`], [`DataError::Metadata`].
    pub fn history(&self, name: &str) -> Result<Vec<Version>, DataError> {
        validate_name(name)?;
        let nf = self
            .read_name(name)?
            .ok_or_else(|| DataError::UnknownName(name.to_string()))?;
        Ok(nf
            .versions
            .into_iter()
            .map(|r| Version {
                name: name.to_string(),
                path: self.version_path(&r.version),
                record: r,
            })
            .collect())
    }

    /// Resolves `NAME` (its newest version) or `NAME@HEXPREFIX` (the version of that name
    /// whose id starts with the prefix).
    ///
    /// # Errors
    /// [`DataError::InvalidName`], [`DataError::UnknownName`], [`DataError::UnknownVersion`],
    /// [`DataError::AmbiguousVersion`] (listing every match).
    pub fn resolve(&self, spec: &str) -> Result<Version, DataError> {
        let (name, prefix) = parse_spec(spec)?;
        let mut hist = self.history(name)?;
        match prefix {
            None => hist
                .pop()
                .ok_or_else(|| DataError::UnknownName(name.to_string())),
            Some(prefix) => {
                // The newest entry of each matching id.
                let mut matches: Vec<Version> = Vec::new();
                for v in hist.into_iter().rev() {
                    if v.id().starts_with(&prefix) && !matches.iter().any(|m| m.id() == v.id()) {
                        matches.push(v);
                    }
                }
                match matches.len() {
                    0 => Err(DataError::UnknownVersion {
                        name: name.to_string(),
                        prefix,
                    }),
                    1 => Ok(matches.remove(0)),
                    _ => Err(DataError::AmbiguousVersion {
                        name: name.to_string(),
                        prefix,
                        matches: matches.iter().map(|m| m.id().to_string()).collect(),
                    }),
                }
            }
        }
    }

    /// Every name with its newest version, sorted by name.
    ///
    /// # Errors
    /// [`DataError::Io`], [`DataError::Metadata`].
    pub fn ls(&self) -> Result<Vec<NameSummary>, DataError> {
        let mut out = Vec::new();
        for n in self.all_names()? {
            if let Some(nf) = self.read_name(&n)? {
                if let Some(newest) = nf.versions.last() {
                    out.push(NameSummary {
                        name: n,
                        newest: newest.clone(),
                        versions: nf.versions.len(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Re-hashes the version's store and compares with its id.
    ///
    /// # Errors
    /// [`DataError::Corrupt`] naming the version if the content changed; resolution errors as
    /// in [`Library::resolve`].
    pub fn verify(&self, spec: &str) -> Result<Version, DataError> {
        let _span = tracing::info_span!("verify", spec).entered();
        let v = self.resolve(spec)?;
        let actual = hash_store(&v.path)?;
        if actual != v.id() {
            return Err(DataError::Corrupt {
                name: v.name.clone(),
                version: v.id().to_string(),
                actual,
            });
        }
        Ok(v)
    }

    /// Describes a version: variables, dimensions, shapes, types, chunking, codecs,
    /// attributes, sizes, and min/mean/max of each variable (read chunk by chunk, CF-decoded:
    /// missing values and NaN ignored, `scale_factor`/`add_offset` applied).
    ///
    /// # Errors
    /// Resolution errors as in [`Library::resolve`]; [`DataError::Zarr`] or
    /// [`DataError::Metadata`] if the store cannot be read.
    pub fn inspect(&self, spec: &str) -> Result<Inspection, DataError> {
        let _span = tracing::info_span!("inspect", spec).entered();
        let v = self.resolve(spec)?;
        inspect::inspect(&v)
    }

    /// Removes `NAME` (its whole history) or `NAME@HEXPREFIX` (that version from the history;
    /// the name goes when its history is empty). A version's store is deleted when no name
    /// references it any more.
    ///
    /// # Errors
    /// Resolution errors as in [`Library::resolve`]; [`DataError::Io`].
    pub fn rm(&self, spec: &str) -> Result<Removed, DataError> {
        let _span = tracing::info_span!("rm", spec).entered();
        let (name, prefix) = parse_spec(spec)?;
        let _lock = self.lock()?;
        let mut nf = self
            .read_name(name)?
            .ok_or_else(|| DataError::UnknownName(name.to_string()))?;
        let removed: Vec<String> = match prefix {
            None => {
                let p = self.name_path(name);
                std::fs::remove_file(&p)
                    .map_err(|e| DataError::io(format!("removing {}", p.display()), e))?;
                let mut ids: Vec<String> = Vec::new();
                for r in &nf.versions {
                    if !ids.contains(&r.version) {
                        ids.push(r.version.clone());
                    }
                }
                ids
            }
            Some(_) => {
                let id = self.resolve(spec)?.record.version;
                nf.versions.retain(|r| r.version != id);
                if nf.versions.is_empty() {
                    let p = self.name_path(name);
                    std::fs::remove_file(&p)
                        .map_err(|e| DataError::io(format!("removing {}", p.display()), e))?;
                } else {
                    self.write_name(&nf)?;
                }
                vec![id]
            }
        };
        let mut referenced = std::collections::HashSet::new();
        for n in self.all_names()? {
            if let Some(nf) = self.read_name(&n)? {
                referenced.extend(nf.versions.into_iter().map(|r| r.version));
            }
        }
        let mut deleted = Vec::new();
        for id in &removed {
            if referenced.contains(id) || deleted.contains(id) {
                continue;
            }
            if self.delete_store(id)? {
                deleted.push(id.clone());
            }
        }
        Ok(Removed {
            unregistered: removed,
            deleted,
        })
    }

    /// Renders a 2-D slice of variable `var` of a version as a PNG image at `path`:
    /// the variable's dimensions not in `at` must be exactly two (rows: the first, columns:
    /// the second); `at` fixes every other dimension to an index (length-1 dimensions not in
    /// `at` are fixed at 0). Rows are drawn north up when the row coordinate is an increasing
    /// latitude/Y axis. Each data cell is a square of 1 to 16 pixels. Colours: viridis over the
    /// slice's valid range; missing values (CF `_FillValue`/`missing_value`, NaN) light grey;
    /// a legend with the range and `units`.
    ///
    /// # Errors
    /// [`DataError::UnknownVariable`], [`DataError::Render`] (a bad selection, nothing valid to
    /// show), [`DataError::Io`] (writing the file), resolution errors.
    pub fn render_png(
        &self,
        spec: &str,
        var: &str,
        at: &[(String, usize)],
        path: &Path,
    ) -> Result<Quicklook, DataError> {
        let v = self.resolve(spec)?;
        quicklook::render(&v, spec, var, at, path)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_indices_follow_c_order() {
        let all: Vec<Vec<u64>> = super::chunk_indices(&[3, 5], &[2, 2]).collect();
        assert_eq!(
            all,
            vec![
                vec![0, 0],
                vec![0, 1],
                vec![0, 2],
                vec![1, 0],
                vec![1, 1],
                vec![1, 2]
            ]
        );
        assert_eq!(super::chunk_indices(&[0, 5], &[1, 1]).count(), 0);
        assert_eq!(
            super::chunk_indices(&[], &[]).collect::<Vec<_>>(),
            vec![Vec::<u64>::new()]
        );
    }

    use super::*;

    #[test]
    fn names() {
        for ok in ["sst", "a.b-c_d", "X1", &"a".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("sst").unwrap(), ("sst", None));
        assert_eq!(
            parse_spec("sst@AB12").unwrap(),
            ("sst", Some("ab12".into()))
        );
        assert!(parse_spec("sst@").is_err());
        assert!(parse_spec("sst@xyz").is_err());
        assert!(parse_spec("a/b@12").is_err());
    }

    #[test]
    fn codec_parse() {
        assert_eq!("zstd".parse::<Codec>().unwrap(), Codec::Zstd { level: 3 });
        assert_eq!("gzip:9".parse::<Codec>().unwrap(), Codec::Gzip { level: 9 });
        assert_eq!("none".parse::<Codec>().unwrap(), Codec::None);
        assert!("lz4".parse::<Codec>().is_err());
        assert!("zstd:0".parse::<Codec>().is_err());
    }
}
