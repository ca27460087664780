//! `environment.yml`: conda environments, mapped onto PyPI because no conda channel is reachable
//! here. The mapping is the seam where a real conda solver can go later.

use serde_yaml::Value;

use crate::addons::{common_plan, major_minor};
use crate::python::normalize;
use crate::{BuildPlan, Buildpack, BuildpackError, PlanOptions, SpecDir};

/// How a conda package name maps onto PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondaMapping {
    /// Published on PyPI under the same name.
    Same,
    /// Published on PyPI under another name.
    Renamed(&'static str),
    /// Not a Python package on PyPI (a compiler, a C library, an R package); the reason says
    /// what to do instead.
    Unavailable(&'static str),
    /// One of conda's own tools (`mamba`, `conda`, `conda-build`, …): meaningless without
    /// conda, and on PyPI possibly an unrelated project.
    CondaTool,
    /// The name means a different project on PyPI; never installed by accident. The text says
    /// what it is on conda-forge.
    Ambiguous(&'static str),
}

/// Conda packages whose PyPI name differs (conda-forge name, PyPI name).
const RENAMES: &[(&str, &str)] = &[
    // conda-forge's `dask` is the full distribution (dataframe, array, distributed, pyarrow);
    // its core alone is `dask-core`.
    ("dask", "dask[complete]"),
    ("dask-core", "dask"),
    ("matplotlib-base", "matplotlib"),
    ("msgpack-python", "msgpack"),
    ("py-opencv", "opencv-python"),
    ("opencv", "opencv-python"),
    ("pytables", "tables"),
    ("pytorch", "torch"),
    ("pytorch-cpu", "torch"),
    ("pyqt", "PyQt5"),
    ("python-kaleido", "kaleido"),
    ("python-graphviz", "graphviz"),
    ("pywin32-on-windows", "pywin32"),
    ("tensorflow-cpu", "tensorflow"),
    (
        "jupyter_contrib_nbextensions",
        "jupyter-contrib-nbextensions",
    ),
    ("ruamel_yaml", "ruamel.yaml"),
    ("typing_extensions", "typing-extensions"),
];

/// Conda's own tools: package managers and build tools of the conda ecosystem. No conda is in
/// a berth image, so they are skipped with a warning; on PyPI some of these names belong to
/// unrelated projects (`mamba` is a test runner there).
const CONDA_TOOLS: &[&str] = &[
    "anaconda",
    "anaconda-client",
    "boa",
    "conda",
    "conda-build",
    "conda-forge-pinning",
    "conda-libmamba-solver",
    "conda-lock",
    "conda-pack",
    "conda-smithy",
    "conda-verify",
    "constructor",
    "libmamba",
    "libmambapy",
    "mamba",
    "micromamba",
    "miniforge",
    "nb_conda",
    "nb_conda_kernels",
    "rattler-build",
];

/// Names that mean different projects on conda-forge and PyPI (conda-forge name, what it is
/// there). Installing the PyPI project of the same name would be an accident, so they are
/// skipped with a warning that names the PyPI package to list under `pip:` if that is meant.
const AMBIGUOUS: &[(&str, &str)] = &[
    (
        "blast",
        "NCBI's BLAST+ command-line tools (PyPI's `blast` is unrelated)",
    ),
    (
        "cmake",
        "the CMake build tool (install it with apt.txt; PyPI's `cmake` is a wheel of it)",
    ),
    ("git-lfs", "the git LFS client"),
    (
        "graphviz",
        "the Graphviz C tools (PyPI's `graphviz` is a Python interface)",
    ),
    (
        "jq",
        "the jq command-line tool (PyPI's `jq` is Python bindings)",
    ),
    ("ninja", "the ninja build tool"),
    ("pip-tools", "a conda packaging of pip-tools"),
    ("poppler", "the poppler PDF library"),
    ("pymc3", "PyMC3 with its conda compilers"),
    ("python-build", "a conda packaging of `build`"),
    ("sed", "GNU sed"),
    ("tar", "GNU tar"),
    ("unzip", "the unzip tool"),
    ("vim", "the vim editor"),
    ("zip", "the zip tool"),
];

/// Conda packages that are not Python packages on PyPI.
const UNAVAILABLE: &[&str] = &[
    "blas",
    "boost",
    "cairo",
    "cmdstan",
    "compilers",
    "cudatoolkit",
    "cudnn",
    "curl",
    "eigen",
    "fftw",
    "ffmpeg",
    "gcc",
    "gdal",
    "geos",
    "gfortran",
    "git",
    "go",
    "gxx",
    "hdf5",
    "icu",
    "imagemagick",
    "julia",
    "libblas",
    "libgdal",
    "libiconv",
    "liblapack",
    "libnetcdf",
    "make",
    "mkl",
    "nodejs",
    "octave",
    "openblas",
    "openjdk",
    "openssl",
    "pandoc",
    "perl",
    "proj",
    "qt",
    "ruby",
    "rust",
    "sqlite",
    "texlive-core",
    "tini",
    "tk",
    "wget",
    "xz",
    "zlib",
];

/// Maps a conda package name onto PyPI.
pub fn conda_to_pypi(name: &str) -> CondaMapping {
    let lower = name.to_ascii_lowercase();
    if CONDA_TOOLS.contains(&lower.as_str()) {
        return CondaMapping::CondaTool;
    }
    if let Some((_, what)) = AMBIGUOUS.iter().find(|(n, _)| *n == lower) {
        return CondaMapping::Ambiguous(what);
    }
    if let Some((_, to)) = RENAMES.iter().find(|(from, _)| *from == lower) {
        return CondaMapping::Renamed(to);
    }
    if lower.starts_with("r-") || lower == "r-base" {
        return CondaMapping::Unavailable("R packages are not on PyPI");
    }
    if lower.starts_with("__") {
        return CondaMapping::Unavailable("a conda virtual package");
    }
    if UNAVAILABLE.contains(&lower.as_str()) {
        return CondaMapping::Unavailable(
            "not a Python package; list its Debian package in apt.txt",
        );
    }
    CondaMapping::Same
}

/// `environment.yml`/`environment.yaml` in the spec folder.
pub(crate) struct CondaBuildpack;

impl Buildpack for CondaBuildpack {
    fn name(&self) -> &'static str {
        "conda"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.find(&["environment.yml", "environment.yaml"])
            .is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let path = spec
            .find(&["environment.yml", "environment.yaml"])
            .unwrap_or_else(|| spec.path("environment.yml"));
        let env = parse_environment(&path, &spec.read_text(&path)?)?;
        let requested = env.python.clone().map(|v| (path.clone(), v));
        let mut plan = common_plan(spec, self.name(), requested, opts)?;
        plan.env_files.push(path.clone());
        plan.warnings.extend(env.warnings);
        let base = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for pip in env.pip {
            if let Some(file) = pip.strip_prefix("-r ").map(str::trim) {
                let joined = normalize(base, file).ok_or_else(|| BuildpackError::InvalidSpec {
                    file: path.clone(),
                    message: format!("pip: {file:?} lies outside the repository"),
                })?;
                if spec.repo.get(&joined).is_none() {
                    return Err(BuildpackError::InvalidSpec {
                        file: path.clone(),
                        message: format!("pip: -r {file:?} is not in the repository"),
                    });
                }
                // Followed recursively, as for requirements.txt: nested includes are hashed and
                // checked too.
                let scan = crate::python::scan_requirements(spec, &joined, 1)?;
                plan.env_files.extend(scan.files);
                plan.whole_repo |= scan.local_paths;
                plan.env_files.push(joined.clone());
                plan.requirements_files.push(joined);
                continue;
            }
            let target = pip.strip_prefix("-e ").map(str::trim).unwrap_or(&pip);
            if target.starts_with('.') || target.starts_with('/') || target.starts_with("file:") {
                plan.whole_repo = true;
            }
            plan.packages.push(pip);
        }
        plan.packages.splice(0..0, env.packages);
        Ok(plan)
    }
}

/// What an `environment.yml` says, mapped onto PyPI.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Environment {
    /// `X.Y` from a `python=X.Y` dependency.
    pub python: Option<String>,
    /// Requirement strings for the mapped conda dependencies.
    pub packages: Vec<String>,
    /// The `pip:` section, as written.
    pub pip: Vec<String>,
    /// One line per dependency that could not be mapped.
    pub warnings: Vec<String>,
}

/// Parses an `environment.yml` and maps its dependencies onto PyPI.
///
/// # Errors
/// [`BuildpackError::InvalidSpec`] when the file is not YAML, or `dependencies` is not a list
/// of strings and `pip:` mappings.
pub(crate) fn parse_environment(path: &str, text: &str) -> Result<Environment, BuildpackError> {
    let invalid = |message: String| BuildpackError::InvalidSpec {
        file: path.to_string(),
        message,
    };
    let doc: Value =
        serde_yaml::from_str(text).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
    let mut env = Environment::default();
    let deps = match &doc {
        Value::Mapping(m) => match m.get("dependencies") {
            None | Some(Value::Null) => return Ok(env),
            Some(Value::Sequence(s)) => s,
            Some(_) => return Err(invalid("`dependencies` must be a list".into())),
        },
        Value::Null => return Ok(env),
        _ => return Err(invalid("expected a mapping with `dependencies`".into())),
    };
    for dep in deps {
        match dep {
            Value::String(s) => map_dependency(s, &mut env),
            Value::Number(n) => map_dependency(&n.to_string(), &mut env),
            Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() != Some("pip") {
                        return Err(invalid(format!("unknown dependency section {k:?}")));
                    }
                    let Value::Sequence(items) = v else {
                        return Err(invalid("`pip` must be a list".into()));
                    };
                    for item in items {
                        let Value::String(s) = item else {
                            return Err(invalid(format!("pip: {item:?} is not a string")));
                        };
                        env.pip.push(s.trim().to_string());
                    }
                }
            }
            other => return Err(invalid(format!("dependency {other:?} is not a string"))),
        }
    }
    Ok(env)
}

/// Splits a conda match spec (`name`, `name=1.2`, `name 1.2.*`, `name>=1,<2`,
/// `channel::name=1.2=build`) into name and a PEP 440 specifier.
fn split_spec(spec: &str) -> (String, Option<String>) {
    let spec = spec.rsplit("::").next().unwrap_or(spec).trim();
    let end = spec
        .find(['=', '<', '>', '!', '~', ' '])
        .unwrap_or(spec.len());
    let name = spec[..end].trim().to_string();
    let rest = spec[end..].trim();
    if rest.is_empty() {
        return (name, None);
    }
    // `=1.2=build` and `1.2 build`: drop the build string.
    let version = if let Some(v) = rest.strip_prefix("==") {
        format!("=={}", v.split('=').next().unwrap_or(v).trim())
    } else if let Some(v) = rest.strip_prefix('=') {
        let v = v.split('=').next().unwrap_or(v).trim();
        format!("=={}", fuzzy(v))
    } else if rest.starts_with(['<', '>', '!', '~']) {
        rest.replace(' ', "")
    } else {
        let v = rest.split_whitespace().next().unwrap_or(rest);
        if v.starts_with(['<', '>', '!', '~', '=']) {
            v.to_string()
        } else {
            format!("=={}", fuzzy(v))
        }
    };
    (name, Some(version))
}

/// Conda's `=1.2` means `1.2.*`.
fn fuzzy(v: &str) -> String {
    if v.ends_with('*') {
        v.to_string()
    } else {
        format!("{v}.*")
    }
}

fn map_dependency(spec: &str, env: &mut Environment) {
    let (name, version) = split_spec(spec);
    if name.is_empty() {
        env.warnings.push(format!(
            "conda dependency {spec:?} has no package name; skipped"
        ));
        return;
    }
    if name == "python" {
        env.python = version
            .as_deref()
            .and_then(|v| v.strip_prefix("=="))
            .and_then(major_minor);
        return;
    }
    if name == "pip" {
        return;
    }
    if version.as_deref().is_some_and(|v| v.contains('|')) {
        env.warnings.push(format!(
            "conda dependency {spec:?}: alternatives with | have no PyPI form; installing {name} unpinned"
        ));
        env.packages.push(name);
        return;
    }
    let pypi = match conda_to_pypi(&name) {
        CondaMapping::Same => name.clone(),
        CondaMapping::Renamed(to) => to.to_string(),
        CondaMapping::Unavailable(why) => {
            env.warnings.push(format!(
                "conda dependency {spec:?} cannot be installed from PyPI ({why}); skipped"
            ));
            return;
        }
        CondaMapping::CondaTool => {
            env.warnings.push(format!(
                "conda dependency {spec:?} is one of conda's own tools, which a berth image has no use for (there is no conda in it); skipped"
            ));
            return;
        }
        CondaMapping::Ambiguous(what) => {
            env.warnings.push(format!(
                "conda dependency {spec:?} is {what}, not the PyPI project of that name; skipped (list it under pip: if the PyPI project is meant)"
            ));
            return;
        }
    };
    env.packages.push(match version {
        Some(v) => format!("{pypi}{v}"),
        None => pypi,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_conda_specs() {
        let env = parse_environment(
            "environment.yml",
            "name: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy=1.26\n  - pandas>=2,<3\n  - conda-forge::matplotlib-base 3.8.*\n  - scipy==1.11.4=py311h\n  - nodejs\n  - r-ggplot2\n  - pip\n  - pip:\n    - requests==2.31\n",
        )
        .unwrap();
        assert_eq!(env.python.as_deref(), Some("3.11"));
        assert_eq!(
            env.packages,
            vec![
                "numpy==1.26.*",
                "pandas>=2,<3",
                "matplotlib==3.8.*",
                "scipy==1.11.4"
            ]
        );
        assert_eq!(env.pip, vec!["requests==2.31"]);
        assert_eq!(env.warnings.len(), 2, "{:?}", env.warnings);
        assert!(env.warnings[0].contains("nodejs"));
    }

    #[test]
    fn conda_tools_and_ambiguous_names_are_never_installed() {
        let env = parse_environment(
            "environment.yml",
            "dependencies:\n  - mamba\n  - conda-build=3\n  - graphviz\n  - numpy\n",
        )
        .unwrap();
        assert_eq!(env.packages, vec!["numpy"]);
        assert_eq!(env.warnings.len(), 3, "{:?}", env.warnings);
        assert!(env.warnings[0].contains("\"mamba\" is one of conda's own tools"));
        assert!(env.warnings[2].contains("not the PyPI project"));
    }

    #[test]
    fn rejects_bad_yaml() {
        let e = parse_environment("environment.yml", "dependencies: [numpy\n").unwrap_err();
        assert!(
            e.to_string().starts_with("environment.yml: not valid YAML"),
            "{e}"
        );
        let e = parse_environment("environment.yml", "dependencies: numpy\n").unwrap_err();
        assert!(e.to_string().contains("must be a list"));
        let e = parse_environment("environment.yml", "- a\n- b\n").unwrap_err();
        assert!(e.to_string().contains("expected a mapping"));
    }
}
