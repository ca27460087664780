//! berth's builder: from a Git URL at a ref to a cached, content-addressed environment image.
//!
//! A build fetches the repository ([`fetch`]), makes a build plan with the buildpacks, hashes
//! everything that can change the environment ([`hash::env_hash`]), and builds two images
//! through the Docker Engine API: the heavy environment image, tagged
//! `berth-env:<env hash>` and reused whenever the hash matches, and on top of it a thin image
//! with the repository's files, keyed by the commit's tree.
#![deny(missing_docs)]

pub mod context;
pub mod engine;
pub mod fetch;
pub mod hash;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_buildpacks::{BuildPlan, BuildpackError, PlanOptions, RenderOptions};
use serde::Serialize;
use tracing::{info, info_span, Instrument};

pub use berth_buildpacks::BUILDPACK_VERSION;
pub use engine::BuildTrack;
pub use engine::{finish_cleanups, Engine, ImageInfo};
pub use fetch::{
    redact_url, shorten, Checkout, FetchError, FetchProgress, FetchSettings, HostPolicy, RepoCache,
};

/// berth's version, recorded in image labels.
pub const BERTH_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default base image: Debian bookworm, created locally with debootstrap when missing.
pub const DEFAULT_BASE_IMAGE: &str = "berth-base:bookworm";

/// The default limit on a repository's tree, in bytes (1 GiB).
pub const DEFAULT_MAX_REPO_BYTES: u64 = 1 << 30;

/// Label keys berth sets on its images.
pub mod labels {
    /// The env hash (64 hex digits).
    pub const ENV_HASH: &str = "berth.env_hash";
    /// The buildpack that made the plan.
    pub const BUILDPACK: &str = "berth.buildpack";
    /// berth's version.
    pub const VERSION: &str = "berth.version";
    /// The repository URL or path.
    pub const REPO_URL: &str = "berth.repo_url";
    /// The ref asked for.
    pub const REF: &str = "berth.ref";
    /// The resolved commit.
    pub const COMMIT: &str = "berth.commit";
    /// The commit's tree (repository images only).
    pub const TREE: &str = "berth.tree";
    /// The Python version the repository asked for.
    pub const PYTHON_REQUESTED: &str = "berth.python.requested";
    /// The Python version installed.
    pub const PYTHON_ACTUAL: &str = "berth.python.actual";
    /// The kind of image: `env` or `repo`.
    pub const KIND: &str = "berth.kind";
}

/// Errors of a build. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Fetching or reading the repository failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The spec could not be turned into a plan.
    #[error(transparent)]
    Spec(#[from] BuildpackError),
    /// No Docker engine answers.
    #[error("cannot reach the Docker engine: {0}")]
    EngineUnavailable(String),
    /// The engine answered with an error.
    #[error("Docker engine: {0}")]
    Engine(String),
    /// A build step failed.
    #[error("build failed: {0}")]
    BuildFailed(String),
    /// A build step was killed (exit code 137) while a memory limit was set: the kernel's
    /// out-of-memory killer stopped it.
    #[error("build step ran out of memory (limit {mib} MiB, --build-memory)")]
    OutOfMemory {
        /// The limit, in MiB (2^20 bytes).
        mib: u64,
    },
    /// The whole build took longer than [`BuildRequest::timeout`].
    #[error("build timed out after {seconds} s (--build-timeout)")]
    TimedOut {
        /// The limit, in seconds.
        seconds: u64,
    },
    /// The base image could not be found, pulled or created.
    #[error("base image: {0}")]
    Base(String),
    /// The CA bundle could not be read.
    #[error("cannot read CA bundle {path}: {message}")]
    CaCert {
        /// The path given.
        path: String,
        /// The reason.
        message: String,
    },
    /// An `--image-name` that Docker would refuse.
    #[error("invalid image name {0:?}: use lowercase letters, digits, '.', '_', '-', '/' and an optional :tag")]
    InvalidImageName(String),
    /// An internal error (I/O of a build context, a worker thread).
    #[error("{0}")]
    Internal(String),
}

/// What to build, and how. Its `Debug` form shows the source redacted ([`redact_url`]).
#[derive(Clone)]
pub struct BuildRequest {
    /// A Git URL (https, http, git, ssh) or a local path (work tree or bare repository).
    pub source: String,
    /// Branch, tag, full or short commit; `None` means `HEAD`.
    pub reference: Option<String>,
    /// Name (and optional `:tag`) of the repository image; by default
    /// `berth/<repo name>:<first 12 hex digits of the tree>`.
    pub image_name: Option<String>,
    /// Build everything again, without Docker's layer cache and without reusing images.
    pub no_cache: bool,
    /// Build with the nearest Python when the requested one is missing.
    pub python_fallback: bool,
    /// Python versions (`X.Y`) the base image provides, default first.
    pub available_pythons: Vec<String>,
    /// A CA bundle (PEM) handed to the build steps, for intercepting TLS proxies.
    pub ca_cert: Option<PathBuf>,
    /// The base image; [`DEFAULT_BASE_IMAGE`] by default.
    pub base_image: String,
    /// The Debian mirror debootstrap uses to create a missing base image.
    pub debian_mirror: String,
    /// `$REPO_DIR` in the image.
    pub repo_dir: String,
    /// Limit on the repository tree's size in bytes.
    pub max_repo_bytes: u64,
    /// Where clones are cached.
    pub cache_dir: PathBuf,
    /// The longest a whole build (fetch, environment, repository layer) may take;
    /// [`DEFAULT_BUILD_TIMEOUT`] by default.
    pub timeout: std::time::Duration,
    /// Limits of each build step's container.
    pub limits: BuildLimits,
    /// Which hosts the fetch may reach (the web server sets one; the CLI fetches anything).
    pub host_policy: Option<HostPolicy>,
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("source", &redact_url(&self.source))
            .field("reference", &self.reference)
            .field("image_name", &self.image_name)
            .field("no_cache", &self.no_cache)
            .field("python_fallback", &self.python_fallback)
            .field("available_pythons", &self.available_pythons)
            .field("ca_cert", &self.ca_cert)
            .field("base_image", &self.base_image)
            .field("debian_mirror", &self.debian_mirror)
            .field("repo_dir", &self.repo_dir)
            .field("max_repo_bytes", &self.max_repo_bytes)
            .field("cache_dir", &self.cache_dir)
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .field("host_policy", &self.host_policy)
            .finish()
    }
}

/// The default build timeout: one hour, as BinderHub's default build timeout.
pub const DEFAULT_BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Limits of the containers that run a build's steps, as BinderHub's
/// `BuildExecutor.memory_limit`, passed to the classic builder (`POST /build`, Engine API 1.41:
/// `memory` and `memswap`, and `ulimits` with `nproc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BuildLimits {
    /// Memory limit of each build step's container, in bytes (swap included); `None` for none.
    pub memory_bytes: Option<u64>,
    /// Most processes (threads included) of the step's user, as `RLIMIT_NPROC` (`ulimit -u`);
    /// `None` for none. The classic builder offers no pids cgroup limit; the kernel counts the
    /// processes of that user id on the whole host, and does not apply the limit to root, so
    /// it bounds the steps that run as the user (`postBuild`, pip and uv installs).
    pub pids: Option<u64>,
}

impl Default for BuildLimits {
    /// 4 GiB of memory and 4096 processes.
    fn default() -> Self {
        Self {
            memory_bytes: Some(4 << 30),
            pids: Some(4096),
        }
    }
}

impl BuildRequest {
    /// A request for `source` with every other setting at its default.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            reference: None,
            image_name: None,
            no_cache: false,
            python_fallback: false,
            available_pythons: PlanOptions::default().available_pythons,
            ca_cert: None,
            base_image: DEFAULT_BASE_IMAGE.into(),
            debian_mirror: "http://deb.debian.org/debian".into(),
            repo_dir: "/home/jovyan".into(),
            max_repo_bytes: DEFAULT_MAX_REPO_BYTES,
            cache_dir: default_cache_dir(),
            timeout: DEFAULT_BUILD_TIMEOUT,
            limits: BuildLimits::default(),
            host_policy: None,
        }
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            available_pythons: self.available_pythons.clone(),
            python_fallback: self.python_fallback,
        }
    }

    fn render_options(&self) -> RenderOptions {
        RenderOptions {
            base_image: self.base_image.clone(),
            repo_dir: self.repo_dir.clone(),
            ca_cert: self.ca_cert.is_some(),
        }
    }
}

/// `$BERTH_CACHE_DIR`, else `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("berth");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/berth")
}

/// The phases of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Fetching the repository.
    Fetching,
    /// Detecting the spec and making the plan.
    Detecting,
    /// Making sure the base image exists.
    Base,
    /// Building the environment image.
    BuildingEnv,
    /// Building the repository image.
    BuildingRepo,
    /// Done.
    Built,
}

/// What a build reports while it runs.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    /// A new phase began.
    Phase(Phase),
    /// A log line (from git, debootstrap or a build step).
    Log(String),
    /// Something the user should know (an unmapped dependency, a Python fallback).
    Warning(String),
    /// Fetch progress.
    Fetch(FetchProgress),
}

/// The result of a build.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BuildOutcome {
    /// The runnable image: the repository image (or the environment image for the
    /// `dockerfile` buildpack).
    pub image: String,
    /// The environment image, `berth-env:<env hash>`.
    pub env_image: String,
    /// The env hash (64 hex digits).
    pub env_hash: String,
    /// The commit built (40 hex digits).
    pub commit: String,
    /// The buildpack that made the plan.
    pub buildpack: String,
    /// Whether the environment image was reused without a build.
    pub cached_env: bool,
    /// Wall-clock duration of the whole build, in seconds.
    pub seconds: f64,
}

/// Fetches the repository of `req` (blocking work on a worker thread).
///
/// # Errors
/// [`BuildError::Fetch`].
pub async fn checkout(
    req: &BuildRequest,
    report: &(dyn Fn(BuildEvent) + Send + Sync),
) -> Result<Checkout, BuildError> {
    let cache = RepoCache::new(req.cache_dir.join("repos"));
    let source = req.source.clone();
    let reference = req.reference.clone();
    let max = req.max_repo_bytes;
    // Dropping this future (a timeout) stops the fetch on its worker thread.
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let settings = FetchSettings {
        policy: req.host_policy.clone(),
        cancel: Some(cancel.0.clone()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // A thread of its own, not tokio's blocking pool: a fetch stuck on a silent server (whose
    // callbacks never run to see the cancel flag) must not keep the runtime from shutting
    // down after a timeout; the thread ends with the connection, or with the process.
    std::thread::Builder::new()
        .name("berth-fetch".into())
        .spawn(move || {
            let result =
                cache.checkout_with(&source, reference.as_deref(), max, &settings, &mut |p| {
                    let _ = tx.send(p);
                });
            let _ = done_tx.send(result);
        })
        .map_err(|e| BuildError::Internal(format!("cannot start the fetch thread: {e}")))?;
    while let Some(p) = rx.recv().await {
        report(BuildEvent::Fetch(p));
    }
    let co = done_rx
        .await
        .map_err(|_| BuildError::Internal("the fetch thread ended without an answer".into()))??;
    Ok(co)
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Makes the build plan of a checked-out repository.
///
/// # Errors
/// [`BuildError::Spec`].
pub fn plan(req: &BuildRequest, co: &Checkout) -> Result<BuildPlan, BuildError> {
    Ok(berth_buildpacks::plan(&co.files, &req.plan_options())?)
}

/// Renders the environment image's Dockerfile.
pub fn dockerfile(req: &BuildRequest, co: &Checkout, plan: &BuildPlan) -> String {
    berth_buildpacks::render_dockerfile(plan, &co.files, &req.render_options())
}

/// Checks an image name as Docker's reference grammar would (lowercase path components, an
/// optional tag of at most 128 characters).
///
/// # Errors
/// [`BuildError::InvalidImageName`].
pub fn validate_image_name(name: &str) -> Result<(), BuildError> {
    let bad = || BuildError::InvalidImageName(name.to_string());
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let comp_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if repo.is_empty()
        || repo.len() > 200
        || !repo.split('/').all(|c| comp_ok(c) || c.contains(':'))
    {
        return Err(bad());
    }
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// The default repository image name: `berth/<last path component>`, made a valid Docker name
/// (credentials in the URL never enter it).
pub fn default_image_repo(url: &str) -> String {
    let url = redact_url(url);
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git");
    let mut slug: String = last
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    slug = slug
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if slug.is_empty() {
        slug = "repo".into();
    }
    format!("berth/{slug}")
}

/// Builds (or reuses) the images of `req`, reporting progress to `report`.
///
/// The environment image is reused when `berth-env:<env hash>` exists (unless `no_cache`); the
/// repository image is reused when an image of that name carries the same labels: tree, env
/// hash, repository URL, ref, commit and berth version.
///
/// The whole build, fetch included, is bounded by `req.timeout`, and each step's container by
/// `req.limits`. A failed or timed-out build tags nothing and leaves no container and no
/// untagged image of its own behind (an environment image it completed before failing stays,
/// tagged and reusable). URLs in events, labels, errors and the tracing span are redacted
/// ([`redact_url`]).
///
/// # Errors
/// [`BuildError`] for every failure, each with a one-line message;
/// [`BuildError::TimedOut`] when the time ran out.
pub async fn build(
    engine: &Engine,
    req: &BuildRequest,
    report: &(dyn Fn(BuildEvent) + Send + Sync),
) -> Result<BuildOutcome, BuildError> {
    let span = info_span!(
        "build",
        source = %shorten(&redact_url(&req.source)),
        reference = ?req.reference.as_deref().map(shorten),
    );
    async {
        let track = BuildTrack::default();
        let fetching = AtomicBool::new(true);
        let inner = build_inner(engine, req, report, &track, &fetching);
        match tokio::time::timeout(req.timeout, inner).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => {
                engine.cleanup(&track).await;
                Err(e)
            }
            Err(_) if req.host_policy.is_some() && fetching.load(Ordering::Relaxed) => {
                // Under a host policy a fetch that hangs looks like any other failed fetch:
                // how long a host takes to answer must not tell what it is.
                info!(seconds = req.timeout.as_secs(), "fetch timed out");
                Err(BuildError::Fetch(fetch::hidden(&req.source)))
            }
            Err(_) => {
                // The timed-out build's own guard has already started removing what it made
                // (see `engine::finish_cleanups`): wait for it, so nothing is left when this
                // returns, and a CLI that exits next does not cut it short.
                engine.cleanup(&track).await;
                finish_cleanups().await;
                info!(seconds = req.timeout.as_secs(), "build timed out");
                Err(BuildError::TimedOut {
                    seconds: req.timeout.as_secs(),
                })
            }
        }
    }
    .instrument(span)
    .await
}

async fn build_inner(
    engine: &Engine,
    req: &BuildRequest,
    report: &(dyn Fn(BuildEvent) + Send + Sync),
    track: &BuildTrack,
    fetching: &AtomicBool,
) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    if let Some(name) = &req.image_name {
        validate_image_name(name)?;
    }
    let ca = match &req.ca_cert {
        Some(p) => Some(std::fs::read(p).map_err(|e| BuildError::CaCert {
            path: p.display().to_string(),
            message: e.to_string(),
        })?),
        None => None,
    };

    report(BuildEvent::Phase(Phase::Fetching));
    let co = checkout(req, report).await?;
    fetching.store(false, Ordering::Relaxed);
    info!(commit = %co.commit, tree = %co.tree, files = co.files.len(), "fetched");
    for w in &co.warnings {
        report(BuildEvent::Warning(w.clone()));
    }
    report(BuildEvent::Log(format!(
        "{} at {} is commit {}",
        co.url, co.reference, co.commit
    )));

    report(BuildEvent::Phase(Phase::Detecting));
    let plan = plan(req, &co)?;
    report(BuildEvent::Log(format!("buildpack: {}", plan.buildpack)));
    for w in &plan.warnings {
        report(BuildEvent::Warning(w.clone()));
    }

    report(BuildEvent::Phase(Phase::Base));
    let mut log = |line: &str| report(BuildEvent::Log(line.to_string()));
    let base_id = if plan.dockerfile.is_some() {
        // A user's Dockerfile names its own base; its bytes are in the hash.
        String::new()
    } else {
        engine
            .ensure_base(&req.base_image, "bookworm", &req.debian_mirror, &mut log)
            .await?
    };
    let env_hash = hash::env_hash(&plan, &co.files, &base_id, &req.repo_dir);
    let env_image = format!("berth-env:{env_hash}");
    info!(%env_hash, buildpack = %plan.buildpack, "planned");

    let mut common = HashMap::new();
    common.insert(labels::ENV_HASH.to_string(), env_hash.clone());
    common.insert(labels::BUILDPACK.to_string(), plan.buildpack.clone());
    common.insert(labels::VERSION.to_string(), BERTH_VERSION.to_string());
    common.insert(labels::REPO_URL.to_string(), co.url.clone());
    common.insert(labels::REF.to_string(), co.reference.clone());
    common.insert(labels::COMMIT.to_string(), co.commit.clone());
    if let Some(py) = &plan.python {
        common.insert(labels::PYTHON_ACTUAL.to_string(), py.version.clone());
        if let Some(r) = &py.requested {
            common.insert(labels::PYTHON_REQUESTED.to_string(), r.clone());
        }
    }

    let existing = if req.no_cache {
        None
    } else {
        engine.image(&env_image).await?
    };
    let cached_env = existing.is_some();
    if cached_env {
        report(BuildEvent::Log(format!(
            "reusing environment image {env_image}"
        )));
    } else {
        report(BuildEvent::Phase(Phase::BuildingEnv));
        let dockerfile_text = dockerfile(req, &co, &plan);
        let ctx = context::env_context(&plan, &co.files, &dockerfile_text, ca.as_deref())
            .map_err(|e| BuildError::Internal(e.to_string()))?;
        let dockerfile_path = plan
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        let mut l = common.clone();
        l.insert(labels::KIND.to_string(), "env".into());
        let span = info_span!("build_env", %env_hash);
        engine
            .build(
                ctx,
                &env_image,
                &dockerfile_path,
                l,
                req.no_cache,
                &req.limits,
                track,
                &mut log,
            )
            .instrument(span)
            .await?;
    }

    let image = if plan.dockerfile.is_some() {
        if let Some(name) = &req.image_name {
            tag(engine, &env_image, name).await?;
            name.clone()
        } else {
            env_image.clone()
        }
    } else {
        let name = match &req.image_name {
            Some(n) => n.clone(),
            None => format!("{}:{}", default_image_repo(&co.url), &co.tree[..12]),
        };
        let mut l: std::collections::BTreeMap<String, String> = common.into_iter().collect();
        l.insert(labels::KIND.to_string(), "repo".into());
        l.insert(labels::TREE.to_string(), co.tree.clone());
        // Reused only when every label would be the same: the same tree and environment
        // fetched from another URL, ref or commit gets its own (thin, cheap) layer, so the
        // labels always tell where the image came from.
        let reusable = if req.no_cache {
            false
        } else {
            engine
                .image(&name)
                .await?
                .is_some_and(|i| l.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
        };
        if reusable {
            report(BuildEvent::Log(format!("reusing repository image {name}")));
        } else {
            report(BuildEvent::Phase(Phase::BuildingRepo));
            let df = context::repo_dockerfile(&env_image, &req.repo_dir, &l);
            let ctx = context::repo_context(&plan, &co.files, &df)
                .map_err(|e| BuildError::Internal(e.to_string()))?;
            let span = info_span!("build_repo", tree = %co.tree);
            engine
                .build(
                    ctx,
                    &name,
                    "Dockerfile",
                    HashMap::new(),
                    req.no_cache,
                    &req.limits,
                    track,
                    &mut log,
                )
                .instrument(span)
                .await?;
        }
        name
    };
    report(BuildEvent::Phase(Phase::Built));
    Ok(BuildOutcome {
        image,
        env_image,
        env_hash,
        commit: co.commit,
        buildpack: plan.buildpack,
        cached_env,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn tag(engine: &Engine, image: &str, name: &str) -> Result<(), BuildError> {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    let opts = bollard::query_parameters::TagImageOptionsBuilder::new()
        .repo(repo)
        .tag(tag)
        .build();
    engine
        .docker()
        .tag_image(image, Some(opts))
        .await
        .map_err(|e| BuildError::Engine(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_form_hides_credentials() {
        let req = BuildRequest::new("https://u:t0ken-s3cret@example.org/r.git");
        let shown = format!("{req:?}");
        assert!(!shown.contains("t0ken-s3cret"), "{shown}");
        assert!(shown.contains("https://***@example.org/r.git"), "{shown}");
        assert_eq!(
            default_image_repo("https://u:t0ken-s3cret@example.org"),
            "berth/example.org"
        );
    }

    #[test]
    fn image_names() {
        assert!(validate_image_name("berth/conda:abc123").is_ok());
        assert!(validate_image_name("localhost:5000/x/y:1.0").is_ok());
        assert!(validate_image_name("Bad").is_err());
        assert!(validate_image_name("x:-tag").is_err());
        assert!(validate_image_name("a b").is_err());
        assert_eq!(
            default_image_repo("/x/shared/fixtures/repos/setup.py.git"),
            "berth/setup.py"
        );
        assert_eq!(
            default_image_repo("https://github.com/binder-examples/Conda/"),
            "berth/conda"
        );
        assert_eq!(default_image_repo("git@github.com:a/b.git"), "berth/b");
    }
}
