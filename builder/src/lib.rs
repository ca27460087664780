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
pub mod pythons;
pub mod record;
pub mod registry;
pub mod sources;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_buildpacks::{BuildPlan, ManagedPython, PlanOptions, RenderOptions};
use serde::Serialize;
use tracing::{info, info_span, Instrument};

pub use berth_buildpacks::{BuildpackError, BUILDPACK_VERSION};
pub use engine::BuildTrack;
pub use engine::{finish_cleanups, Engine, ImageInfo};
pub use fetch::{
    redact_url, shorten, Checkout, FetchError, FetchProgress, FetchSettings, HostPolicy, RepoCache,
};
pub use pythons::{
    default_bases, probe_python_downloads, PythonBase, PythonConfigError, PythonDownloads,
    PYTHON_PROBE_TIMEOUT, UV_PYTHON_SOURCE,
};
pub use registry::{Pushed, Registry, RegistryError};

/// berth's version, recorded in image labels.
pub const BERTH_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default base image: Debian bookworm (Python 3.11), created locally with debootstrap
/// when missing; the first of [`default_bases`].
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
    /// The base image's id (`sha256:…`), as the env hash used it.
    pub const BASE_IMAGE: &str = "berth.base_image";
    /// sha256 (hex) of the image's package record (`/etc/berth/packages.json`); repository
    /// images only.
    pub const PACKAGES: &str = "berth.packages";
    /// The kind of image: `env` or `repo`.
    pub const KIND: &str = "berth.kind";
    /// `$REPO_DIR`: where the repository lives in the image (berth's template only).
    pub const REPO_DIR: &str = "berth.repo_dir";
    /// The uid of the user the image runs as (berth's template only); the launcher runs
    /// session containers as it.
    pub const USER_ID: &str = "berth.user_id";
    /// The name of the user the image runs as (berth's template only).
    pub const USER_NAME: &str = "berth.user_name";
    /// The folder of the repository that was built (`--subdir`), when not the root.
    pub const SUBDIR: &str = "berth.subdir";
    /// The data sets the repository's `berth-data.txt` names, `NAME` or `NAME@VERSION`
    /// joined with `,` (repository images only; absent when the file names none). Launching
    /// mounts each at `/data/NAME`.
    pub const DATA: &str = "berth.data.requires";
    /// The prefix of berth's own label keys, which `--label` may not set.
    pub const PREFIX: &str = "berth.";
}

/// The default `$REPO_DIR`, as repo2docker: the user's home.
pub const DEFAULT_REPO_DIR: &str = "/home/jovyan";

/// The default user's uid, as repo2docker's images on mybinder.org.
pub const DEFAULT_USER_ID: u32 = 1000;

/// The default user's name, as repo2docker's images on mybinder.org.
pub const DEFAULT_USER_NAME: &str = "jovyan";

/// User names the base image (Debian) already has: `useradd` would fail on them.
const SYSTEM_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "_apt",
    "messagebus",
    "systemd-network",
];

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
    /// A setting of the request that cannot be built with (`--user-id 0`, a relative
    /// `--target-repo-dir`, a `--label` on a `berth.` key, …).
    #[error("invalid {option} {}: {reason}", fetch::shorten(&format!("{:?}", .value)))]
    InvalidSetting {
        /// The option, as the command line spells it (`--user-id`).
        option: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Pushing the images to the registry ([`BuildRequest::registry`]) failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
    /// Build with the nearest Python when the requested one is on no base image and uv cannot
    /// install it.
    pub python_fallback: bool,
    /// The base images, one per Python version, the default Python's first; [`default_bases`]
    /// by default. A plan builds from the base that has its Python, and from the first one
    /// when uv installs the Python (or for no Python at all).
    pub bases: Vec<PythonBase>,
    /// Where uv may download a Python that no base has; uv's own source by default.
    pub python_downloads: PythonDownloads,
    /// A CA bundle (PEM) handed to the build steps, for intercepting TLS proxies.
    pub ca_cert: Option<PathBuf>,
    /// The Debian mirror debootstrap uses to create a missing base image.
    pub debian_mirror: String,
    /// `$REPO_DIR` in the image (`--target-repo-dir`): an absolute path of letters, digits,
    /// `.`, `_`, `-` and `/`; [`DEFAULT_REPO_DIR`] by default.
    pub repo_dir: String,
    /// The uid of the user the image runs as (`--user-id`), 1 to 65534;
    /// [`DEFAULT_USER_ID`] by default. Its home is `/home/<user_name>`.
    pub user_id: u32,
    /// The name of the user the image runs as (`--user-name`): a POSIX login name (lowercase
    /// letters, digits, `_`, `-`, starting with a letter or `_`, at most 32 characters);
    /// [`DEFAULT_USER_NAME`] by default.
    pub user_name: String,
    /// Build args for a repository's own Dockerfile (`--build-arg K=V`); other buildpacks
    /// ignore them with a warning.
    pub build_args: std::collections::BTreeMap<String, String>,
    /// Extra labels of the image (`--label K=V`): on the repository image, or on a Dockerfile
    /// repository's image. Keys starting with `berth.` are berth's and refused.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The folder of the repository to build as if it were the repository (`--subdir`);
    /// `None` for the root.
    pub subdir: Option<String>,
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
    /// Build offline from this sources folder (`berth build --offline`; the layout
    /// [`sources::collect`] writes: `wheels/` and `debs/`): every build step runs on the
    /// engine's `none` network, Debian packages and Python distributions come from the folder
    /// only (a missing one fails the build with one line naming it), a URL source is read from
    /// berth's repository cache without fetching, and the base image must exist. The env hash
    /// is that of the same build online. `None` (the default) builds online.
    pub offline: Option<PathBuf>,
    /// Push the environment and repository images to this registry after the build
    /// (`berth build --push`, the server's `registry` setting), as
    /// `<registry>/<name>:<tag>` (see [`registry`]). Its address is checked before anything is
    /// fetched; `None` (the default) pushes nothing.
    pub registry: Option<Registry>,
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("source", &redact_url(&self.source))
            .field("reference", &self.reference)
            .field("image_name", &self.image_name)
            .field("no_cache", &self.no_cache)
            .field("python_fallback", &self.python_fallback)
            .field("bases", &self.bases)
            .field("python_downloads", &self.python_downloads)
            .field("ca_cert", &self.ca_cert)
            .field("debian_mirror", &self.debian_mirror)
            .field("repo_dir", &self.repo_dir)
            .field("user_id", &self.user_id)
            .field("user_name", &self.user_name)
            .field("build_args", &self.build_args)
            .field("labels", &self.labels)
            .field("subdir", &self.subdir)
            .field("max_repo_bytes", &self.max_repo_bytes)
            .field("cache_dir", &self.cache_dir)
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .field("host_policy", &self.host_policy)
            .field("offline", &self.offline)
            .field("registry", &self.registry)
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
            bases: default_bases(),
            python_downloads: PythonDownloads::default(),
            ca_cert: None,
            debian_mirror: "http://deb.debian.org/debian".into(),
            repo_dir: DEFAULT_REPO_DIR.into(),
            user_id: DEFAULT_USER_ID,
            user_name: DEFAULT_USER_NAME.into(),
            build_args: Default::default(),
            labels: Default::default(),
            subdir: None,
            max_repo_bytes: DEFAULT_MAX_REPO_BYTES,
            cache_dir: default_cache_dir(),
            timeout: DEFAULT_BUILD_TIMEOUT,
            limits: BuildLimits::default(),
            host_policy: None,
            offline: None,
            registry: None,
        }
    }

    /// The Python versions of the bases (`X.Y`), the default first, each once.
    pub fn available_pythons(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for b in &self.bases {
            if !out.contains(&b.python) {
                out.push(b.python.clone());
            }
        }
        out
    }

    /// The base `plan` builds from: the first whose Python the plan installs, else the first
    /// (default) one: for a Python uv installs, and for the `dockerfile` buildpack (whose own
    /// Dockerfile names its base). `None` only when there are no bases.
    pub fn base_for(&self, plan: &BuildPlan) -> Option<&PythonBase> {
        let python = plan.python.as_ref().filter(|p| !p.managed);
        python
            .and_then(|p| self.bases.iter().find(|b| b.python == p.version))
            .or_else(|| self.bases.first())
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            available_pythons: self.available_pythons(),
            python_fallback: self.python_fallback,
            ..PlanOptions::default()
        }
    }

    fn render_options(&self, plan: &BuildPlan) -> RenderOptions {
        RenderOptions {
            base_image: self
                .base_for(plan)
                .map(|b| b.image.clone())
                .unwrap_or_else(|| DEFAULT_BASE_IMAGE.into()),
            repo_dir: self.repo_dir.clone(),
            ca_cert: self.ca_cert.is_some(),
            user_id: self.user_id,
            user_name: self.user_name.clone(),
            offline: self.offline.is_some(),
        }
    }

    /// Checks the settings repo2docker's flags give, before anything is fetched or built.
    ///
    /// # Errors
    /// [`BuildError::InvalidSetting`] for: a `repo_dir` that is not absolute, has `.` or `..`
    /// components or other characters than letters, digits, `.`, `_`, `-` and `/`, or is `/`
    /// or a system folder (`/usr`, `/etc`, …); a `user_id` of 0 (root) or over 65534; a
    /// `user_name` that is no POSIX login name or is a system user of the base image; a build
    /// arg name that is not letters, digits and `_`; a label key that is empty, starts with
    /// `berth.` or holds whitespace, `=` or control characters, or a label value with control
    /// characters. [`BuildError::Fetch`] ([`FetchError::Subdir`]) for a malformed `subdir`.
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |option: &'static str, value: &str, reason: &str| BuildError::InvalidSetting {
            option,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if self.user_id == 0 {
            return Err(bad(
                "--user-id",
                "0",
                "root may not be the image's user; use 1 to 65534",
            ));
        }
        if self.user_id > 65534 {
            return Err(bad(
                "--user-id",
                &self.user_id.to_string(),
                "use 1 to 65534",
            ));
        }
        let n = &self.user_name;
        let name_ok = !n.is_empty()
            && n.len() <= 32
            && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !name_ok {
            return Err(bad(
                "--user-name",
                n,
                "use a login name: lowercase letters, digits, '_' and '-', starting with a letter or '_', at most 32",
            ));
        }
        if SYSTEM_USERS.contains(&n.as_str()) {
            return Err(bad(
                "--user-name",
                n,
                "the base image already has this system user",
            ));
        }
        // After the user: the default `$REPO_DIR` is the user's home.
        check_repo_dir(&self.repo_dir).map_err(|r| bad("--target-repo-dir", &self.repo_dir, &r))?;
        for (k, v) in &self.build_args {
            let ok = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(bad(
                    "--build-arg",
                    &format!("{k}={v}"),
                    "the name must be letters, digits and '_', not starting with a digit",
                ));
            }
            if v.contains('\0') {
                return Err(bad(
                    "--build-arg",
                    &format!("{k}={v}"),
                    "the value holds a NUL byte",
                ));
            }
        }
        for (k, v) in &self.labels {
            let shown = format!("{k}={v}");
            if k.is_empty()
                || k.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"')
            {
                return Err(bad(
                    "--label",
                    &shown,
                    "the key must be non-empty, without whitespace, '=', '\"' or control characters",
                ));
            }
            if k.to_ascii_lowercase().starts_with(labels::PREFIX) {
                return Err(bad(
                    "--label",
                    &shown,
                    "keys starting with berth. are berth's own",
                ));
            }
            if v.chars().any(|c| c.is_control()) {
                return Err(bad("--label", &shown, "the value holds control characters"));
            }
        }
        if let Some(d) = &self.subdir {
            fetch::normalize_subdir(d)?;
        }
        Ok(())
    }

    /// The build args a Dockerfile repository gets, as repo2docker passes them: `NB_USER`,
    /// `NB_UID`, `REPO_DIR` (when not the default), then `--build-arg`s (which win).
    pub fn dockerfile_build_args(&self) -> std::collections::BTreeMap<String, String> {
        let mut args = std::collections::BTreeMap::new();
        args.insert("NB_USER".to_string(), self.user_name.clone());
        args.insert("NB_UID".to_string(), self.user_id.to_string());
        if self.repo_dir != DEFAULT_REPO_DIR {
            args.insert("REPO_DIR".to_string(), self.repo_dir.clone());
        }
        args.extend(self.build_args.clone());
        args
    }

    /// What the env hash covers besides the plan and the files, for `plan` on a base image
    /// whose id is `base_image_id`: build args and labels count only for a Dockerfile
    /// repository (berth's template ignores build args; labels go on its repository layer).
    pub fn env_settings(&self, plan: &BuildPlan, base_image_id: &str) -> hash::EnvSettings {
        let dockerfile = plan.dockerfile.is_some();
        hash::EnvSettings {
            base_image_id: base_image_id.to_string(),
            repo_dir: self.repo_dir.clone(),
            user_id: self.user_id,
            user_name: self.user_name.clone(),
            build_args: if dockerfile {
                self.dockerfile_build_args()
            } else {
                Default::default()
            },
            labels: if dockerfile {
                self.labels.clone()
            } else {
                Default::default()
            },
        }
    }

    /// Warnings about settings the plan does not use: `--build-arg` outside a Dockerfile
    /// repository.
    pub fn warnings(&self, plan: &BuildPlan) -> Vec<String> {
        let mut out = Vec::new();
        if plan.dockerfile.is_none() && !self.build_args.is_empty() {
            let names: Vec<&str> = self.build_args.keys().map(String::as_str).collect();
            out.push(format!(
                "--build-arg {} ignored: only a repository's own Dockerfile takes build args (this is the {} buildpack)",
                names.join(", "),
                plan.buildpack
            ));
        }
        out
    }
}

/// Top-level folders of the base image a repository may not be copied over.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "root", "run",
    "sbin", "srv", "sys", "tmp", "usr", "var", "home",
];

/// Why `dir` cannot be `$REPO_DIR`, if it cannot.
fn check_repo_dir(dir: &str) -> Result<(), String> {
    if !dir.starts_with('/') {
        return Err("must be an absolute path (e.g. /srv/repo)".into());
    }
    if dir.len() > 255 {
        return Err("longer than 255 bytes".into());
    }
    if !dir
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    {
        return Err("use letters, digits, '.', '_', '-' and '/'".into());
    }
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("may not contain '.' or '..'".into());
    }
    if dir.contains("//") || (dir.len() > 1 && dir.ends_with('/')) {
        return Err("write it without '//' or a trailing '/'".into());
    }
    let berths = [
        berth_buildpacks::VENV_DIR,
        "/srv/server",
        "/srv/dashboard",
        "/srv/berth",
        "/opt/berth",
        "/etc/berth",
    ];
    if let Some(b) = berths
        .iter()
        .find(|b| dir == **b || dir.starts_with(&format!("{b}/")))
    {
        return Err(format!("{b} holds berth's own files"));
    }
    match parts.as_slice() {
        [] => Err("may not be /".into()),
        [top] if SYSTEM_DIRS.contains(top) => Err(format!("may not be the system folder /{top}")),
        [first, ..] if matches!(*first, "proc" | "sys" | "dev") => {
            Err(format!("may not be under /{first}"))
        }
        _ => Ok(()),
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
    /// Pushing the images to the registry ([`BuildRequest::registry`]).
    Pushing,
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
    /// The data sets the repository's `berth-data.txt` names (`NAME` or `NAME@VERSION`),
    /// also recorded in the image's [`labels::DATA`] label; empty without the file (and for a
    /// Dockerfile repository, whose image is its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<String>,
    /// The images as pushed to [`BuildRequest::registry`] (references to pull, digests,
    /// what each push uploaded); absent when nothing was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<Pushed>,
}

/// Fetches the repository of `req` (blocking work on a worker thread), narrowed to
/// `req.subdir` when one is given ([`RepoCache::narrow`]). The request is checked first
/// ([`BuildRequest::validate`]).
///
/// # Errors
/// [`BuildError::InvalidSetting`] from the check; [`BuildError::Fetch`].
pub async fn checkout(
    req: &BuildRequest,
    report: &(dyn Fn(BuildEvent) + Send + Sync),
) -> Result<Checkout, BuildError> {
    req.validate()?;
    let subdir = req.subdir.clone();
    let cache = RepoCache::new(req.cache_dir.join("repos")).offline(req.offline.is_some());
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
            let result = match (result, &subdir) {
                (Ok(co), Some(dir)) => cache.narrow(&source, co, dir),
                (other, _) => other,
            };
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
/// When the repository asks for a Python that no base image has, this checks whether uv can
/// download one ([`probe_python_downloads`]), blocking the calling thread for at most
/// [`PYTHON_PROBE_TIMEOUT`]; otherwise it reaches no network. Builds use the same logic
/// without blocking their runtime.
///
/// # Errors
/// [`BuildError::Spec`], with the reason uv cannot install a missing Python.
pub fn plan(req: &BuildRequest, co: &Checkout) -> Result<BuildPlan, BuildError> {
    match first_plan(req, co) {
        Err(NeedsProbe) => {
            let managed = probe_python_downloads(&req.python_downloads, PYTHON_PROBE_TIMEOUT);
            final_plan(req, co, managed)
        }
        Ok(r) => r,
    }
}

/// [`plan`] for a build: the check of the download source runs on a blocking thread. With the
/// plan comes, when it falls back to another Python, why uv could not install the requested
/// one (a warning kept out of the plan, which enters the env hash).
async fn plan_for_build(
    req: &BuildRequest,
    co: &Checkout,
) -> Result<(BuildPlan, Option<String>), BuildError> {
    match first_plan(req, co) {
        Err(NeedsProbe) if req.offline.is_some() => {
            // uv would download the Python, which an offline build cannot; the plan without a
            // fallback says which Python is missing.
            let plan = final_plan(
                req,
                co,
                ManagedPython::Unavailable("an offline build downloads nothing".into()),
            )?;
            Ok((plan, None))
        }
        Err(NeedsProbe) => {
            let downloads = req.python_downloads.clone();
            let managed = tokio::task::spawn_blocking(move || {
                probe_python_downloads(&downloads, PYTHON_PROBE_TIMEOUT)
            })
            .await
            .map_err(|e| BuildError::Internal(format!("the download check failed: {e}")))?;
            let why = match &managed {
                ManagedPython::Unavailable(why) => Some(why.clone()),
                ManagedPython::Available { .. } => None,
            };
            let plan = final_plan(req, co, managed)?;
            let note = match (&plan.python, why) {
                (Some(py), Some(why)) if py.fallback => Some(format!(
                    "uv cannot install Python {} either: {why}",
                    py.requested.as_deref().unwrap_or("?")
                )),
                _ => None,
            };
            Ok((plan, note))
        }
        Ok(r) => r.map(|p| (p, None)),
    }
}

/// The plan needs to know whether uv can download a Python.
struct NeedsProbe;

/// Plans without reaching the network and without a fallback: a plan (or an error other than
/// a missing Python) is final, since neither could change; a missing Python needs the check.
fn first_plan(
    req: &BuildRequest,
    co: &Checkout,
) -> Result<Result<BuildPlan, BuildError>, NeedsProbe> {
    let mut opts = req.plan_options();
    opts.python_fallback = false;
    match berth_buildpacks::plan(&co.files, &opts) {
        Err(BuildpackError::PythonUnavailable { .. }) => Err(NeedsProbe),
        r => Ok(r.map_err(BuildError::from)),
    }
}

fn final_plan(
    req: &BuildRequest,
    co: &Checkout,
    managed: ManagedPython,
) -> Result<BuildPlan, BuildError> {
    let mut opts = req.plan_options();
    opts.managed_python = managed;
    Ok(berth_buildpacks::plan(&co.files, &opts)?)
}

/// Renders the environment image's Dockerfile, `FROM` the base that has the plan's Python.
pub fn dockerfile(req: &BuildRequest, co: &Checkout, plan: &BuildPlan) -> String {
    berth_buildpacks::render_dockerfile(plan, &co.files, &req.render_options(plan))
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
/// With [`BuildRequest::registry`] set, the registry's address is checked before the fetch,
/// and the images are pushed after the build ([`registry::push`]; the time counts towards
/// `req.timeout`); [`BuildOutcome::pushed`] tells where they went.
///
/// # Errors
/// [`BuildError`] for every failure, each with a one-line message;
/// [`BuildError::TimedOut`] when the time ran out; [`BuildError::Registry`] when the registry
/// is unreachable or refuses the push (the images are built then).
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
    // An offline build's steps reach no network at all.
    let builder = if req.offline.is_some() {
        engine.without_network()
    } else {
        engine.clone()
    };
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

    // A registry that takes no connection fails the build before anything is fetched.
    if let Some(r) = &req.registry {
        r.check_reachable().await?;
    }
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
    let (plan, python_note) = plan_for_build(req, &co).await?;
    report(BuildEvent::Log(format!("buildpack: {}", plan.buildpack)));
    for w in plan
        .warnings
        .iter()
        .chain(&python_note)
        .chain(&req.warnings(&plan))
    {
        report(BuildEvent::Warning(w.clone()));
    }

    report(BuildEvent::Phase(Phase::Base));
    let mut log = |line: &str| report(BuildEvent::Log(line.to_string()));
    let base_id = if plan.dockerfile.is_some() {
        // A user's Dockerfile names its own base; its bytes are in the hash.
        String::new()
    } else {
        let base = req
            .base_for(&plan)
            .ok_or_else(|| BuildError::Base("no base images are configured (--bases)".into()))?;
        if let Some(py) = &plan.python {
            log(&if py.managed {
                format!(
                    "Python {} from uv ({}), on base image {}",
                    py.version,
                    req.python_downloads.url().unwrap_or(UV_PYTHON_SOURCE),
                    base.image
                )
            } else {
                format!(
                    "Python {} from base image {} (Debian {})",
                    py.version, base.image, base.suite
                )
            });
        }
        if req.offline.is_some() {
            // Creating a base image needs Debian's mirror.
            engine.image(&base.image).await?.map(|i| i.id).ok_or_else(|| {
                BuildError::Base(format!(
                    "{} is missing, and an offline build cannot create it (build once with the network, or load it)",
                    base.image
                ))
            })?
        } else {
            engine
                .ensure_base(&base.image, &base.suite, &req.debian_mirror, &mut log)
                .await?
        }
    };
    let env_hash = hash::env_hash_with(&plan, &co.files, &req.env_settings(&plan, &base_id));
    let env_image = format!("berth-env:{env_hash}");
    info!(%env_hash, buildpack = %plan.buildpack, "planned");

    let mut common = HashMap::new();
    common.insert(labels::ENV_HASH.to_string(), env_hash.clone());
    common.insert(labels::BUILDPACK.to_string(), plan.buildpack.clone());
    common.insert(labels::VERSION.to_string(), BERTH_VERSION.to_string());
    common.insert(labels::REPO_URL.to_string(), co.url.clone());
    common.insert(labels::REF.to_string(), co.reference.clone());
    common.insert(labels::COMMIT.to_string(), co.commit.clone());
    if let Some(dir) = &co.subdir {
        common.insert(labels::SUBDIR.to_string(), dir.clone());
    }
    if !base_id.is_empty() {
        common.insert(labels::BASE_IMAGE.to_string(), base_id.clone());
    }
    if plan.dockerfile.is_none() {
        // What the launcher needs to run the image: its user and where its repository is.
        common.insert(labels::REPO_DIR.to_string(), req.repo_dir.clone());
        common.insert(labels::USER_ID.to_string(), req.user_id.to_string());
        common.insert(labels::USER_NAME.to_string(), req.user_name.clone());
    }
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
        let sources = req.offline.as_deref().filter(|_| plan.dockerfile.is_none());
        let ctx = context::env_context_with_sources(
            &plan,
            &co.files,
            &dockerfile_text,
            ca.as_deref(),
            sources,
        )
        .map_err(|e| match sources {
            Some(dir) => BuildError::InvalidSetting {
                option: "--offline",
                value: dir.display().to_string(),
                reason: format!("cannot read the sources folder: {e}"),
            },
            None => BuildError::Internal(e.to_string()),
        })?;
        let dockerfile_path = plan
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        let mut l = common.clone();
        let mut build_args = HashMap::new();
        if plan.dockerfile.is_some() {
            // A Dockerfile repository's image is this one: its labels and build args (both in
            // the env hash) go here.
            l.extend(req.labels.clone());
            build_args.extend(req.dockerfile_build_args());
        }
        l.insert(labels::KIND.to_string(), "env".into());
        let span = info_span!("build_env", %env_hash);
        builder
            .build(
                ctx,
                &env_image,
                &dockerfile_path,
                l,
                build_args,
                req.no_cache,
                &req.limits,
                track,
                &mut log,
            )
            .instrument(span)
            .await?;
    }

    // Not in the env hash: data are mounted at launch, not built in.
    let data = if plan.dockerfile.is_some() {
        Vec::new()
    } else {
        berth_buildpacks::data_requirements(&co.files)?
    };
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
        l.extend(req.labels.clone());
        l.insert(labels::KIND.to_string(), "repo".into());
        l.insert(labels::TREE.to_string(), co.tree.clone());
        if !data.is_empty() {
            l.insert(labels::DATA.to_string(), data.join(","));
        }
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
            // The environment's package record, pinned by its digest in a label.
            if let Some((_, bytes)) = record::read_packages(engine, &env_image).await? {
                l.insert(labels::PACKAGES.to_string(), record::digest(&bytes));
            }
            let df = context::repo_dockerfile(&env_image, &req.repo_dir, req.user_id, &l);
            let ctx = context::repo_context(&plan, &co.files, &df)
                .map_err(|e| BuildError::Internal(e.to_string()))?;
            let span = info_span!("build_repo", tree = %co.tree);
            builder
                .build(
                    ctx,
                    &name,
                    "Dockerfile",
                    HashMap::new(),
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
    let pushed = match &req.registry {
        Some(r) => {
            report(BuildEvent::Phase(Phase::Pushing));
            Some(registry::push(engine, r, &env_image, &image, report).await?)
        }
        None => None,
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
        data,
        pushed,
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
    fn repo2docker_settings_are_checked() {
        let ok = BuildRequest::new("x");
        assert!(ok.validate().is_ok());
        let mut good = BuildRequest::new("x");
        good.user_id = 1234;
        good.user_name = "ana".into();
        good.repo_dir = "/srv/repo".into();
        good.labels.insert("team".into(), "x".into());
        good.labels
            .insert("org.opencontainers.image.title".into(), "a b".into());
        good.build_args.insert("VERSION".into(), "1.2".into());
        good.subdir = Some("./sub/".into());
        assert!(good.validate().is_ok(), "{:?}", good.validate());
        type Change = Box<dyn Fn(&mut BuildRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("invalid --user-id", Box::new(|r| r.user_id = 0)),
            ("invalid --user-id", Box::new(|r| r.user_id = 70000)),
            (
                "invalid --user-name",
                Box::new(|r| r.user_name = "Ana".into()),
            ),
            (
                "invalid --user-name",
                Box::new(|r| r.user_name = "a b".into()),
            ),
            (
                "invalid --user-name",
                Box::new(|r| r.user_name = "-a".into()),
            ),
            (
                "invalid --user-name",
                Box::new(|r| r.user_name = "x".repeat(33)),
            ),
            (
                "invalid --user-name",
                Box::new(|r| r.user_name = "root".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "rel/dir".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/a/../etc".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/a b".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/a;rm".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/usr".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/proc/x".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/srv/venv".into()),
            ),
            (
                "invalid --target-repo-dir",
                Box::new(|r| r.repo_dir = "/srv/x/".into()),
            ),
            (
                "invalid --label",
                Box::new(|r| {
                    r.labels.insert("berth.commit".into(), "x".into());
                }),
            ),
            (
                "invalid --label",
                Box::new(|r| {
                    r.labels.insert("".into(), "x".into());
                }),
            ),
            (
                "invalid --label",
                Box::new(|r| {
                    r.labels.insert("k".into(), "a\nb".into());
                }),
            ),
            (
                "invalid --build-arg",
                Box::new(|r| {
                    r.build_args.insert("A-B".into(), "x".into());
                }),
            ),
            ("--subdir", Box::new(|r| r.subdir = Some("../up".into()))),
        ];
        for (want, change) in cases {
            let mut r = BuildRequest::new("x");
            change(&mut r);
            let e = r.validate().expect_err(want).to_string();
            assert!(e.starts_with(want), "{want}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let mut long = BuildRequest::new("x");
        long.user_name = "y".repeat(10_000);
        assert!(long.validate().unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn dockerfile_build_args_follow_repo2docker() {
        let mut r = BuildRequest::new("x");
        let args = r.dockerfile_build_args();
        assert_eq!(args.get("NB_USER").map(String::as_str), Some("jovyan"));
        assert_eq!(args.get("NB_UID").map(String::as_str), Some("1000"));
        assert!(!args.contains_key("REPO_DIR"));
        r.repo_dir = "/srv/repo".into();
        r.build_args.insert("NB_UID".into(), "2000".into());
        let args = r.dockerfile_build_args();
        assert_eq!(args.get("REPO_DIR").map(String::as_str), Some("/srv/repo"));
        assert_eq!(args.get("NB_UID").map(String::as_str), Some("2000"));
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
