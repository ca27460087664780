//! `berth export`: an image (and its environment and, with sources, its base) from the Docker
//! engine into one bundle file.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use berth_builder::{labels, Engine};
use futures_util::StreamExt;
use oci_spec::image::{
    DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, SCHEMA_VERSION,
};
use serde::Serialize;
use tracing::{info, info_span, Instrument};

use crate::archive::BundleWriter;
pub use crate::Progress;
use crate::{
    archive, gitbundle, BundleError, DataFile, DataSetEntry, ImageEntry, Manifest, Part, RepoInfo,
    FORMAT,
};

/// The OCI annotation naming an image's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What to put in the file besides the image.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// A sources folder (`wheels/`, `debs/`, as `berth_builder::sources::collect` fills it):
    /// with one, the bundle also holds the base image and every file of the folder.
    pub sources: Option<PathBuf>,
    /// berth's cache folder, where the repository's clone is looked up for the git bundle.
    pub cache_dir: PathBuf,
    /// Data sets of berth's data library to carry along, in this order.
    pub data: Vec<DataSetSource>,
}

/// A data set to bundle: a version's Zarr store as the data library keeps it.
#[derive(Debug, Clone)]
pub struct DataSetSource {
    /// The data set's name.
    pub name: String,
    /// Its version id (64 hex digits).
    pub version: String,
    /// The library's record of the version, kept as it is in `berth.json`.
    pub record: serde_json::Value,
    /// The store's folder (read only).
    pub dir: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The bundle's digest, 64 hex digits: the seal's sha256 ([`crate::archive::Scan::digest`]),
    /// which `berth import` prints and sessions record.
    pub digest: String,
    /// The image exported.
    pub image: String,
    /// Bytes of image blobs (layers, configs, manifests).
    pub image_bytes: u64,
    /// Bytes of sources (wheels, sdists, Debian packages), 0 without.
    pub sources_bytes: u64,
    /// Bytes of the git bundle, 0 when the repository was not found.
    pub repo_bytes: u64,
    /// Bytes of the data sets' files (each distinct file once), 0 without.
    pub data_bytes: u64,
    /// What berth does not know about the image (field names).
    pub unknown: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

struct Img {
    name: String,
    id: String,
    labels: HashMap<String, String>,
    created: String,
    size: u64,
    /// The layers' diff ids (`sha256:<hex>`), bottom first: the sha256 of each layer's
    /// uncompressed tar, as `docker save` writes it.
    layers: Vec<String>,
}

async fn inspect(engine: &Engine, name: &str) -> Result<Option<Img>, BundleError> {
    match engine.docker().inspect_image(name).await {
        Ok(i) => Ok(Some(Img {
            name: name.to_string(),
            id: i.id.unwrap_or_default(),
            labels: i.config.and_then(|c| c.labels).unwrap_or_default(),
            created: i.created.map(|c| c.to_string()).unwrap_or_default(),
            size: i.size.unwrap_or(0).max(0) as u64,
            layers: i.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        })),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(BundleError::Engine(e.to_string())),
    }
}

/// The approximate size in bytes of each of `img`'s layers, diff id hex → bytes: the image
/// history's entries that made a layer (size above 0), oldest first, taken as the layers in
/// order when their number matches (a layer that changed nothing has size 0 too, and then
/// nothing is known). Only a hint for the writer ([`BundleWriter::expect_sizes`]).
async fn layer_sizes(engine: &Engine, img: &Img) -> HashMap<String, u64> {
    let Ok(history) = engine.docker().image_history(&img.id).await else {
        return HashMap::new();
    };
    let sizes: Vec<u64> = history
        .iter()
        .rev()
        .filter(|h| h.size > 0)
        .map(|h| h.size as u64)
        .collect();
    if sizes.len() != img.layers.len() {
        return HashMap::new();
    }
    img.layers
        .iter()
        .map(|l| l.trim_start_matches("sha256:").to_string())
        .zip(sizes)
        .collect()
}

/// A name for `img` that `docker save` keeps as a tag: its own when it is a tag, else the
/// first tag the engine has for it.
async fn tag_of(engine: &Engine, name: &str, id: &str) -> String {
    if !name.starts_with("sha256:") && !id.starts_with(name) {
        return name.to_string();
    }
    match engine.docker().inspect_image(id).await {
        Ok(i) => i
            .repo_tags
            .and_then(|t| t.into_iter().next())
            .unwrap_or_else(|| format!("berth-export:{}", &id.trim_start_matches("sha256:")[..12])),
        Err(_) => name.to_string(),
    }
}

/// The docker-save entry names berth reads (Docker 20.10's legacy layout).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifest {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What the docker-save stream held, once its blobs are written.
#[derive(Default)]
struct Saved {
    /// `dir/layer.tar` → sha256.
    layers: HashMap<String, (String, u64)>,
    /// Symlinked duplicates: `dir/layer.tar` → the path it links to.
    links: HashMap<String, String>,
    /// `hex.json` → (sha256, bytes).
    configs: HashMap<String, (String, u64)>,
    manifest: Vec<SaveManifest>,
    parts: Vec<Part>,
}

fn normalize(from: &str, link: &str) -> String {
    let dir = Path::new(from).parent().unwrap_or(Path::new(""));
    let mut out: Vec<String> = Vec::new();
    for c in dir.join(link).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

/// Reads a docker-save tar stream, writing layers and configs as blobs.
fn read_save(
    r: impl Read,
    w: &mut BundleWriter,
    progress: &(dyn Fn(Progress) + Send + Sync),
    total: u64,
) -> Result<Saved, BundleError> {
    let mut saved = Saved::default();
    let mut a = tar::Archive::new(r);
    let bad =
        |e: std::io::Error| BundleError::Engine(format!("reading the engine's image archive: {e}"));
    let base = w.bytes();
    for entry in a.entries().map_err(bad)? {
        let mut e = entry.map_err(bad)?;
        let path = e.path().map_err(bad)?.to_string_lossy().into_owned();
        let size = e.size();
        let is_layer = path.ends_with("/layer.tar");
        let is_config = !path.contains('/') && path.ends_with(".json") && path != "manifest.json";
        if is_layer && e.header().entry_type().is_symlink() {
            let target = e
                .link_name()
                .map_err(bad)?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            saved.links.insert(path.clone(), normalize(&path, &target));
        } else if is_layer || is_config {
            let done = w.bytes();
            let blob = w.add_blob(&mut e, size, &mut |n| {
                progress(Progress {
                    step: "image",
                    done: done - base + n,
                    total,
                })
            })?;
            let kind = if is_layer { "layer" } else { "config" };
            if is_layer {
                saved.layers.insert(path, (blob.sha256.clone(), blob.bytes));
            } else {
                saved
                    .configs
                    .insert(path, (blob.sha256.clone(), blob.bytes));
            }
            if !saved.parts.iter().any(|p| p.path == blob.path) {
                saved.parts.push(Part {
                    path: blob.path,
                    kind: kind.into(),
                    sha256: blob.sha256,
                    bytes: blob.bytes,
                    name: None,
                });
            }
        } else if path == "manifest.json" {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(bad)?;
            saved.manifest = serde_json::from_slice(&buf)
                .map_err(|e| BundleError::Engine(format!("the engine's manifest.json: {e}")))?;
        }
    }
    Ok(saved)
}

fn descriptor(
    media: MediaType,
    sha: &str,
    bytes: u64,
    annotations: Option<HashMap<String, String>>,
) -> Result<oci_spec::image::Descriptor, BundleError> {
    let digest: oci_spec::image::Digest = format!("sha256:{sha}")
        .parse()
        .map_err(|e| BundleError::Invalid(format!("digest: {e}")))?;
    let mut b = DescriptorBuilder::default()
        .media_type(media)
        .digest(digest)
        .size(bytes);
    if let Some(a) = annotations {
        b = b.annotations(a);
    }
    b.build()
        .map_err(|e| BundleError::Invalid(format!("descriptor: {e}")))
}

/// Writes `image` (a name or id the engine knows) as a bundle at `out`. A berth repository
/// image brings its environment image (`berth-env:<env hash>`) and its repository as a git
/// bundle (from the local path it was built from, or berth's clone of its URL under
/// `opts.cache_dir`); with `opts.sources`, the base image and the folder's files too. Any other
/// image is exported as it is, with `berth.json` listing what is unknown. The file is written
/// as `OUT.partial` and renamed when complete; on any error (a full disk too) nothing is left.
///
/// # Errors
/// [`BundleError::Invalid`] for an image the engine does not have;
/// [`BundleError::Engine`]; [`BundleError::Io`].
pub async fn export(
    engine: &Engine,
    image: &str,
    out: &Path,
    opts: &ExportOptions,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<ExportSummary, BundleError> {
    let started = Instant::now();
    let span = info_span!("export", %image, out = %out.display());
    async move {
        let img = inspect(engine, image)
            .await?
            .ok_or_else(|| BundleError::Invalid(format!("no image {image} in the engine")))?;
        let l = |k: &str| img.labels.get(k).cloned();
        let mut unknown = Vec::new();
        let berth_built = l(labels::ENV_HASH).is_some();
        // The environment image, for a repository image.
        let mut env = None;
        if l(labels::KIND).as_deref() == Some("repo") {
            if let Some(h) = l(labels::ENV_HASH) {
                env = inspect(engine, &format!("berth-env:{h}")).await?;
                if env.is_none() {
                    unknown.push("env_image".to_string());
                }
            }
        }
        let mut base = None;
        if opts.sources.is_some() {
            let id = l(labels::BASE_IMAGE).ok_or_else(|| {
                BundleError::Missing(format!(
                    "{image} records no base image (label {}): it has no sources to bundle",
                    labels::BASE_IMAGE
                ))
            })?;
            let b = inspect(engine, &id).await?.ok_or_else(|| {
                BundleError::Missing(format!(
                    "the base image {} is not in the engine: rebuild the image first",
                    &id[..id.len().min(19)]
                ))
            })?;
            let name = tag_of(engine, &id, &b.id).await;
            base = Some(Img { name, ..b });
        }
        if !berth_built {
            unknown.extend(
                ["repo", "env_hash", "buildpack", "python", "packages"]
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        let img_name = tag_of(engine, image, &img.id).await;
        let images: Vec<&Img> = std::iter::once(&img)
            .chain(env.iter())
            .chain(base.iter())
            .collect();
        let names: Vec<String> = images
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if i == 0 {
                    img_name.clone()
                } else {
                    m.name.clone()
                }
            })
            .collect();

        // The package record, for the manifest.
        let packages = if berth_built && l(labels::KIND).is_some() {
            match berth_builder::record::read_packages(engine, &img.id).await {
                Ok(Some((_, bytes))) => serde_json::from_slice(&bytes).ok(),
                _ => None,
            }
        } else {
            None
        };
        if berth_built && packages.is_none() {
            unknown.push("packages".into());
        }

        // The repository as a git bundle.
        let tmp = tempfile::tempdir().map_err(|e| BundleError::io(out, e))?;
        let repo = match (l(labels::REPO_URL), l(labels::COMMIT)) {
            (Some(url), Some(commit)) => {
                let local = Path::new(&url);
                let candidates = [
                    local.to_path_buf(),
                    berth_builder::fetch::RepoCache::new(opts.cache_dir.join("repos"))
                        .path_for(&url),
                ];
                let bundle = tmp.path().join("repo.bundle");
                let found = candidates
                    .iter()
                    .find(|p| p.exists() && gitbundle::write(p, &commit, &bundle).is_ok());
                if found.is_none() {
                    unknown.push("repo_bundle".into());
                }
                Some((
                    RepoInfo {
                        url,
                        r#ref: l(labels::REF).unwrap_or_else(|| "HEAD".into()),
                        commit,
                        tree: l(labels::TREE),
                        subdir: l(labels::SUBDIR),
                    },
                    found.map(|_| bundle),
                ))
            }
            _ => None,
        };

        let mtime = chrono::DateTime::parse_from_rfc3339(&img.created)
            .map(|t| t.timestamp().max(0) as u64)
            .unwrap_or(0);
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
        }
        let mut w = BundleWriter::create(out, mtime)?;
        let mut parts = Vec::new();
        let layout = w.add_file("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}")?;
        parts.push(part(layout, "oci-layout", None));

        // The images: the engine's own archive, streamed into blobs.
        let total: u64 = images.iter().map(|m| m.size).max().unwrap_or(0);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let stream = engine
            .docker()
            .export_images(&refs)
            .map(|r| r.map_err(std::io::Error::other));
        let reader = tokio_util::io::StreamReader::new(stream);
        // The engine's archive comes in an order that changes from run to run (see
        // `archive`): its blobs are written in this one, the layers largest first (so the
        // largest never waits), then the configs; without sizes, the layers bottom first.
        // Smaller blobs that come early wait in memory.
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for m in &images {
            sizes.extend(layer_sizes(engine, m).await);
        }
        let mut order: Vec<String> = Vec::new();
        for m in images.iter().rev() {
            for d in &m.layers {
                let hex = d.trim_start_matches("sha256:").to_string();
                if !order.contains(&hex) {
                    order.push(hex);
                }
            }
        }
        if order.iter().all(|d| sizes.contains_key(d)) {
            order.sort_by(|a, b| (sizes[b], a).cmp(&(sizes[a], b)));
        }
        for m in images.iter().rev() {
            let hex = m.id.trim_start_matches("sha256:").to_string();
            if !order.contains(&hex) {
                order.push(hex);
            }
        }
        w.expect_order(order.clone());
        w.expect_sizes(sizes);
        let p2 = progress.clone();
        let (mut w, saved) = tokio::task::spawn_blocking(move || {
            let r = tokio_util::io::SyncIoBridge::new(reader);
            let saved = read_save(r, &mut w, &*p2, total).and_then(|s| {
                w.flush_waiting()?;
                tracing::debug!(
                    bytes = w.waited_bytes(),
                    "blobs that came before their turn and waited on disk"
                );
                Ok(s)
            });
            (w, saved)
        })
        .await
        .map_err(|e| BundleError::Engine(e.to_string()))?;
        let mut saved = saved?;
        let rank = |sha: &str| order.iter().position(|o| o == sha).unwrap_or(usize::MAX);
        saved
            .parts
            .sort_by(|a, b| (rank(&a.sha256), &a.sha256).cmp(&(rank(&b.sha256), &b.sha256)));
        parts.extend(saved.parts.iter().cloned());

        // One OCI manifest per image, in the order asked.
        let mut entries = Vec::new();
        let mut index_manifests = Vec::new();
        let mut docker_manifest = Vec::new();
        for (m, name) in images.iter().zip(&names) {
            let hex = m.id.trim_start_matches("sha256:");
            let sm = saved
                .manifest
                .iter()
                .find(|s| s.config.trim_end_matches(".json") == hex)
                .ok_or_else(|| BundleError::Engine(format!("the engine's archive lacks {name}")))?;
            let (csha, cbytes) = saved.configs.get(&sm.config).cloned().ok_or_else(|| {
                BundleError::Engine(format!("the engine's archive lacks {}", sm.config))
            })?;
            let mut layers = Vec::new();
            let mut layer_paths = Vec::new();
            let mut bytes = 0;
            for lp in &sm.layers {
                let key = saved.links.get(lp).unwrap_or(lp);
                let (sha, n) = saved.layers.get(key).cloned().ok_or_else(|| {
                    BundleError::Engine(format!("the engine's archive lacks {lp}"))
                })?;
                bytes += n;
                layers.push(descriptor(MediaType::ImageLayer, &sha, n, None)?);
                layer_paths.push(format!("{}{sha}", archive::BLOBS));
            }
            let manifest = ImageManifestBuilder::default()
                .schema_version(SCHEMA_VERSION)
                .media_type(MediaType::ImageManifest)
                .config(descriptor(MediaType::ImageConfig, &csha, cbytes, None)?)
                .layers(layers)
                .build()
                .map_err(|e| BundleError::Invalid(format!("manifest: {e}")))?;
            let json =
                serde_json::to_vec(&manifest).map_err(|e| BundleError::Invalid(e.to_string()))?;
            let b = w.add_blob_bytes(&json)?;
            let mut ann = HashMap::new();
            ann.insert(REF_NAME.to_string(), name.clone());
            index_manifests.push(descriptor(
                MediaType::ImageManifest,
                &b.sha256,
                b.bytes,
                Some(ann),
            )?);
            entries.push(ImageEntry {
                name: name.clone(),
                id: m.id.clone(),
                manifest: format!("sha256:{}", b.sha256),
                bytes,
            });
            parts.push(part(b, "manifest", None));
            let _ = &sm.repo_tags;
            docker_manifest.push(serde_json::json!({
                "Config": format!("{}{csha}", archive::BLOBS),
                "RepoTags": [name],
                "Layers": layer_paths,
            }));
        }

        let mut repo_bytes = 0;
        let mut repo_info = None;
        if let Some((info, bundle)) = repo {
            if let Some(b) = bundle {
                let size = std::fs::metadata(&b)
                    .map_err(|e| BundleError::io(&b, e))?
                    .len();
                let mut f = std::fs::File::open(&b).map_err(|e| BundleError::io(&b, e))?;
                let blob = w.add_blob(&mut f, size, &mut |_| {})?;
                repo_bytes = blob.bytes;
                parts.push(part(blob, "repo", Some("repo.bundle".into())));
            }
            repo_info = Some(info);
        }

        let mut sources_bytes = 0;
        if let Some(dir) = &opts.sources {
            let files = source_files(dir)?;
            let total: u64 = files.iter().map(|f| f.2).sum();
            for (kind, path, size) in files {
                let mut f = std::fs::File::open(&path).map_err(|e| BundleError::io(&path, e))?;
                let done = sources_bytes;
                let blob = w.add_blob(&mut f, size, &mut |n| {
                    progress(Progress {
                        step: "sources",
                        done: done + n,
                        total,
                    })
                })?;
                sources_bytes += blob.bytes;
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                parts.push(part(blob, kind, Some(name)));
            }
        }

        let mut data_bytes = 0;
        let mut data = Vec::new();
        for d in &opts.data {
            let files = store_files(&d.dir)?;
            let total: u64 = files.iter().map(|f| f.2).sum();
            let mut entry = DataSetEntry {
                name: d.name.clone(),
                version: d.version.clone(),
                record: d.record.clone(),
                files: Vec::new(),
            };
            let mut done = 0;
            for (key, path, size) in files {
                let mut f = std::fs::File::open(&path).map_err(|e| BundleError::io(&path, e))?;
                let before = done;
                let blob = w.add_blob(&mut f, size, &mut |n| {
                    progress(Progress {
                        step: "data",
                        done: before + n,
                        total,
                    })
                })?;
                done += size;
                entry.files.push(DataFile {
                    key: key.clone(),
                    sha256: blob.sha256.clone(),
                    bytes: blob.bytes,
                });
                if !parts.iter().any(|p| p.path == blob.path) {
                    data_bytes += blob.bytes;
                    parts.push(part(blob, "data", Some(format!("{}/{key}", d.name))));
                }
            }
            data.push(entry);
        }

        let index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(index_manifests)
            .build()
            .map_err(|e| BundleError::Invalid(format!("index: {e}")))?;
        let index = serde_json::to_vec(&index).map_err(|e| BundleError::Invalid(e.to_string()))?;
        parts.push(part(w.add_file("index.json", &index)?, "index", None));
        let dm = serde_json::to_vec(&docker_manifest)
            .map_err(|e| BundleError::Invalid(e.to_string()))?;
        parts.push(part(
            w.add_file("manifest.json", &dm)?,
            "docker-manifest",
            None,
        ));

        let mut img_entry = entries.remove(0);
        img_entry.name = img_name.clone();
        let env_entry = env.as_ref().map(|_| entries.remove(0));
        let base_entry = base.as_ref().map(|_| entries.remove(0));
        let berth_labels: BTreeMap<String, String> = img
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with(labels::PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let image_bytes = parts
            .iter()
            .filter(|p| matches!(p.kind.as_str(), "layer" | "config" | "manifest"))
            .map(|p| p.bytes)
            .sum();
        unknown.sort();
        unknown.dedup();
        let manifest = Manifest {
            format: FORMAT,
            berth_version: berth_builder::BERTH_VERSION.to_string(),
            built_by: l(labels::VERSION),
            created: img.created.clone(),
            image: img_entry,
            env_image: env_entry,
            base_image: base_entry,
            repo: repo_info,
            env_hash: l(labels::ENV_HASH),
            buildpack: l(labels::BUILDPACK),
            python_requested: l(labels::PYTHON_REQUESTED),
            python_actual: packages
                .as_ref()
                .and_then(|p: &serde_json::Value| p.get("python"))
                .and_then(|p| p.as_str())
                .map(str::to_string)
                .or_else(|| l(labels::PYTHON_ACTUAL)),
            base_image_id: l(labels::BASE_IMAGE),
            packages,
            labels: berth_labels,
            unknown: unknown.clone(),
            data,
            parts,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BundleError::Invalid(e.to_string()))?;
        let (bytes, digest) = w.finish(&json)?;
        let seconds = started.elapsed().as_secs_f64();
        info!(bytes, seconds, "exported");
        Ok(ExportSummary {
            path: out.to_path_buf(),
            bytes,
            digest,
            image: img_name,
            image_bytes,
            sources_bytes,
            repo_bytes,
            data_bytes,
            unknown,
            seconds,
        })
    }
    .instrument(span)
    .await
}

fn part(w: archive::Written, kind: &str, name: Option<String>) -> Part {
    Part {
        path: w.path,
        kind: kind.into(),
        sha256: w.sha256,
        bytes: w.bytes,
        name,
    }
}

/// The files of a Zarr store folder in key order (`/`-separated paths relative to `dir`,
/// sorted as strings, as the data library hashes them): `(key, path, bytes)`. Anything but
/// files and folders is refused.
fn store_files(dir: &Path) -> Result<Vec<(String, PathBuf, u64)>, BundleError> {
    fn walk(
        dir: &Path,
        prefix: &str,
        out: &mut Vec<(String, PathBuf, u64)>,
    ) -> Result<(), BundleError> {
        for e in std::fs::read_dir(dir).map_err(|e| BundleError::io(dir, e))? {
            let e = e.map_err(|e| BundleError::io(dir, e))?;
            let path = e.path();
            let name = e.file_name().into_string().map_err(|_| {
                BundleError::Invalid(format!("{}: a store key is not UTF-8", path.display()))
            })?;
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = e.file_type().map_err(|e| BundleError::io(&path, e))?;
            if ft.is_dir() {
                walk(&path, &key, out)?;
            } else if ft.is_file() {
                let size = e.metadata().map_err(|e| BundleError::io(&path, e))?.len();
                out.push((key, path, size));
            } else {
                return Err(BundleError::Invalid(format!(
                    "{}: not a file or folder in a data store",
                    path.display()
                )));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The files of a sources folder, sorted by path: `(kind, path, bytes)`.
fn source_files(dir: &Path) -> Result<Vec<(&'static str, PathBuf, u64)>, BundleError> {
    let mut out = Vec::new();
    for sub in ["debs", "wheels"] {
        let d = dir.join(sub);
        if !d.exists() {
            continue;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| BundleError::io(&d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        for p in names {
            let n = p.to_string_lossy();
            let kind = if n.ends_with(".deb") {
                "deb"
            } else if n.ends_with(".whl") {
                "wheel"
            } else {
                "sdist"
            };
            let size = std::fs::metadata(&p)
                .map_err(|e| BundleError::io(&p, e))?
                .len();
            out.push((kind, p, size));
        }
    }
    Ok(out)
}
