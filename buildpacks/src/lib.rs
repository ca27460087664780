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
mod pipfile;
mod python;
mod render;
mod repo;

use serde::{Deserialize, Serialize};

pub use conda::{conda_to_pypi, CondaMapping};
pub use render::{render_dockerfile, RenderOptions, ENTRYPOINT_SCRIPT};
pub use repo::{FileEntry, RepoFiles};

/// Version of the buildpack rules; it enters every env hash, so bump it whenever a rendered
/// Dockerfile or a plan's meaning changes.
pub const BUILDPACK_VERSION: &str = "berth-buildpacks/2";

/// Packages every Python environment gets, so that JupyterLab and a Dask cluster (with its
/// dashboard, which needs bokeh) work from the same image. Requirements of the repository are resolved together with these, so versions the
/// repository pins win.
pub const BASE_PACKAGES: &[&str] = &[
    "jupyterlab",
    "jupyter-server",
    "dask",
    "distributed",
    "bokeh",
];

/// Where the environment's Python packages live inside the image.
pub const VENV_DIR: &str = "/srv/venv";

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
    /// The requested Python version is not available and no fallback was allowed.
    #[error("{file} asks for Python {requested}, but this base image has only {available}; pass --python-fallback to build with the nearest version")]
    PythonUnavailable {
        /// The file that asked for the version.
        file: String,
        /// The version asked for, as `X.Y`.
        requested: String,
        /// The versions there are, comma-separated.
        available: String,
    },
}

/// Options that shape a plan but are not in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Python versions (`X.Y`) the base image can provide, best first; the first is the default.
    pub available_pythons: Vec<String>,
    /// Build with the nearest available Python when the requested one is missing.
    pub python_fallback: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            // Debian bookworm ships exactly one CPython.
            available_pythons: vec!["3.11".into()],
            python_fallback: false,
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
    /// Requirement strings installed together with [`BASE_PACKAGES`] (mapped from
    /// `environment.yml` or `Pipfile`).
    pub packages: Vec<String>,
    /// Requirements files installed with `-r`, resolved together with `packages`.
    pub requirements_files: Vec<String>,
    /// How the repository itself is installed, if it is.
    pub local_install: Option<LocalInstall>,
    /// The `postBuild` script, run as the user at build time.
    pub post_build: Option<String>,
    /// The `start` script, which wraps the container's command.
    pub start: Option<String>,
    /// Things the user should know: unmapped dependencies, fallbacks.
    pub warnings: Vec<String>,
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
    Ok(plan)
}
