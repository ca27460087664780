//! The bundle's tar framing: a writer whose blobs are named by their sha256 while they stream,
//! and a strict reader that checks every byte.
//!
//! Entries are ustar regular files, owner 0:0, mode 0644, one fixed mtime, in the order they
//! were added. Every name fits ustar's 100-byte field (blobs are `blobs/sha256/<64 hex>`), so
//! there are no extension headers. The last entry is [`SEAL`]: `sha256:<hex>\n`, the sha256 of
//! every header block before it, in order, followed by the contents of [`BERTH_MANIFEST`]. The
//! manifest lists the sha256 of every other entry, blobs are named by theirs, and the reader
//! checks that padding and the end-of-archive blocks are zeros: so every byte of the file is
//! covered.
//!
//! Blobs whose digests are known before they arrive (an image's layers, by their diff ids, and
//! its config, by its id) can be given an order with [`BundleWriter::expect_order`]: they are
//! then written in that order whatever order they arrive in. Docker's own archive names the
//! files of a layer that several images share after whichever image the engine happened to
//! visit first, so its order changes from one `docker save` to the next. A blob that comes
//! before its turn waits in memory when it fits the writer's budget
//! ([`BundleWriter::set_memory_budget`]), else in a spill file; with the expected sizes
//! ([`BundleWriter::expect_sizes`]) a large blob that is not the next one goes straight to the
//! spill file instead of being written in place and moved.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::BundleError;

/// The name of berth's manifest inside the file.
pub const BERTH_MANIFEST: &str = "berth.json";
/// The name of the seal entry, the file's last.
pub const SEAL: &str = "berth.seal";
/// The folder of content-addressed blobs (OCI image layout).
pub const BLOBS: &str = "blobs/sha256/";

const BLOCK: usize = 512;

/// Copies `r` into `w`, hashing what passes, and calling `progress` with the bytes so far.
fn copy_hashed(
    r: &mut dyn Read,
    w: &mut dyn Write,
    hasher: &mut Sha256,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        total += n as u64;
        progress(total);
    }
}

/// Bytes written between two requests to the kernel to start writing the file back.
const WRITEBACK: u64 = 64 << 20;

/// Asks the kernel to start writing `len` bytes of `f` from `offset` to disk, without
/// waiting (Linux `sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`): the disk works while the
/// engine's archive streams, and the final fsync finds little left. Only a hint: errors are
/// ignored (the fsync at the end reports them).
fn start_writeback(f: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a file descriptor `f` keeps open; no memory is
        // passed.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

/// The bundle file as blobs stream into it: starts the writeback every [`WRITEBACK`] bytes.
struct Writeback<'a> {
    out: &'a mut BufWriter<File>,
    /// The file offset the next byte goes to.
    at: u64,
    /// Where the writeback was last asked up to.
    synced: &'a mut u64,
}

impl Write for Writeback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.at += n as u64;
        if self.at >= *self.synced + WRITEBACK {
            self.out.flush()?;
            start_writeback(self.out.get_ref(), *self.synced, self.at - *self.synced);
            *self.synced = self.at;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `path` with `suffix` appended to its file name (`b.tar` → `b.tar.partial`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates (or empties) the file at `path` for reading and writing.
fn create_rw(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn header(path: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// One entry written: its path, sha256 (hex) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Path inside the file.
    pub path: String,
    /// sha256 of the content, 64 hex digits.
    pub sha256: String,
    /// Size of the content in bytes.
    pub bytes: u64,
}

/// Writes a bundle to `PATH.partial`, renamed to `PATH` by [`BundleWriter::finish`]; dropped
/// unfinished (an error, a full disk, an interrupt), the partial file is removed.
pub struct BundleWriter {
    out: BufWriter<File>,
    path: PathBuf,
    partial: PathBuf,
    pos: u64,
    mtime: u64,
    headers: Vec<[u8; BLOCK]>,
    blobs: HashSet<String>,
    /// The order blobs with these digests are written in; `next` is the first not written yet.
    order: Vec<String>,
    next: usize,
    /// Approximate sizes in bytes of blobs of `order` (see [`BundleWriter::expect_sizes`]).
    hints: HashMap<String, u64>,
    /// Blobs that came before their turn, by sha256.
    waiting: HashMap<String, Waiting>,
    spill: Option<(PathBuf, File)>,
    /// Bytes of waiting blobs held in memory now, and the most that may be.
    memory: u64,
    budget: u64,
    /// Bytes that went through the spill file.
    waited: u64,
    /// Where the kernel was last asked to write back up to (see [`start_writeback`]).
    synced: u64,
    done: bool,
}

/// A blob that came before its turn.
enum Waiting {
    /// Held in memory.
    Memory(Vec<u8>),
    /// In the spill file: offset and size in bytes.
    Spill(u64, u64),
}

/// The memory budget of a new writer for blobs that wait (bytes): 512 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 512 << 20;

/// Whether a blob of `size` bytes may be the one expected at about `hint` bytes: the engine's
/// layer sizes (content bytes) are a little below the tar stream's (headers and padding).
fn near(size: u64, hint: u64) -> bool {
    size.abs_diff(hint) <= hint / 4 + (1 << 20)
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .finish()
    }
}

impl BundleWriter {
    /// Starts a bundle at `path`; every entry gets `mtime` (Unix seconds).
    ///
    /// # Errors
    /// [`BundleError::Io`] when the partial file cannot be created.
    pub fn create(path: &Path, mtime: u64) -> Result<Self, BundleError> {
        let partial = sibling(path, ".partial");
        // Read too: a blob that comes before its turn is copied back out (see `expect_order`).
        let file = create_rw(&partial).map_err(|e| BundleError::io(&partial, e))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            partial,
            pos: 0,
            mtime,
            headers: Vec::new(),
            blobs: HashSet::new(),
            order: Vec::new(),
            next: 0,
            hints: HashMap::new(),
            waiting: HashMap::new(),
            spill: None,
            memory: 0,
            budget: DEFAULT_MEMORY_BUDGET,
            waited: 0,
            synced: 0,
            done: false,
        })
    }

    /// Blobs with these sha256 digests (hex), whenever they are added, are written in this
    /// order: one that comes before its turn waits (in memory within the budget, else in a
    /// spill file beside the bundle, `PATH.spill`, removed when the writer is done or dropped)
    /// until the blobs before it are written. Blobs not in the list wait too, and are written
    /// by [`BundleWriter::flush_waiting`] in digest order.
    pub fn expect_order(&mut self, digests: Vec<String>) {
        self.order = digests;
        self.next = self
            .order
            .iter()
            .position(|d| !self.blobs.contains(d))
            .unwrap_or(self.order.len());
    }

    /// The approximate sizes (bytes) of expected blobs, sha256 (hex) → bytes: a blob larger
    /// than the memory left whose size is far from the next expected one's (more than a
    /// quarter plus 1 MiB) is not that one, so it streams straight to the spill file. Only a
    /// hint: a wrong one costs time, never bytes of the result.
    pub fn expect_sizes(&mut self, sizes: HashMap<String, u64>) {
        self.hints = sizes;
    }

    /// The most bytes of waiting blobs held in memory at once ([`DEFAULT_MEMORY_BUDGET`]
    /// unless set); 0 sends every waiting blob to the spill file.
    pub fn set_memory_budget(&mut self, bytes: u64) {
        self.budget = bytes;
    }

    /// Writes every blob still waiting: those of [`BundleWriter::expect_order`]'s list in its
    /// order (skipping the ones that never came), then the others in digest order.
    ///
    /// # Errors
    /// [`BundleError::Io`].
    pub fn flush_waiting(&mut self) -> Result<(), BundleError> {
        let order = std::mem::take(&mut self.order);
        let mut rest: Vec<String> = self
            .waiting
            .keys()
            .filter(|k| !order.contains(k))
            .cloned()
            .collect();
        rest.sort();
        for sha in order.iter().skip(self.next).chain(rest.iter()) {
            self.write_waiting(sha)?;
        }
        self.next = 0;
        self.drop_spill();
        Ok(())
    }

    fn drop_spill(&mut self) {
        if let Some((path, _)) = self.spill.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The expected blob `sha` was just written: writes those that waited for it, in order.
    fn advance(&mut self) -> Result<(), BundleError> {
        self.next += 1;
        while let Some(sha) = self.order.get(self.next).cloned() {
            if self.blobs.contains(&sha) {
                self.next += 1;
            } else if self.waiting.contains_key(&sha) {
                self.write_waiting(&sha)?;
                self.next += 1;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// Writes the waiting blob `sha` (if it waits), from memory or the spill file. Its
    /// digest was computed as it arrived; the bundle's reader checks every blob again.
    fn write_waiting(&mut self, sha: &str) -> Result<(), BundleError> {
        match self.waiting.remove(sha) {
            None => Ok(()),
            Some(Waiting::Memory(buf)) => {
                self.memory -= buf.len() as u64;
                self.write_known(&mut &buf[..], buf.len() as u64, sha)
            }
            Some(Waiting::Spill(offset, size)) => {
                let Some((path, file)) = self.spill.as_mut() else {
                    return Ok(());
                };
                let path = path.clone();
                let mut f = file.try_clone().map_err(|e| BundleError::io(&path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| BundleError::io(&path, e))?;
                self.write_known(&mut f.take(size), size, sha)
            }
        }
    }

    /// The spill file, created on first use, positioned at its end: returns that offset.
    fn spill_end(&mut self) -> io::Result<(u64, &mut File)> {
        if self.spill.is_none() {
            let path = sibling(&self.path, ".spill");
            let f = create_rw(&path)?;
            self.spill = Some((path, f));
        }
        let Some((_, spill)) = self.spill.as_mut() else {
            return Err(io::Error::other("no spill file"));
        };
        let at = spill.seek(SeekFrom::End(0))?;
        Ok((at, spill))
    }

    /// Moves the blob just written at `start` (`size` bytes after its header) to the spill
    /// file, and takes it back from the bundle.
    fn move_to_spill(&mut self, sha: &str, start: u64, size: u64) -> io::Result<()> {
        self.out.flush()?;
        let mut src = self.out.get_ref().try_clone()?;
        let (at, spill) = self.spill_end()?;
        src.seek(SeekFrom::Start(start + BLOCK as u64))?;
        let n = io::copy(&mut (&mut src).take(size), spill)?;
        if n != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a blob is shorter on disk than written",
            ));
        }
        self.waiting
            .insert(sha.to_string(), Waiting::Spill(at, size));
        self.waited += size;
        self.truncate_to(start)
    }

    /// Takes back everything written from `start` on.
    fn truncate_to(&mut self, start: u64) -> io::Result<()> {
        self.out.flush()?;
        let f = self.out.get_mut();
        f.set_len(start)?;
        f.seek(SeekFrom::Start(start))?;
        self.pos = start;
        self.synced = self.synced.min(start);
        Ok(())
    }

    fn io(&self, e: io::Error) -> BundleError {
        BundleError::io(&self.path, e)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
            self.pos += (BLOCK - rem) as u64;
        }
        Ok(())
    }

    /// Adds a file with known content under `path`.
    ///
    /// # Errors
    /// [`BundleError::Io`] on a write error.
    pub fn add_file(&mut self, path: &str, data: &[u8]) -> Result<Written, BundleError> {
        let h = header(path, data.len() as u64, self.mtime).map_err(|e| self.io(e))?;
        let res: io::Result<()> = (|| {
            self.out.write_all(h.as_bytes())?;
            self.out.write_all(data)?;
            self.pos += BLOCK as u64 + data.len() as u64;
            self.pad(data.len() as u64)
        })();
        res.map_err(|e| self.io(e))?;
        self.headers.push(*h.as_bytes());
        Ok(Written {
            path: path.into(),
            sha256: hex::encode(Sha256::digest(data)),
            bytes: data.len() as u64,
        })
    }

    /// Adds `size` bytes read from `r` as a blob, `blobs/sha256/<its sha256>`: the header is
    /// written first with a placeholder name and rewritten once the content is hashed. A blob
    /// the file already holds is not written twice (the entry is taken back). `progress` gets
    /// the bytes read so far.
    ///
    /// # Errors
    /// [`BundleError::Io`]; [`BundleError::Invalid`] when `r` gives other than `size` bytes.
    pub fn add_blob(
        &mut self,
        r: &mut dyn Read,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Written, BundleError> {
        if self.order.is_empty() && self.waiting.is_empty() {
            return self.write_blob(r, size, progress);
        }
        let written = |sha: String| Written {
            path: format!("{BLOBS}{sha}"),
            sha256: sha,
            bytes: size,
        };
        // Small enough to wait in memory: read and hash it first.
        if size <= self.budget.saturating_sub(self.memory) {
            let mut buf = Vec::with_capacity(size as usize);
            let mut hasher = Sha256::new();
            let n = copy_hashed(r, &mut buf, &mut hasher, progress).map_err(|e| self.io(e))?;
            if n != size {
                return Err(short(size, n));
            }
            let sha = hex::encode(hasher.finalize());
            if self.has_blob(&sha) {
                return Ok(written(sha));
            }
            if self.order.get(self.next) == Some(&sha) {
                self.write_known(&mut &buf[..], size, &sha)?;
                self.advance()?;
            } else {
                self.memory += size;
                self.waiting.insert(sha.clone(), Waiting::Memory(buf));
            }
            return Ok(written(sha));
        }
        // Too large for memory, and by its size not the next expected one: to the spill file.
        let hint = self.order.get(self.next).and_then(|s| self.hints.get(s));
        if hint.is_some_and(|&h| !near(size, h)) {
            let (at, sha) = self.spill_blob(r, size, progress)?;
            if self.has_blob(&sha) {
                let res = self.spill_end().and_then(|(_, f)| f.set_len(at));
                res.map_err(|e| self.io(e))?;
                return Ok(written(sha));
            }
            self.waiting.insert(sha.clone(), Waiting::Spill(at, size));
            self.waited += size;
            if self.order.get(self.next) == Some(&sha) {
                // The hint was wrong.
                self.write_waiting(&sha)?;
                self.advance()?;
            }
            return Ok(written(sha));
        }
        // Likely the next one: written in place, moved to the spill file if it is not.
        let start = self.pos;
        let w = self.write_blob(r, size, progress)?;
        if self.pos == start || self.waiting.contains_key(&w.sha256) {
            // Taken back as a duplicate; or one already waiting.
            if self.pos != start {
                self.blobs.remove(&w.sha256);
                self.headers.pop();
                self.truncate_to(start).map_err(|e| self.io(e))?;
            }
            return Ok(w);
        }
        if self.order.get(self.next) == Some(&w.sha256) {
            self.advance()?;
            return Ok(w);
        }
        // Before its turn (or not in the order at all): it waits.
        self.blobs.remove(&w.sha256);
        self.headers.pop();
        self.move_to_spill(&w.sha256, start, size)
            .map_err(|e| self.io(e))?;
        Ok(w)
    }

    /// Streams `size` bytes of `r` to the end of the spill file, hashing them: returns the
    /// offset and the sha256 (hex).
    fn spill_blob(
        &mut self,
        r: &mut dyn Read,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(u64, String), BundleError> {
        let mut hasher = Sha256::new();
        let res: io::Result<(u64, u64)> = (|| {
            let (at, spill) = self.spill_end()?;
            let mut out = BufWriter::with_capacity(1 << 20, spill);
            let n = copy_hashed(r, &mut out, &mut hasher, progress)?;
            out.flush()?;
            Ok((at, n))
        })();
        let (at, n) = res.map_err(|e| self.io(e))?;
        if n != size {
            return Err(short(size, n));
        }
        Ok((at, hex::encode(hasher.finalize())))
    }

    /// Writes a blob whose sha256 (hex) is known where the file ends now.
    fn write_known(&mut self, r: &mut dyn Read, size: u64, sha: &str) -> Result<(), BundleError> {
        let path = format!("{BLOBS}{sha}");
        let h = header(&path, size, self.mtime).map_err(|e| self.io(e))?;
        let res: io::Result<u64> = (|| {
            self.out.write_all(h.as_bytes())?;
            let mut out = Writeback {
                out: &mut self.out,
                at: self.pos + BLOCK as u64,
                synced: &mut self.synced,
            };
            let n = io::copy(r, &mut out)?;
            self.pos += BLOCK as u64 + n;
            self.pad(size)?;
            Ok(n)
        })();
        let n = res.map_err(|e| self.io(e))?;
        if n != size {
            return Err(short(size, n));
        }
        self.blobs.insert(sha.to_string());
        self.headers.push(*h.as_bytes());
        Ok(())
    }

    /// Writes a blob where the file ends now (see [`BundleWriter::add_blob`]).
    fn write_blob(
        &mut self,
        r: &mut dyn Read,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Written, BundleError> {
        let start = self.pos;
        let placeholder = format!("{BLOBS}{}", "0".repeat(64));
        let h = header(&placeholder, size, self.mtime).map_err(|e| self.io(e))?;
        let mut hasher = Sha256::new();
        let res: io::Result<u64> = (|| {
            self.out.write_all(h.as_bytes())?;
            let mut out = Writeback {
                out: &mut self.out,
                at: start + BLOCK as u64,
                synced: &mut self.synced,
            };
            copy_hashed(r, &mut out, &mut hasher, progress)
        })();
        let n = res.map_err(|e| self.io(e))?;
        if n != size {
            return Err(short(size, n));
        }
        let sha = hex::encode(hasher.finalize());
        let path = format!("{BLOBS}{sha}");
        if !self.blobs.insert(sha.clone()) {
            // Already there: take the entry back.
            self.truncate_to(start).map_err(|e| self.io(e))?;
            return Ok(Written {
                path,
                sha256: sha,
                bytes: size,
            });
        }
        self.pos += BLOCK as u64 + size;
        let h = header(&path, size, self.mtime).map_err(|e| self.io(e))?;
        let res: io::Result<()> = (|| {
            self.pad(size)?;
            self.out.flush()?;
            let f = self.out.get_mut();
            f.seek(SeekFrom::Start(start))?;
            f.write_all(h.as_bytes())?;
            f.seek(SeekFrom::Start(self.pos))?;
            Ok(())
        })();
        res.map_err(|e| self.io(e))?;
        self.headers.push(*h.as_bytes());
        Ok(Written {
            path,
            sha256: sha,
            bytes: size,
        })
    }

    /// Adds a blob whose bytes are in memory.
    ///
    /// # Errors
    /// As [`BundleWriter::add_blob`].
    pub fn add_blob_bytes(&mut self, data: &[u8]) -> Result<Written, BundleError> {
        self.add_blob(&mut &data[..], data.len() as u64, &mut |_| {})
    }

    /// Whether the file already holds the blob with this sha256 (hex), or it waits for its
    /// turn.
    pub fn has_blob(&self, sha256: &str) -> bool {
        self.blobs.contains(sha256) || self.waiting.contains_key(sha256)
    }

    /// Bytes of blobs that came before their turn and waited in the spill file (not those
    /// that waited in memory), so far.
    pub fn waited_bytes(&self) -> u64 {
        self.waited
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.pos
    }

    /// Writes berth's manifest and the seal, ends the archive, syncs, and renames the partial
    /// file to its name. Returns the file's size in bytes and the bundle's digest (the seal's
    /// sha256, 64 hex digits: see [`Scan::digest`]).
    ///
    /// # Errors
    /// [`BundleError::Io`].
    pub fn finish(mut self, manifest: &[u8]) -> Result<(u64, String), BundleError> {
        self.flush_waiting()?;
        self.add_file(BERTH_MANIFEST, manifest)?;
        let seal = seal(&self.headers, manifest);
        self.add_file(SEAL, seal.as_bytes())?;
        let res: io::Result<()> = (|| {
            self.out.write_all(&[0u8; 2 * BLOCK])?;
            self.pos += 2 * BLOCK as u64;
            self.out.flush()?;
            self.out.get_ref().sync_all()?;
            std::fs::rename(&self.partial, &self.path)
        })();
        res.map_err(|e| self.io(e))?;
        self.done = true;
        Ok((
            self.pos,
            seal.trim().trim_start_matches("sha256:").to_string(),
        ))
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        self.drop_spill();
        if !self.done {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// A blob that gave other than the bytes it announced.
fn short(size: u64, n: u64) -> BundleError {
    BundleError::Invalid(format!("a blob announced {size} bytes and gave {n}"))
}

/// The seal's content: `sha256:<hex>\n` over `headers` then `manifest`.
fn seal(headers: &[[u8; BLOCK]], manifest: &[u8]) -> String {
    let mut h = Sha256::new();
    for b in headers {
        h.update(b);
    }
    h.update(manifest);
    format!("sha256:{}\n", hex::encode(h.finalize()))
}

/// One entry as the reader found it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path inside the file.
    pub path: String,
    /// Offset of the content from the file's start, in bytes.
    pub offset: u64,
    /// Size of the content in bytes.
    pub bytes: u64,
    /// sha256 of the content, 64 hex digits.
    pub sha256: String,
}

/// What a strict read of a whole bundle found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Every entry, in file order.
    pub entries: Vec<Entry>,
    /// The bytes of berth's manifest.
    pub manifest: Vec<u8>,
    /// The bundle's digest, 64 hex digits: the seal's sha256, over every tar header and
    /// `berth.json`, which lists the sha256 of every other part. Two bundles with the same
    /// digest hold the same bytes (headers, parts, padding, which must be zeros), as
    /// byte-identical exports do.
    pub digest: String,
    /// The file's size in bytes.
    pub bytes: u64,
}

/// A reader that counts what it reads.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Counting<R> {
    fn exact(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += got as u64;
        if got == 0 {
            return Ok(false);
        }
        if got < buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated"));
        }
        Ok(true)
    }
}

/// Reads the whole file at `path`, checking its framing: ustar headers with good checksums,
/// zero padding, the seal last, and nothing but zero blocks after it. Every entry's sha256 is
/// computed; comparing them with the manifest is [`crate::verify`]'s job. `progress` gets the
/// bytes read so far.
///
/// # Errors
/// [`BundleError::NotABundle`] for a file that is no tar or has no seal;
/// [`BundleError::Truncated`]; [`BundleError::Corrupt`] naming the part whose bytes are wrong.
pub fn scan(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Scan, BundleError> {
    let file = File::open(path).map_err(|e| BundleError::io(path, e))?;
    let size = file.metadata().map_err(|e| BundleError::io(path, e))?.len();
    let mut r = Counting {
        inner: io::BufReader::with_capacity(1 << 20, file),
        pos: 0,
    };
    let ioerr = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BundleError::Truncated
        } else {
            BundleError::io(path, e)
        }
    };
    let mut entries = Vec::new();
    let mut later: Vec<usize> = Vec::new();
    let mut headers: Vec<[u8; BLOCK]> = Vec::new();
    let mut manifest = Vec::new();
    let mut sealed: Option<String> = None;
    let mut block = [0u8; BLOCK];
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let got = r.exact(&mut block).map_err(|e| match ioerr(e) {
            // Less than one block: no tar file at all.
            BundleError::Truncated if entries.is_empty() => {
                BundleError::NotABundle("it is not a tar file".into())
            }
            other => other,
        })?;
        if !got {
            // End of file without the two zero blocks.
            return Err(if entries.is_empty() {
                BundleError::NotABundle("the file is empty".into())
            } else {
                BundleError::Truncated
            });
        }
        if block.iter().all(|&b| b == 0) {
            break;
        }
        if sealed.is_some() {
            return Err(BundleError::Corrupt("data after the seal".into()));
        }
        let header_block = block;
        let h = tar::Header::from_byte_slice(&header_block);
        let what = || {
            if entries.is_empty() {
                BundleError::NotABundle("it is not a tar file".into())
            } else {
                BundleError::Corrupt(format!(
                    "the tar header after {}",
                    entries.last().map_or("", |e: &Entry| e.path.as_str())
                ))
            }
        };
        let ok_sum = h.cksum().ok() == Some(checksum(&block));
        if ok_sum && entries.is_empty() && canonical_first(h).is_none() {
            // A tar file, but not one berth wrote.
            return Err(foreign(path));
        }
        if !ok_sum || h.as_ustar().is_none() {
            return Err(what());
        }
        if h.entry_type() != tar::EntryType::Regular {
            return Err(what());
        }
        let name = h.path().map_err(|_| what())?.to_string_lossy().into_owned();
        let len = h.size().map_err(|_| what())?;
        // Only the headers this writer makes: every byte of each one is then fixed by its
        // path, size and mtime (a flipped byte in a field tar readers ignore is caught too).
        let mtime = h.mtime().map_err(|_| what())?;
        let canonical = header(&name, len, mtime).map_err(|_| what())?;
        if canonical.as_bytes() != &header_block {
            return Err(what());
        }
        let offset = r.pos;
        let mut hasher = Sha256::new();
        let mut left = len;
        let keep = name == BERTH_MANIFEST || name == SEAL;
        if keep && len > 64 << 20 {
            return Err(BundleError::Corrupt(format!("{name} is {len} bytes")));
        }
        let mut kept = Vec::new();
        // Large parts are hashed afterwards, on every core; here they are skipped.
        let deferred = !keep && len >= DEFER_BYTES;
        if deferred {
            r.inner
                .seek_relative(len as i64)
                .map_err(|e| BundleError::io(path, e))?;
            r.pos += len;
            left = 0;
            later.push(entries.len());
        }
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if !r.exact(&mut buf[..n]).map_err(ioerr)? {
                return Err(BundleError::Truncated);
            }
            hasher.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            left -= n as u64;
            progress(r.pos);
        }
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            let mut padding = [0u8; BLOCK];
            let pad = &mut padding[..BLOCK - rem];
            if !r.exact(pad).map_err(ioerr)? {
                return Err(BundleError::Truncated);
            }
            if pad.iter().any(|&b| b != 0) {
                return Err(BundleError::Corrupt(format!("the padding after {name}")));
            }
        }
        if name == SEAL {
            sealed = Some(String::from_utf8_lossy(&kept).into_owned());
        } else {
            headers.push(*h.as_bytes());
            if name == BERTH_MANIFEST {
                manifest = kept;
            }
        }
        entries.push(Entry {
            path: name,
            offset,
            bytes: len,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    // The end of the archive: zero blocks only, to the end of the file.
    loop {
        let n = buf.len().min(1 << 16);
        let got = {
            let mut got = 0;
            while got < n {
                match r.inner.read(&mut buf[got..n]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(BundleError::io(path, e)),
                }
            }
            got
        };
        if got == 0 {
            break;
        }
        r.pos += got as u64;
        if buf[..got].iter().any(|&b| b != 0) {
            return Err(BundleError::Corrupt("the end of the archive".into()));
        }
    }
    let Some(sealed) = sealed else {
        return Err(if entries.iter().any(|e| e.path == "manifest.json") {
            BundleError::NotABundle(
                "it is an image archive from docker save: load it with docker load".into(),
            )
        } else {
            BundleError::NotABundle("it has no berth seal".into())
        });
    };
    if manifest.is_empty() && !entries.iter().any(|e| e.path == BERTH_MANIFEST) {
        return Err(BundleError::NotABundle("it has no berth.json".into()));
    }
    if r.pos != size {
        return Err(BundleError::Truncated);
    }
    hash_parts(path, &mut entries, &later, progress)?;
    let expected = seal(&headers, &manifest);
    if expected != sealed {
        return Err(BundleError::Corrupt(
            "berth.json or a tar header (the seal does not match)".into(),
        ));
    }
    Ok(Scan {
        entries,
        manifest,
        digest: expected.trim().trim_start_matches("sha256:").to_string(),
        bytes: size,
    })
}

/// Parts at least this large (bytes) are hashed after the framing is read, in parallel.
const DEFER_BYTES: u64 = 4 << 20;

/// Hashes the content of `entries[i]` for each `i` in `which`, on as many threads as there are
/// cores (each reading its own share of the file), and stores the sha256 in each entry.
/// `progress` gets the bytes hashed so far.
fn hash_parts(
    path: &Path,
    entries: &mut [Entry],
    which: &[usize],
    progress: &mut dyn FnMut(u64),
) -> Result<(), BundleError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    if which.is_empty() {
        return Ok(());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(which.len());
    // Largest first, each to the least loaded thread.
    let mut order: Vec<usize> = which.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(entries[i].bytes));
    let mut shares: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for i in order {
        let s = shares
            .iter_mut()
            .min_by_key(|s| s.0)
            .expect("one thread at least");
        s.0 += entries[i].bytes;
        s.1.push(i);
    }
    let done = AtomicU64::new(0);
    let snapshot: Vec<(u64, u64)> = entries.iter().map(|e| (e.offset, e.bytes)).collect();
    let results: Vec<Result<Vec<(usize, String)>, BundleError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|(_, share)| {
                let (done, snapshot) = (&done, &snapshot);
                scope.spawn(move || -> Result<Vec<(usize, String)>, BundleError> {
                    let mut f = File::open(path).map_err(|e| BundleError::io(path, e))?;
                    let mut buf = vec![0u8; 1 << 20];
                    let mut out = Vec::new();
                    for &i in share {
                        let (offset, bytes) = snapshot[i];
                        f.seek(SeekFrom::Start(offset))
                            .map_err(|e| BundleError::io(path, e))?;
                        let mut h = Sha256::new();
                        let mut left = bytes;
                        while left > 0 {
                            let n = left.min(buf.len() as u64) as usize;
                            f.read_exact(&mut buf[..n]).map_err(|e| {
                                if e.kind() == io::ErrorKind::UnexpectedEof {
                                    BundleError::Truncated
                                } else {
                                    BundleError::io(path, e)
                                }
                            })?;
                            h.update(&buf[..n]);
                            left -= n as u64;
                            done.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        out.push((i, hex::encode(h.finalize())));
                    }
                    Ok(out)
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            progress(done.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BundleError::Invalid("a hashing thread failed".into())))
            })
            .collect()
    });
    for r in results {
        for (i, sha) in r? {
            entries[i].sha256 = sha;
        }
    }
    Ok(())
}

/// `Some(())` when `h` is a header this writer makes (a regular ustar file).
fn canonical_first(h: &tar::Header) -> Option<()> {
    let name = h.path().ok()?.to_string_lossy().into_owned();
    let c = header(&name, h.size().ok()?, h.mtime().ok()?).ok()?;
    (c.as_bytes() == h.as_bytes()).then_some(())
}

/// What a tar file that berth did not write is, as an error.
fn foreign(path: &Path) -> BundleError {
    let names: Vec<String> = File::open(path)
        .ok()
        .map(|f| {
            let mut a = tar::Archive::new(f);
            a.entries()
                .map(|es| {
                    es.filter_map(|e| e.ok())
                        .filter_map(|e| e.path().ok().map(|p| p.to_string_lossy().into_owned()))
                        .take(100_000)
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    if names.iter().any(|n| n == "manifest.json") {
        BundleError::NotABundle(
            "it is an image archive from docker save: load it with docker load".into(),
        )
    } else {
        BundleError::NotABundle("it is a tar file that berth did not write".into())
    }
}

/// The ustar header checksum of `block` (the checksum field counted as spaces).
fn checksum(block: &[u8; BLOCK]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum()
}

/// Copies the content of `entry` of the file at `path` into `w`.
///
/// # Errors
/// [`BundleError::Io`].
pub fn copy_entry(path: &Path, entry: &Entry, w: &mut dyn Write) -> Result<(), BundleError> {
    let mut f = File::open(path).map_err(|e| BundleError::io(path, e))?;
    f.seek(SeekFrom::Start(entry.offset))
        .map_err(|e| BundleError::io(path, e))?;
    let mut r = f.take(entry.bytes);
    io::copy(&mut r, w).map_err(|e| BundleError::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, blobs: &[&[u8]]) -> PathBuf {
        let p = dir.join("b.tar");
        let mut w = BundleWriter::create(&p, 1_700_000_000).unwrap();
        w.add_file("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}")
            .unwrap();
        for b in blobs {
            w.add_blob(&mut &b[..], b.len() as u64, &mut |_| {})
                .unwrap();
        }
        w.finish(b"{\"format\":1}").unwrap();
        p
    }

    #[test]
    fn blobs_are_named_by_their_digest_and_duplicates_are_taken_back() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &[b"hello", b"world!", b"hello"]);
        let s = scan(&p, &mut |_| {}).unwrap();
        let names: Vec<&str> = s.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        for e in &s.entries {
            if let Some(h) = e.path.strip_prefix(BLOBS) {
                assert_eq!(h, e.sha256);
            }
        }
        assert_eq!(s.manifest, b"{\"format\":1}");
        // The system's tar reads it too.
        let mut a = tar::Archive::new(File::open(&p).unwrap());
        assert_eq!(a.entries().unwrap().count(), 5);
        // Same input, same bytes.
        let d2 = tempfile::tempdir().unwrap();
        let p2 = write(d2.path(), &[b"hello", b"world!", b"hello"]);
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    }

    #[test]
    fn large_parts_are_hashed_in_parallel_and_a_changed_byte_shows() {
        let d = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        let p = write(d.path(), &[&big, &big[..5 << 20], b"small"]);
        let s = scan(&p, &mut |_| {}).unwrap();
        let blobs: Vec<&Entry> = s
            .entries
            .iter()
            .filter(|e| e.path.starts_with(BLOBS))
            .collect();
        assert_eq!(blobs.len(), 3);
        for e in &blobs {
            assert_eq!(e.path.strip_prefix(BLOBS), Some(e.sha256.as_str()));
        }
        let mut bytes = std::fs::read(&p).unwrap();
        let at = (blobs[0].offset + (7 << 20)) as usize;
        bytes[at] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let s = scan(&p, &mut |_| {}).unwrap();
        let e = &s.entries[1];
        assert_ne!(e.path.strip_prefix(BLOBS), Some(e.sha256.as_str()));
    }

    #[test]
    fn blobs_in_an_expected_order_are_written_in_it_whatever_order_they_come_in() {
        let d = tempfile::tempdir().unwrap();
        let blobs: [&[u8]; 4] = [b"one", b"two", b"three", b"four"];
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        let order: Vec<String> = blobs.iter().map(|b| sha(b)).collect();
        // Waiting in memory; in the spill file, moved there after being written in place (no
        // size hints, or near ones); streamed there straight (hints far from every size, so the
        // expected one is found in the spill file too).
        let hints = |bytes: Option<u64>| -> HashMap<String, u64> {
            blobs
                .iter()
                .map(|b| (sha(b), bytes.unwrap_or(b.len() as u64)))
                .collect()
        };
        let ways = [
            (DEFAULT_MEMORY_BUDGET, HashMap::new()),
            (0, HashMap::new()),
            (0, hints(None)),
            (0, hints(Some(10 << 20))),
        ];
        let mut files = Vec::new();
        for (way, (budget, sizes)) in ways.iter().enumerate() {
            for (k, arrival) in [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]]
                .iter()
                .enumerate()
            {
                let p = d.path().join(format!("{way}-{k}.tar"));
                let mut w = BundleWriter::create(&p, 1_700_000_000).unwrap();
                w.set_memory_budget(*budget);
                w.expect_order(order.clone());
                w.expect_sizes(sizes.clone());
                for &i in arrival {
                    w.add_blob(&mut &blobs[i][..], blobs[i].len() as u64, &mut |_| {})
                        .unwrap();
                }
                // One not in the order, and a duplicate of one that waits.
                w.add_blob_bytes(b"extra").unwrap();
                w.add_blob_bytes(b"four").unwrap();
                if *budget > 0 {
                    assert_eq!(w.waited_bytes(), 0, "way {way}: all waited in memory");
                } else if k > 0 {
                    assert!(w.waited_bytes() > 0, "way {way}: some waited on disk");
                }
                w.finish(b"{}").unwrap();
                assert!(!sibling(&p, ".spill").exists());
                files.push(p);
            }
        }
        let bytes = std::fs::read(&files[0]).unwrap();
        for f in &files[1..] {
            assert_eq!(bytes, std::fs::read(f).unwrap(), "{}", f.display());
        }
        let s = scan(&files[0], &mut |_| {}).unwrap();
        let names: Vec<String> = s
            .entries
            .iter()
            .filter_map(|e| e.path.strip_prefix(BLOBS).map(str::to_string))
            .collect();
        let mut want = order.clone();
        want.push(sha(b"extra"));
        assert_eq!(names, want);
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &[b"hello", b"world!"]);
        let good = std::fs::read(&p).unwrap();
        std::fs::write(&p, &good[..good.len() - 700]).unwrap();
        assert!(matches!(scan(&p, &mut |_| {}), Err(BundleError::Truncated)));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            scan(&p, &mut |_| {}),
            Err(BundleError::NotABundle(_))
        ));
    }
}
