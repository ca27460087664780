//! Buildpacks: turn a repository's environment spec into a [`BuildPlan`] and a Dockerfile.
//!
//! The conventions are repo2docker's, in its precedence: a `binder/` or `.binder/` folder, when
//! present, is the only place spec files are read; then `Dockerfile`, `environment.yml`,
//! `Pipfile`/`Pipfile.lock`, `requirements.txt`, `setup.py`, `pyproject.toml`, and a plain
//! Python environment when nothing matches. `runtime.txt`, `apt.txt`, `postBuild` and `start`
//! apply to every buildpack but the Dockerfile one.
//!
//! This crate does no I/O: it reads a [`RepoFiles`] snapshot and returns plain data, so detection
//! and rendering are cheap to test and identical wherever they run.
#![deny(missing_docs)]

mod addons;
mod conda;
mod data;
mod locks;
mod pipfile;
mod python;
mod render;
mod repo;
mod support;

use serde::{Deserialize, Serialize};

pub use conda::{conda_to_pypi, CondaMapping};
pub use data::{data_requirements, parse_data_txt, DATA_FILE};
pub use render::{render_dockerfile, template_source, RenderOptions, ENTRYPOINT_SCRIPT};
pub use repo::{FileEntry, RepoFiles};
pub use support::{
    context_files, offline_context_files, server_lock, ContextFile, OFFLINE_SOURCES_DIR,
    PACKAGES_RECORD,
};

/// Version of the buildpack rules; it enters every env hash, so bump it whenever a rendered
/// Dockerfile or a plan's meaning changes.
pub const BUILDPACK_VERSION: &str = "berth-buildpacks/3";

/// What the kernel environment gets besides the repository's packages: the kernel itself, the
/// preattached cluster's client and workers (the same `dask` and `distributed` everywhere), and
/// `pip` for `%pip install` (repo2docker's kernel environments have pip too). Resolved together
/// with the repository's requirements, so versions the repository pins win.
pub const KERNEL_PACKAGES: &[&str] = &["ipykernel", "dask", "distributed", "pip"];

/// What a repository that brings its own Jupyter server (see [`ServerEnv::Repository`]) gets
/// next to it, unpinned, so its own pins (`jupyterlab=3`) choose compatible versions: the
/// `jupyter lab` command berth starts, the Dask extension and its proxy, and bokeh for the
/// dashboard.
pub const REPOSITORY_SERVER_PACKAGES: &[&str] = &[
    "jupyterlab",
    "dask-labextension",
    "jupyter-server-proxy",
    "bokeh",
];

/// Package names (PEP 503 normalized) that make a repository's environment its own Jupyter
/// server, as in repo2docker, where such packages land in the server's environment: servers,
/// front ends and server extensions.
pub const SERVER_PACKAGE_NAMES: &[&str] = &[
    "jupyterlab",
    "jupyter-server",
    "notebook",
    "nbclassic",
    "jupyter",
    "jupyterhub",
    "jupyterlab-server",
    "retrolab",
    "voila",
    "jupyter-server-proxy",
    "jupyterlab-git",
    "jupyter-resource-usage",
    "dask-labextension",
    "jupyterlab-lsp",
    "jupyter-lsp",
    "jupyter-collaboration",
    "nbgitpuller",
    "jupytext",
];

/// Where the kernel environment lives inside the image (a virtual environment; `$VENV_DIR`).
pub const VENV_DIR: &str = "/srv/venv";

/// Where berth's pinned server environment lives inside the image (a virtual environment).
pub const SERVER_DIR: &str = "/srv/server";

/// Where the dashboard's extra packages live (bokeh and what it needs beyond the kernel
/// environment), a `--target` folder only the scheduler puts on its `PYTHONPATH`.
pub const DASHBOARD_DIR: &str = "/srv/dashboard";

/// Jupyter data folder berth owns (`$JUPYTER_PATH`'s first entry): the `python3` kernel spec
/// that runs the kernel environment, and JupyterLab's settings overrides.
pub const JUPYTER_DATA_DIR: &str = "/srv/berth/jupyter";

/// The version of uv (from PyPI) that installs Python packages in a build.
pub const UV_VERSION: &str = "0.13.9";

/// Errors of detection and planning. Each message is one line that names the file at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildpackError {
    /// Both `binder/` and `.binder/` exist; repo2docker refuses this too.
    #[error("both binder/ and .binder/ exist: keep one of them")]
    AmbiguousBinderDir,
    /// A spec file could not be parsed.
    #[error("{file}: {message}")]
    InvalidSpec {
        /// Path of the file inside the repository.
        file: String,
        /// What is wrong, with a line number where there is one.
        message: String,
    },
    /// The requested Python version is on no base image, uv cannot install it, and no fallback
    /// was allowed.
    #[error("{file} asks for Python {requested}, but the base images have only {available} and no uv-managed Python can be installed ({managed}); pass --python-fallback to build with the nearest version")]
    PythonUnavailable {
        /// The file that asked for the version.
        file: String,
        /// The version asked for, as `X.Y`.
        requested: String,
        /// The versions the base images have, comma-separated.
        available: String,
        /// Why uv cannot install it, on one line (see [`ManagedPython::Unavailable`]).
        managed: String,
    },
}

/// Whether a Python that no base image has may be installed by uv (`uv python install`, from
/// uv's download source or a mirror) in the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedPython {
    /// uv can download it: its download source answered.
    Available {
        /// The mirror uv downloads from (uv's `UV_PYTHON_INSTALL_MIRROR`, an `http://` or
        /// `https://` URL); `None` for uv's own source.
        mirror: Option<String>,
    },
    /// uv cannot; the reason, on one line (downloads turned off, the source unreachable).
    Unavailable(String),
}

impl Default for ManagedPython {
    /// [`ManagedPython::Unavailable`]: planning alone does not reach the network.
    fn default() -> Self {
        ManagedPython::Unavailable("uv-managed Pythons were not tried".into())
    }
}

/// Options that shape a plan but are not in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Python versions (`X.Y`) the base image can provide, best first; the first is the default.
    pub available_pythons: Vec<String>,
    /// Build with the nearest available Python when the requested one is missing (and uv
    /// cannot install it).
    pub python_fallback: bool,
    /// Whether a Python 3 version that is not in `available_pythons` may be installed by uv.
    #[serde(default)]
    pub managed_python: ManagedPython,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            // Debian bookworm ships exactly one CPython.
            available_pythons: vec!["3.11".into()],
            python_fallback: false,
            managed_python: ManagedPython::default(),
        }
    }
}

/// The Python interpreter of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonChoice {
    /// The version the repository asked for (`X.Y`), if it asked.
    pub requested: Option<String>,
    /// The version that will be installed (`X.Y`).
    pub version: String,
    /// True when `version` differs from `requested` because of `--python-fallback`.
    pub fallback: bool,
    /// True when no base image has `version` and uv installs it (`uv python install`); the
    /// build then starts from the default base image. Absent from the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub managed: bool,
    /// For a `managed` Python, the mirror uv downloads it from (`UV_PYTHON_INSTALL_MIRROR`);
    /// `None` for uv's own source. Absent from the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// How the repository itself is installed into the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalInstall {
    /// `pip install -e .`, as repo2docker does for `setup.py`.
    Editable,
    /// `pip install .`, as repo2docker does for `pyproject.toml`.
    Package,
}

/// Everything needed to build an environment, as plain serializable data.
///
/// Paths are relative to the repository root, with `/` separators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    /// Name of the buildpack that made the plan (`dockerfile`, `conda`, `pipfile`,
    /// `requirements`, `setup.py`, `pyproject`, `python`).
    pub buildpack: String,
    /// Folder the spec files were read from: `""` (the root), `binder` or `.binder`.
    pub spec_dir: String,
    /// Files whose bytes enter the env hash, sorted.
    pub env_files: Vec<String>,
    /// True when the environment depends on the whole repository, whose every file then enters
    /// the env hash and the environment build.
    pub whole_repo: bool,
    /// The user's Dockerfile, for the `dockerfile` buildpack; nothing else below applies then.
    pub dockerfile: Option<String>,
    /// Python interpreter, absent for the `dockerfile` buildpack.
    pub python: Option<PythonChoice>,
    /// Debian packages from `apt.txt`.
    pub apt_packages: Vec<String>,
    /// Requirement strings installed together with [`KERNEL_PACKAGES`] (mapped from
    /// `environment.yml` or `Pipfile`). Local paths in them are relative to the spec folder,
    /// where the install runs.
    pub packages: Vec<String>,
    /// Requirements files installed with `-r`, resolved together with `packages`.
    pub requirements_files: Vec<String>,
    /// A lock installed exactly, without resolving; `packages` and `requirements_files` are
    /// empty then.
    pub lock: Option<Lock>,
    /// Which environment the Jupyter server runs from.
    pub server: ServerEnv,
    /// How the repository itself is installed, if it is.
    pub local_install: Option<LocalInstall>,
    /// The `postBuild` script, run as the user at build time.
    pub post_build: Option<String>,
    /// The `start` script, which wraps the container's command.
    pub start: Option<String>,
    /// Things the user should know: unmapped dependencies, fallbacks.
    pub warnings: Vec<String>,
}

/// A locked input: installed as it is, without resolving, with every hash it records checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Lock {
    /// uv's `uv.lock` with the `pyproject.toml` beside it, installed with `uv sync --locked`
    /// (an out-of-date lock fails the build).
    Uv {
        /// The `uv.lock` file.
        file: String,
        /// Whether the project itself is a package that is installed (editable), as `uv sync`
        /// does when `pyproject.toml` has a `[build-system]`.
        installs_project: bool,
        /// [`KERNEL_PACKAGES`] the lock lacks; added afterwards, resolved against the lock.
        missing: Vec<String>,
    },
    /// A PEP 751 `pylock.toml`, installed with `uv pip install -r pylock.toml`.
    Pylock {
        /// The lock file.
        file: String,
        /// [`KERNEL_PACKAGES`] the lock lacks.
        missing: Vec<String>,
    },
    /// A `requirements.txt` whose requirements carry `--hash`, installed with hashes required
    /// (pip's hash-checking mode).
    HashedRequirements {
        /// The requirements file.
        file: String,
        /// [`KERNEL_PACKAGES`] the file lacks.
        missing: Vec<String>,
    },
}

impl Lock {
    /// The lock file's repository path.
    pub fn file(&self) -> &str {
        match self {
            Lock::Uv { file, .. }
            | Lock::Pylock { file, .. }
            | Lock::HashedRequirements { file, .. } => file,
        }
    }

    /// [`KERNEL_PACKAGES`] the lock lacks, which berth adds.
    pub fn missing(&self) -> &[String] {
        match self {
            Lock::Uv { missing, .. }
            | Lock::Pylock { missing, .. }
            | Lock::HashedRequirements { missing, .. } => missing,
        }
    }
}

/// Which environment runs the Jupyter server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServerEnv {
    /// berth's own server environment at [`SERVER_DIR`], pinned by the lock berth ships for
    /// the Python version; the kernel environment holds only the repository's packages and
    /// [`KERNEL_PACKAGES`].
    #[default]
    Berth,
    /// The repository asks for Jupyter server packages itself ([`SERVER_PACKAGE_NAMES`]): its
    /// kernel environment is the server's too, as in repo2docker, with
    /// [`REPOSITORY_SERVER_PACKAGES`] added unpinned.
    Repository,
}

/// A spec convention. Implementations are tried in [`buildpacks`] order; the first that
/// detects the repository makes the plan.
pub trait Buildpack {
    /// Short name, recorded in plans and image labels.
    fn name(&self) -> &'static str;
    /// Whether this buildpack's spec file is present in `spec`.
    fn detect(&self, spec: &SpecDir<'_>) -> bool;
    /// Makes the plan.
    ///
    /// # Errors
    /// [`BuildpackError`] when a spec file cannot be parsed or asks for what is not available.
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError>;
}

/// The repository seen through the folder spec files are read from.
pub struct SpecDir<'a> {
    /// The whole repository.
    pub repo: &'a RepoFiles,
    /// `""`, `binder` or `.binder`.
    pub dir: &'static str,
}

impl<'a> SpecDir<'a> {
    /// Chooses the spec folder as repo2docker does: `binder/` or `.binder/` when present.
    ///
    /// # Errors
    /// [`BuildpackError::AmbiguousBinderDir`] when both exist.
    pub fn new(repo: &'a RepoFiles) -> Result<Self, BuildpackError> {
        let dir = match (repo.has_dir("binder"), repo.has_dir(".binder")) {
            (true, true) => return Err(BuildpackError::AmbiguousBinderDir),
            (true, false) => "binder",
            (false, true) => ".binder",
            (false, false) => "",
        };
        Ok(Self { repo, dir })
    }

    /// The repository path of a spec file name.
    pub fn path(&self, name: &str) -> String {
        if self.dir.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.dir)
        }
    }

    /// The first of `names` that exists as a file (or symlink) in the spec folder.
    pub fn find(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .map(|n| self.path(n))
            .find(|p| self.repo.get(p).is_some())
    }

    /// Text of a spec file.
    ///
    /// # Errors
    /// [`BuildpackError::InvalidSpec`] when it is not UTF-8 or is a symlink.
    pub fn read_text(&self, path: &str) -> Result<String, BuildpackError> {
        let bytes = self
            .repo
            .read(path)
            .ok_or_else(|| BuildpackError::InvalidSpec {
                file: path.to_string(),
                message: "is not a regular file".into(),
            })?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BuildpackError::InvalidSpec {
            file: path.to_string(),
            message: "is not valid UTF-8".into(),
        })
    }

    /// Whether repo2docker would read root-level `setup.py`/`pyproject.toml`: only without a
    /// binder folder.
    pub fn root_files_apply(&self) -> bool {
        self.dir.is_empty()
    }
}

/// All buildpacks in repo2docker's precedence.
pub fn buildpacks() -> Vec<Box<dyn Buildpack>> {
    vec![
        Box::new(python::DockerfileBuildpack),
        Box::new(locks::PylockBuildpack),
        Box::new(locks::UvLockBuildpack),
        Box::new(conda::CondaBuildpack),
        Box::new(pipfile::PipfileBuildpack),
        Box::new(python::RequirementsBuildpack),
        Box::new(python::SetupPyBuildpack),
        Box::new(python::PyprojectBuildpack),
        Box::new(python::PythonBuildpack),
    ]
}

/// Detects the repository's buildpack and makes its plan.
///
/// # Errors
/// [`BuildpackError`] for an ambiguous binder folder, an unparseable spec file, unsafe `apt.txt`
/// lines or an unavailable Python.
pub fn plan(repo: &RepoFiles, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
    let spec = SpecDir::new(repo)?;
    let all = buildpacks();
    let chosen = all.iter().find(|bp| bp.detect(&spec));
    let mut plan = match chosen {
        Some(bp) => bp.plan(&spec, opts)?,
        None => python::PythonBuildpack.plan(&spec, opts)?,
    };
    plan.env_files.sort();
    plan.env_files.dedup();
    if plan.dockerfile.is_none() {
        choose_server(&spec, &mut plan)?;
        let python = plan
            .python
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_default();
        if plan.server == ServerEnv::Berth && server_lock(&python).is_none() {
            plan.warnings.push(format!(
                "berth ships no server environment lock for Python {python}: JupyterLab's packages are resolved at build time, so they are not pinned"
            ));
        }
    }
    Ok(plan)
}

/// PEP 503 normalized form of a package name: lower case, runs of `-`, `_`, `.` as one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Decides [`ServerEnv`]: a repository whose packages (or requirements files, or lock) name a
/// Jupyter server package gets its environment as the server, with a visible note.
fn choose_server(spec: &SpecDir<'_>, plan: &mut BuildPlan) -> Result<(), BuildpackError> {
    let mut names: Vec<String> = plan
        .packages
        .iter()
        .filter_map(|p| requirement_name(p))
        .collect();
    for f in &plan.requirements_files {
        names.extend(python::scan_requirements(spec, f, 0)?.names);
    }
    if let Some(lock) = &plan.lock {
        names.extend(locks::locked_names(spec, lock)?);
    }
    let mut asked: Vec<String> = names
        .into_iter()
        .filter(|n| SERVER_PACKAGE_NAMES.contains(&n.as_str()))
        .collect();
    asked.sort();
    asked.dedup();
    if !asked.is_empty() {
        plan.server = ServerEnv::Repository;
        plan.warnings.push(format!(
            "the repository asks for Jupyter server packages itself ({}): its environment runs the Jupyter server too, as in repo2docker, instead of berth's pinned server environment",
            asked.join(", ")
        ));
    }
    Ok(())
}

/// The normalized package name of a requirement string, if it names a package (not a path,
/// URL or pip option).
pub(crate) fn requirement_name(req: &str) -> Option<String> {
    let req = req.trim();
    if req.starts_with('-')
        || req.starts_with('.')
        || req.starts_with('/')
        || req.contains("://") && !req.contains('@')
    {
        return None;
    }
    let end = req
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(req.len());
    let name = &req[..end];
    (!name.is_empty()).then(|| normalize_name(name))
}
