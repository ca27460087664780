//! Locked inputs, installed exactly and without resolving: uv's `uv.lock` (with its
//! `pyproject.toml`) and PEP 751's `pylock.toml`. Hashed `requirements.txt` files are found by
//! the requirements buildpack (`python.rs`) and share the helpers here.
//!
//! A lock beats the unlocked spec beside it: these buildpacks come before `environment.yml`,
//! `Pipfile`, `requirements.txt`, `setup.py` and `pyproject.toml` in [`crate::buildpacks`]
//! (only a `Dockerfile` comes first), so committing the `pylock.toml` that `berth lock` writes
//! makes the next build exact.

use std::str::FromStr;

use crate::addons::common_plan;
use crate::{
    normalize_name, BuildPlan, Buildpack, BuildpackError, Lock, PlanOptions, SpecDir,
    KERNEL_PACKAGES,
};

fn invalid(file: &str, message: String) -> BuildpackError {
    BuildpackError::InvalidSpec {
        file: file.to_string(),
        message,
    }
}

fn parse_toml(file: &str, text: &str) -> Result<toml::Table, BuildpackError> {
    toml::Table::from_str(text).map_err(|e| {
        let msg = e.to_string();
        invalid(
            file,
            format!("not valid TOML: {}", msg.lines().next().unwrap_or("")),
        )
    })
}

/// [`KERNEL_PACKAGES`] that `names` (normalized) lack.
pub(crate) fn missing_kernel_packages(names: &[String]) -> Vec<String> {
    KERNEL_PACKAGES
        .iter()
        .filter(|k| !names.iter().any(|n| n == *k))
        .map(|k| k.to_string())
        .collect()
}

/// The visible warning for packages a lock lacks.
pub(crate) fn warn_missing(plan: &mut BuildPlan, file: &str, missing: &[String]) {
    if !missing.is_empty() {
        plan.warnings.push(format!(
            "{file} does not lock {}, which the kernel and its Dask cluster need: berth adds them, resolved against the locked versions (lock them to make the environment fully exact)",
            missing.join(", ")
        ));
    }
}

/// Normalized names of the packages a lock installs (for [`crate::ServerEnv`]'s choice).
pub(crate) fn locked_names(spec: &SpecDir<'_>, lock: &Lock) -> Result<Vec<String>, BuildpackError> {
    match lock {
        Lock::Uv { file, .. } => Ok(uv_lock(file, &spec.read_text(file)?)?.names),
        Lock::Pylock { file, .. } => Ok(pylock(file, &spec.read_text(file)?, None)?),
        Lock::HashedRequirements { file, .. } => {
            Ok(crate::python::scan_requirements(spec, file, 0)?.names)
        }
    }
}

/// `uv.lock` with `pyproject.toml` in the spec folder: `uv sync --locked`.
pub(crate) struct UvLockBuildpack;

impl Buildpack for UvLockBuildpack {
    fn name(&self) -> &'static str {
        "uv-lock"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.find(&["uv.lock"]).is_some() && spec.find(&["pyproject.toml"]).is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let file = spec.path("uv.lock");
        let project = spec.path("pyproject.toml");
        let parsed = uv_lock(&file, &spec.read_text(&file)?)?;
        let doc = parse_toml(&project, &spec.read_text(&project)?)?;
        let installs_project = doc.contains_key("build-system")
            || doc
                .get("tool")
                .and_then(|t| t.get("uv"))
                .and_then(|u| u.get("package"))
                .and_then(|p| p.as_bool())
                .unwrap_or(false);
        let mut plan = common_plan(spec, self.name(), None, opts)?;
        plan.env_files.push(file.clone());
        plan.env_files.push(project);
        // The project itself, or path dependencies, make the environment depend on the tree.
        plan.whole_repo |= installs_project || parsed.local_paths;
        let missing = missing_kernel_packages(&parsed.names);
        warn_missing(&mut plan, &file, &missing);
        plan.lock = Some(Lock::Uv {
            file,
            installs_project,
            missing,
        });
        Ok(plan)
    }
}

/// PEP 751 `pylock.toml` in the spec folder: `uv pip install -r pylock.toml`.
pub(crate) struct PylockBuildpack;

impl Buildpack for PylockBuildpack {
    fn name(&self) -> &'static str {
        "pylock"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.find(&["pylock.toml"]).is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let file = spec.path("pylock.toml");
        let text = spec.read_text(&file)?;
        let mut plan = common_plan(spec, self.name(), None, opts)?;
        let python = plan.python.as_ref().map(|p| p.version.clone());
        let names = pylock(&file, &text, python.as_deref())?;
        plan.env_files.push(file.clone());
        if text.contains("directory") || text.contains("editable") {
            plan.whole_repo = true;
        }
        let missing = missing_kernel_packages(&names);
        warn_missing(&mut plan, &file, &missing);
        plan.lock = Some(Lock::Pylock { file, missing });
        Ok(plan)
    }
}

struct UvLock {
    names: Vec<String>,
    local_paths: bool,
}

/// Reads a `uv.lock`: the locked packages' names (the project itself excluded) and whether any
/// comes from a path.
fn uv_lock(file: &str, text: &str) -> Result<UvLock, BuildpackError> {
    let doc = parse_toml(file, text)?;
    if !doc.contains_key("version") {
        return Err(invalid(file, "is not a uv lock file (no `version`)".into()));
    }
    let mut out = UvLock {
        names: Vec::new(),
        local_paths: false,
    };
    let packages = doc
        .get("package")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    for p in &packages {
        let name = p
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| invalid(file, "a [[package]] has no name".into()))?;
        let source = p.get("source").and_then(|s| s.as_table());
        let local = source.is_some_and(|s| {
            s.contains_key("virtual")
                || s.contains_key("editable")
                || s.contains_key("directory")
                || s.contains_key("path")
        });
        if local {
            // The project itself (`virtual = "."`/`editable = "."`) or a path dependency.
            if source
                .and_then(|s| s.values().next())
                .and_then(|v| v.as_str())
                != Some(".")
            {
                out.local_paths = true;
            }
            continue;
        }
        out.names.push(normalize_name(name));
    }
    Ok(out)
}

/// Reads a PEP 751 lock: the packages' names. With `python` (`X.Y`), checks that every package
/// that only has wheels has one for Linux x86_64 and that Python.
fn pylock(file: &str, text: &str, python: Option<&str>) -> Result<Vec<String>, BuildpackError> {
    let doc = parse_toml(file, text)?;
    if !doc.contains_key("lock-version") {
        return Err(invalid(
            file,
            "is not a PEP 751 lock file (no `lock-version`)".into(),
        ));
    }
    let packages = doc
        .get("packages")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let mut names = Vec::new();
    for p in &packages {
        let name = p
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| invalid(file, "a [[packages]] entry has no name".into()))?;
        names.push(normalize_name(name));
        let Some(py) = python else { continue };
        // A marker may exclude the package on this platform; an sdist or another source can
        // be built here.
        if p.get("marker").is_some()
            || ["sdist", "vcs", "directory", "archive"]
                .iter()
                .any(|k| p.get(k).is_some())
        {
            continue;
        }
        let wheels: Vec<String> = p
            .get("wheels")
            .and_then(|w| w.as_array())
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| {
                        w.get("name")
                            .and_then(|n| n.as_str())
                            .map(str::to_string)
                            .or_else(|| {
                                w.get("url")
                                    .and_then(|u| u.as_str())
                                    .and_then(|u| u.rsplit('/').next())
                                    .map(str::to_string)
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if wheels.is_empty() {
            continue;
        }
        if !wheels.iter().any(|w| wheel_fits(w, py)) {
            let version = p.get("version").and_then(|v| v.as_str()).unwrap_or("?");
            return Err(invalid(
                file,
                format!(
                    "{name} {version} has no wheel for Linux x86_64 and Python {py} (the lock has only {}); lock it on this platform",
                    wheels.join(", ")
                ),
            ));
        }
    }
    Ok(names)
}

/// Whether a wheel file name (`dist-ver[-build]-pytag-abitag-plattag.whl`, PEP 427) installs on
/// glibc Linux x86_64 with CPython `python` (`X.Y`).
pub(crate) fn wheel_fits(wheel: &str, python: &str) -> bool {
    let Some(stem) = wheel.strip_suffix(".whl") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return false;
    }
    let (py_tags, abi_tags, plat_tags) = (
        parts[parts.len() - 3],
        parts[parts.len() - 2],
        parts[parts.len() - 1],
    );
    let platform_ok = plat_tags.split('.').any(|t| {
        t == "any"
            || (t.ends_with("_x86_64") && (t.starts_with("manylinux") || t == "linux_x86_64"))
    });
    let minor: u32 = python
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let abi3 = abi_tags.split('.').any(|a| a == "abi3");
    let python_ok = py_tags.split('.').any(|t| {
        if t == "py3" || t == "py2.py3" || t.starts_with("py3") {
            return true;
        }
        match t.strip_prefix("cp3").and_then(|m| m.parse::<u32>().ok()) {
            Some(m) => m == minor || (abi3 && m <= minor),
            None => false,
        }
    });
    platform_ok && python_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_tags() {
        assert!(wheel_fits("requests-2.32.3-py3-none-any.whl", "3.11"));
        assert!(wheel_fits(
            "numpy-2.2.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "3.11"
        ));
        assert!(!wheel_fits("numpy-2.2.2-cp311-cp311-win_amd64.whl", "3.11"));
        assert!(!wheel_fits(
            "numpy-2.2.2-cp312-cp312-manylinux_2_17_x86_64.whl",
            "3.11"
        ));
        assert!(wheel_fits(
            "cryptography-44.0.0-cp39-abi3-manylinux_2_28_x86_64.whl",
            "3.13"
        ));
        assert!(!wheel_fits(
            "x-1-cp311-cp311-musllinux_1_2_x86_64.whl",
            "3.11"
        ));
    }

    #[test]
    fn pylock_for_another_platform_is_refused() {
        let text = r#"lock-version = "1.0"
created-by = "test"
[[packages]]
name = "numpy"
version = "2.2.2"
wheels = [{ name = "numpy-2.2.2-cp311-cp311-win_amd64.whl", url = "https://example.org/numpy-2.2.2-cp311-cp311-win_amd64.whl", hashes = { sha256 = "00" } }]
"#;
        let e = pylock("pylock.toml", text, Some("3.11")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("pylock.toml: numpy 2.2.2 has no wheel for Linux x86_64"),
            "{msg}"
        );
        assert_eq!(pylock("pylock.toml", text, None).unwrap(), vec!["numpy"]);
        let e = pylock("pylock.toml", "[[packages]]\nname = \"x\"\n", None).unwrap_err();
        assert!(e.to_string().contains("no `lock-version`"), "{e}");
    }

    #[test]
    fn uv_lock_names_skip_the_project() {
        let text = r#"version = 1
requires-python = ">=3.11"
[[package]]
name = "demo"
version = "0.1.0"
source = { virtual = "." }
[[package]]
name = "Requests"
version = "2.32.3"
source = { registry = "https://pypi.org/simple" }
"#;
        let l = uv_lock("uv.lock", text).unwrap();
        assert_eq!(l.names, vec!["requests"]);
        assert!(!l.local_paths);
        assert_eq!(
            missing_kernel_packages(&l.names),
            vec!["ipykernel", "dask", "distributed", "pip"]
        );
    }
}
