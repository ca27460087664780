//! `berth import`: check every byte of a bundle, then load its images into the Docker engine.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use berth_builder::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tracing::{info, info_span, Instrument};

pub use crate::Progress;
use crate::{archive, verify, BundleError, ImageEntry, Manifest, Verified};

/// What to do besides loading the image.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Also load the base image (for an offline rebuild).
    pub base: bool,
    /// Load neither the runnable image nor its environment image (an offline rebuild makes
    /// them again).
    pub skip_images: bool,
    /// Copy the bundle's sources into this folder (`wheels/`, `debs/`): berth's local sources,
    /// which `berth build --offline` uses.
    pub sources_to: Option<PathBuf>,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    /// The runnable image's tag.
    pub image: String,
    /// Its id.
    pub id: String,
    /// The environment image's tag, when the bundle has one.
    pub env_image: Option<String>,
    /// The base image's reference (its tag, or its id when another image has the tag).
    pub base_image: Option<String>,
    /// Whether anything was loaded (false when the engine had every image already).
    pub loaded: bool,
    /// The bundle's digest, 64 hex digits ([`crate::archive::Scan::digest`]).
    pub digest: String,
    /// berth's manifest.
    #[serde(skip)]
    pub manifest: Manifest,
    /// Where each part is in the file (for [`copy_data`]).
    #[serde(skip)]
    pub scan: archive::Scan,
    /// Wall-clock seconds.
    pub seconds: f64,
}

async fn has(engine: &Engine, name: &str, id: &str) -> Result<bool, BundleError> {
    Ok(engine.image(name).await?.is_some_and(|i| i.id == id))
}

/// A `Write` that sends what it gets to the engine's load request.
struct Pipe(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the engine closed the load"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the docker-load archive of `images` (with their tags, or none) from the bundle.
fn write_load(
    path: &Path,
    v: &Verified,
    images: &[(ImageEntry, Option<String>)],
    out: impl Write,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), BundleError> {
    let mut manifest = Vec::new();
    let mut blobs: Vec<String> = Vec::new();
    for (img, tag) in images {
        let m = v
            .entry(&format!(
                "{}{}",
                archive::BLOBS,
                img.manifest.trim_start_matches("sha256:")
            ))
            .ok_or_else(|| {
                BundleError::Missing(format!("the bundle lacks {}'s manifest", img.name))
            })?;
        let mut buf = Vec::new();
        archive::copy_entry(path, m, &mut buf)?;
        let om: oci_spec::image::ImageManifest = serde_json::from_slice(&buf)
            .map_err(|e| BundleError::Corrupt(format!("{}'s manifest ({e})", img.name)))?;
        let hexof = |d: &oci_spec::image::Descriptor| d.digest().digest().to_string();
        let config = hexof(om.config());
        let layers: Vec<String> = om.layers().iter().map(hexof).collect();
        for b in std::iter::once(&config).chain(&layers) {
            if !blobs.contains(b) {
                blobs.push(b.clone());
            }
        }
        manifest.push(serde_json::json!({
            "Config": format!("{}{config}", archive::BLOBS),
            "RepoTags": tag.iter().collect::<Vec<_>>(),
            "Layers": layers.iter().map(|l| format!("{}{l}", archive::BLOBS)).collect::<Vec<_>>(),
        }));
    }
    let total: u64 = blobs
        .iter()
        .filter_map(|b| v.entry(&format!("{}{b}", archive::BLOBS)))
        .map(|e| e.bytes)
        .sum();
    let io = |e: std::io::Error| BundleError::Engine(format!("loading into the engine: {e}"));
    let mut t = tar::Builder::new(out);
    let json = serde_json::to_vec(&manifest).map_err(|e| BundleError::Invalid(e.to_string()))?;
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, "manifest.json", &json[..])
        .map_err(io)?;
    let mut done = 0;
    let mut file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
    for b in &blobs {
        let p = format!("{}{b}", archive::BLOBS);
        let e = v
            .entry(&p)
            .ok_or_else(|| BundleError::Missing(format!("the bundle lacks {p}")))?;
        use std::io::{Read, Seek};
        file.seek(std::io::SeekFrom::Start(e.offset))
            .map_err(|er| BundleError::io(path, er))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(e.bytes);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, &p, (&mut file).take(e.bytes))
            .map_err(io)?;
        done += e.bytes;
        progress(Progress {
            step: "load",
            done,
            total,
        });
    }
    t.finish().map_err(io)?;
    Ok(())
}

/// Checks every byte of the bundle at `path` ([`verify`]) and only then loads its images that
/// the engine lacks, with their tags: the runnable image, its environment image (so builds of
/// the same environment reuse it) and, with `opts.base`, the base image. A tag another image
/// already holds is left alone for the base image (it is loaded by id). The images' labels are
/// in their configs, so berth finds them as it found the originals. With `opts.sources_to`, the
/// bundle's sources are copied there.
///
/// # Errors
/// Every [`verify`] error, before anything is loaded; [`BundleError::Engine`] when the engine
/// refuses the images.
pub async fn import(
    engine: &Engine,
    path: &Path,
    opts: &ImportOptions,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<Imported, BundleError> {
    let started = Instant::now();
    let span = info_span!("import", path = %path.display());
    async move {
        let p = path.to_path_buf();
        let total = std::fs::metadata(path)
            .map_err(|e| BundleError::io(path, e))?
            .len();
        let pr = progress.clone();
        let v = tokio::task::spawn_blocking(move || {
            verify(&p, &mut |n| {
                pr(Progress {
                    step: "verify",
                    done: n,
                    total,
                })
            })
        })
        .await
        .map_err(|e| BundleError::Engine(e.to_string()))??;
        let m = v.manifest.clone();
        info!(digest = %v.digest(), "verified");

        let mut wanted: Vec<(ImageEntry, Option<String>)> = Vec::new();
        if !opts.skip_images && !has(engine, &m.image.name, &m.image.id).await? {
            wanted.push((m.image.clone(), Some(m.image.name.clone())));
        }
        if let Some(env) = m.env_image.as_ref().filter(|_| !opts.skip_images) {
            if engine.image(&env.name).await?.is_none() {
                wanted.push((env.clone(), Some(env.name.clone())));
            }
        }
        let mut base_ref = None;
        if opts.base {
            let b = m.base_image.as_ref().ok_or_else(|| {
                BundleError::Missing(
                    "the bundle has no base image: export it with --sources".into(),
                )
            })?;
            match engine.image(&b.name).await? {
                Some(i) if i.id == b.id => base_ref = Some(b.name.clone()),
                Some(_) => {
                    // The tag is another image's: load by id only.
                    if engine.image(&b.id).await?.is_none() {
                        wanted.push((b.clone(), None));
                    }
                    base_ref = Some(b.id.clone());
                }
                None => {
                    wanted.push((b.clone(), Some(b.name.clone())));
                    base_ref = Some(b.name.clone());
                }
            }
        }
        let loaded = !wanted.is_empty();
        if loaded {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
            let p = path.to_path_buf();
            let v2 = v.clone();
            let pr = progress.clone();
            let writer = tokio::task::spawn_blocking(move || {
                write_load(
                    &p,
                    &v2,
                    &wanted,
                    std::io::BufWriter::with_capacity(1 << 20, Pipe(tx)),
                    &*pr,
                )
            });
            let body = tokio_stream_from(rx);
            let opts = bollard::query_parameters::ImportImageOptionsBuilder::new()
                .quiet(true)
                .build();
            let mut s = engine.docker().import_image_stream(opts, body, None);
            let mut failure = None;
            while let Some(item) = s.next().await {
                match item {
                    Ok(info) => {
                        if let Some(d) = info.error_detail {
                            failure = d.message;
                        }
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            let written = writer
                .await
                .map_err(|e| BundleError::Engine(e.to_string()))?;
            if let Some(f) = failure {
                return Err(BundleError::Engine(format!(
                    "the engine refused the images: {f}"
                )));
            }
            written?;
        }
        if !opts.skip_images && !has(engine, &m.image.name, &m.image.id).await? {
            return Err(BundleError::Engine(format!(
                "the engine has no {} after loading",
                m.image.name
            )));
        }
        if let Some(dir) = &opts.sources_to {
            copy_sources(path, &v, dir)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        info!(seconds, loaded, "imported");
        Ok(Imported {
            image: m.image.name.clone(),
            id: m.image.id.clone(),
            env_image: m.env_image.as_ref().map(|e| e.name.clone()),
            base_image: base_ref,
            loaded,
            digest: v.digest().to_string(),
            manifest: m,
            scan: v.scan.clone(),
            seconds,
        })
    }
    .instrument(span)
    .await
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Copies the files of the bundle's data set `d` into the empty folder `dir`, each at its key
/// (`dir/KEY`), from the bundle at `path` whose parts `scan` located (as [`import`] returns
/// it, every byte verified). Returns the bytes copied. The caller registers the store (the
/// data library hashes it again against `d.version`).
///
/// # Errors
/// [`BundleError::Corrupt`] for a key that would leave `dir` (`..`, an absolute path, an
/// empty component); [`BundleError::Missing`] for a blob the file lacks; [`BundleError::Io`].
pub fn copy_data(
    path: &Path,
    scan: &archive::Scan,
    d: &crate::DataSetEntry,
    dir: &Path,
) -> Result<u64, BundleError> {
    let entries: HashMap<&str, &archive::Entry> =
        scan.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut n = 0;
    for f in &d.files {
        let ok = !f.key.is_empty()
            && f.key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && Path::new(&f.key)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !ok {
            return Err(BundleError::Corrupt(format!(
                "data set {}: key {:?}",
                d.name, f.key
            )));
        }
        let blob = format!("{}{}", archive::BLOBS, f.sha256);
        let e = entries
            .get(blob.as_str())
            .ok_or_else(|| BundleError::Missing(format!("the bundle lacks {blob}")))?;
        let dest = dir.join(&f.key);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|er| BundleError::io(parent, er))?;
        }
        let mut out = std::fs::File::create(&dest).map_err(|er| BundleError::io(&dest, er))?;
        archive::copy_entry(path, e, &mut out)?;
        n += f.bytes;
    }
    Ok(n)
}

/// Copies the bundle's sources (wheels, sdists, Debian packages) and nothing else into `dir`,
/// as `dir/wheels/NAME` and `dir/debs/NAME`; a file already there with the same size is kept.
///
/// # Errors
/// [`BundleError::Io`].
pub fn copy_sources(path: &Path, v: &Verified, dir: &Path) -> Result<u64, BundleError> {
    let mut n = 0;
    for p in &v.manifest.parts {
        if !matches!(p.kind.as_str(), "wheel" | "sdist" | "deb") {
            continue;
        }
        let Some(name) = &p.name else { continue };
        // Names come from the file: keep them to one folder level below dir.
        let rel = Path::new(name);
        if rel.components().count() != 2
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(BundleError::Corrupt(format!("source name {name}")));
        }
        let dest = dir.join(rel);
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == p.bytes) {
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
        }
        let e = v
            .entry(&p.path)
            .ok_or_else(|| BundleError::Missing(format!("the bundle lacks {}", p.path)))?;
        let tmp = dest.with_extension("partial");
        let mut f = std::fs::File::create(&tmp).map_err(|er| BundleError::io(&tmp, er))?;
        archive::copy_entry(path, e, &mut f)?;
        std::fs::rename(&tmp, &dest).map_err(|er| BundleError::io(&dest, er))?;
        n += p.bytes;
    }
    Ok(n)
}
