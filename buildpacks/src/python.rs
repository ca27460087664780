//! The Dockerfile buildpack and the pip-style Python buildpacks (`requirements.txt`,
//! `setup.py`, `pyproject.toml`, and the plain Python environment).

use std::str::FromStr;

use crate::addons::common_plan;
use crate::{BuildPlan, Buildpack, BuildpackError, LocalInstall, PlanOptions, SpecDir};

/// A `Dockerfile` in the spec folder: built as it is, with the whole repository as the build
/// context, as repo2docker's Docker buildpack. `apt.txt`, `postBuild` and friends are ignored.
pub(crate) struct DockerfileBuildpack;

impl Buildpack for DockerfileBuildpack {
    fn name(&self) -> &'static str {
        "dockerfile"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.find(&["Dockerfile"]).is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, _opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let path = spec.path("Dockerfile");
        spec.read_text(&path)?;
        Ok(BuildPlan {
            buildpack: self.name().into(),
            spec_dir: spec.dir.into(),
            env_files: vec![path.clone()],
            whole_repo: true,
            dockerfile: Some(path),
            python: None,
            apt_packages: vec![],
            packages: vec![],
            requirements_files: vec![],
            lock: None,
            server: crate::ServerEnv::Berth,
            local_install: None,
            post_build: None,
            start: None,
            warnings: vec![],
        })
    }
}

/// `requirements.txt` in the spec folder, installed with `-r`.
pub(crate) struct RequirementsBuildpack;

impl Buildpack for RequirementsBuildpack {
    fn name(&self) -> &'static str {
        "requirements"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.find(&["requirements.txt"]).is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let mut plan = common_plan(spec, self.name(), None, opts)?;
        let path = spec.path("requirements.txt");
        let scan = scan_requirements(spec, &path, 0)?;
        plan.env_files.extend(scan.files);
        plan.env_files.push(path.clone());
        plan.whole_repo |= scan.local_paths;
        if scan.hashed {
            // pip's hash-checking mode: every requirement must be pinned with its hashes, so the
            // file is a lock and is installed as it is.
            let missing = crate::locks::missing_kernel_packages(&scan.names);
            crate::locks::warn_missing(&mut plan, &path, &missing);
            plan.lock = Some(crate::Lock::HashedRequirements {
                file: path,
                missing,
            });
        } else {
            plan.requirements_files.push(path);
        }
        add_local_install(spec, &mut plan);
        Ok(plan)
    }
}

/// `setup.py` at the repository root (only without a binder folder), installed with
/// `pip install -e .` as repo2docker does.
pub(crate) struct SetupPyBuildpack;

impl Buildpack for SetupPyBuildpack {
    fn name(&self) -> &'static str {
        "setup.py"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.root_files_apply() && spec.repo.get("setup.py").is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let mut plan = common_plan(spec, self.name(), None, opts)?;
        add_local_install(spec, &mut plan);
        Ok(plan)
    }
}

/// `pyproject.toml` at the repository root with both `[project]` and `[build-system]` (only
/// without a binder folder), installed with `pip install .` as repo2docker does.
pub(crate) struct PyprojectBuildpack;

impl Buildpack for PyprojectBuildpack {
    fn name(&self) -> &'static str {
        "pyproject"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.root_files_apply() && installable_pyproject(spec)
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let mut plan = common_plan(spec, self.name(), None, opts)?;
        add_local_install(spec, &mut plan);
        Ok(plan)
    }
}

/// No spec file at all, or only `runtime.txt`/`apt.txt`/`postBuild`/`start`: Python with
/// JupyterLab and Dask, as repo2docker's default environment.
pub(crate) struct PythonBuildpack;

impl Buildpack for PythonBuildpack {
    fn name(&self) -> &'static str {
        "python"
    }
    fn detect(&self, _spec: &SpecDir<'_>) -> bool {
        true
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        common_plan(spec, self.name(), None, opts)
    }
}

fn installable_pyproject(spec: &SpecDir<'_>) -> bool {
    let Some(bytes) = spec.repo.read("pyproject.toml") else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    match toml::Table::from_str(text) {
        Ok(t) => t.contains_key("project") && t.contains_key("build-system"),
        Err(_) => false,
    }
}

/// Adds the install of the repository itself when repo2docker would: root `setup.py`
/// (editable) or an installable root `pyproject.toml`, only without a binder folder.
fn add_local_install(spec: &SpecDir<'_>, plan: &mut BuildPlan) {
    if !spec.root_files_apply() {
        return;
    }
    let install = if spec.repo.get("setup.py").is_some() {
        plan.env_files.push("setup.py".into());
        LocalInstall::Editable
    } else if installable_pyproject(spec) {
        plan.env_files.push("pyproject.toml".into());
        LocalInstall::Package
    } else {
        return;
    };
    plan.local_install = Some(install);
    plan.whole_repo = true;
}

/// What a requirements file refers to besides package names.
#[derive(Debug, Default)]
pub(crate) struct RequirementsScan {
    /// Files included with `-r`/`-c`, as repository paths.
    pub files: Vec<String>,
    /// Whether any requirement is a local path (`-e .`, `./pkg`, `file:`), which makes the
    /// environment depend on the whole repository.
    pub local_paths: bool,
    /// Normalized names of the packages the file (and its includes) require.
    pub names: Vec<String>,
    /// Whether any requirement carries `--hash` (pip's hash-checking mode).
    pub hashed: bool,
}

/// pip options that may stand on a line of their own in a requirements file.
const PIP_OPTIONS: &[&str] = &[
    "-i",
    "--index-url",
    "--extra-index-url",
    "--no-index",
    "-f",
    "--find-links",
    "--pre",
    "--trusted-host",
    "--prefer-binary",
    "--only-binary",
    "--no-binary",
    "--require-hashes",
    "--use-feature",
    "--config-settings",
];

/// Validates a requirements file line by line (PEP 508 requirements, URLs, local paths and
/// pip's options) and follows `-r`/`-c` includes inside the repository.
///
/// # Errors
/// [`BuildpackError::InvalidSpec`] naming the file and line of the first line that is none of
/// these, or an include that is not in the repository.
pub(crate) fn scan_requirements(
    spec: &SpecDir<'_>,
    path: &str,
    depth: usize,
) -> Result<RequirementsScan, BuildpackError> {
    let err = |line: usize, message: String| BuildpackError::InvalidSpec {
        file: path.to_string(),
        message: format!("line {line}: {message}"),
    };
    if depth > 8 {
        return Err(err(
            0,
            "requirements files include each other too deeply".into(),
        ));
    }
    let text = spec.read_text(path)?;
    let mut scan = RequirementsScan::default();
    let mut logical = String::new();
    let mut start_line = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (i, raw) in lines.iter().enumerate() {
        if logical.is_empty() {
            start_line = i + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            if i + 1 < lines.len() {
                continue;
            }
        } else {
            logical.push_str(raw);
        }
        let line = strip_comment(&logical).trim().to_string();
        logical.clear();
        if line.is_empty() {
            continue;
        }
        scan_line(spec, path, &line, depth, &mut scan).map_err(|m| err(start_line, m))?;
    }
    Ok(scan)
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #").or_else(|| line.find("\t#")) {
        Some(i) => &line[..i],
        None => line,
    }
}

fn scan_line(
    spec: &SpecDir<'_>,
    path: &str,
    line: &str,
    depth: usize,
    scan: &mut RequirementsScan,
) -> Result<(), String> {
    let (opt, value) = split_option(line);
    match opt {
        Some("-r" | "--requirement" | "-c" | "--constraint") => {
            let target = value.ok_or_else(|| format!("{line:?} names no file"))?;
            if target.contains("://") {
                return Ok(());
            }
            let base = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let joined = normalize(base, target)
                .ok_or_else(|| format!("{target:?} lies outside the repository"))?;
            if spec.repo.get(&joined).is_none() {
                return Err(format!("{target:?} is not in the repository"));
            }
            let inner = scan_requirements(spec, &joined, depth + 1).map_err(|e| e.to_string())?;
            scan.files.push(joined);
            scan.files.extend(inner.files);
            scan.local_paths |= inner.local_paths;
            if matches!(opt, Some("-r" | "--requirement")) {
                scan.names.extend(inner.names);
                scan.hashed |= inner.hashed;
            }
            Ok(())
        }
        Some("-e" | "--editable") => {
            let target = value.ok_or_else(|| format!("{line:?} names nothing to install"))?;
            if is_local_path(target) {
                scan.local_paths = true;
            }
            Ok(())
        }
        Some("--require-hashes") => {
            scan.hashed = true;
            Ok(())
        }
        Some(o) if PIP_OPTIONS.contains(&o) => Ok(()),
        Some(o) => Err(format!("unknown pip option {o:?}")),
        None => {
            // Per-requirement options such as --hash follow the requirement.
            let req = line.split(" --").next().unwrap_or(line).trim();
            if line.contains("--hash") {
                scan.hashed = true;
            }
            if let Some(n) = crate::requirement_name(req) {
                scan.names.push(n);
            }
            if is_local_path(req) {
                scan.local_paths = true;
                return Ok(());
            }
            if req.contains("://") && !req.contains(" @ ") && !req.contains('@') {
                return Ok(());
            }
            match parse_requirement(req) {
                Ok(r) => {
                    if let Some(pep508_rs::VersionOrUrl::Url(u)) = &r.version_or_url {
                        if u.to_string().starts_with("file:") {
                            scan.local_paths = true;
                        }
                    }
                    Ok(())
                }
                Err(first) => {
                    if req.contains("://") {
                        return Ok(());
                    }
                    Err(format!("{req:?} is not a valid requirement: {first}"))
                }
            }
        }
    }
}

/// Parses a PEP 508 requirement; the error is the first line of the parser's message.
///
/// pep508_rs 0.9 panics instead of failing on some invalid names: a package name that ends in
/// `-`, `_` or `.` followed by more text (`numpy-,`, `aa- >=1`) or such an extra (`numpy[a-]`).
/// Both are refused here with a proper message; any other panic of the parser counts as
/// "invalid" too.
pub(crate) fn parse_requirement(
    req: &str,
) -> Result<pep508_rs::Requirement<pep508_rs::VerbatimUrl>, String> {
    let body = req.trim_start();
    let name_end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(body.len());
    if name_end < body.len() && body[..name_end].ends_with(['-', '_', '.']) {
        return Err(format!(
            "package name {:?} must end with a letter or digit",
            &body[..name_end]
        ));
    }
    if let Some(extras) = body[name_end..].trim_start().strip_prefix('[') {
        let extras = extras.split(']').next().unwrap_or(extras);
        let mut items = extras.split(',').map(str::trim);
        if let Some(bad) = items.find(|e| e.ends_with(['-', '_', '.'])) {
            return Err(format!("extra {bad:?} must end with a letter or digit"));
        }
    }
    match std::panic::catch_unwind(|| {
        pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(req)
    }) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            let msg = e.to_string();
            Err(msg
                .lines()
                .next()
                .unwrap_or("invalid requirement")
                .to_string())
        }
        Err(_) => Err("names and extras must start and end with a letter or digit".into()),
    }
}

/// Splits `-r file`, `--requirement=file` and `-rfile` into option and value.
fn split_option(line: &str) -> (Option<&str>, Option<&str>) {
    if !line.starts_with('-') {
        return (None, None);
    }
    if let Some((o, v)) = line.split_once('=') {
        if o.starts_with("--") && !o.contains(' ') {
            return (Some(o), Some(v.trim()));
        }
    }
    let mut parts = line.splitn(2, char::is_whitespace);
    let o = parts.next().unwrap_or("");
    let v = parts.next().map(str::trim).filter(|v| !v.is_empty());
    if !o.starts_with("--") && o.len() > 2 && o.is_char_boundary(2) {
        return (Some(&o[..2]), Some(o[2..].trim()));
    }
    (Some(o), v)
}

/// Whether a requirement names a path rather than a package (pip's rule: it starts with `.`
/// or `/`, or is a `file:` URL).
fn is_local_path(req: &str) -> bool {
    req.starts_with('.') || req.starts_with('/') || req.starts_with("file:")
}

/// Joins a relative path onto a folder, refusing to leave the repository.
pub(crate) fn normalize(base: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RepoFiles;

    fn scan(files: &[(&str, &str)]) -> Result<RequirementsScan, BuildpackError> {
        let mut repo = RepoFiles::new();
        for (p, t) in files {
            repo.insert_file(*p, t.as_bytes());
        }
        let spec = SpecDir::new(&repo).unwrap();
        scan_requirements(&spec, files[0].0, 0)
    }

    #[test]
    fn accepts_pip_requirements_files() {
        let s = scan(&[(
            "requirements.txt",
            "# comment\nnumpy==2.2.2\n    # via pandas\npandas>=2 ; python_version > \"3.8\"\n\
             requests[socks]~=2.31 --hash=sha256:abc\n--extra-index-url https://example.org/simple\n\
             git+https://example.org/x.git#egg=x\nscipy \\\n  ==1.15.3\n-r more.txt\n",
        ), ("more.txt", "toolz\n")])
        .unwrap();
        assert_eq!(s.files, vec!["more.txt"]);
        assert!(!s.local_paths);
    }

    #[test]
    fn local_paths_need_the_whole_repo() {
        assert!(scan(&[("requirements.txt", "-e .\n")]).unwrap().local_paths);
        assert!(
            scan(&[("requirements.txt", "./pkg\n")])
                .unwrap()
                .local_paths
        );
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        let e = scan(&[("requirements.txt", "numpy\nthis is not a requirement!\n")]).unwrap_err();
        assert!(
            e.to_string().starts_with("requirements.txt: line 2:"),
            "{e}"
        );
        let e = scan(&[("requirements.txt", "numpy===\n")]).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = scan(&[("requirements.txt", "-r ../../etc/passwd\n")]).unwrap_err();
        assert!(e.to_string().contains("outside the repository"), "{e}");
        let e = scan(&[("requirements.txt", "--frobnicate\n")]).unwrap_err();
        assert!(e.to_string().contains("unknown pip option"), "{e}");
    }

    #[test]
    fn normalize_stays_inside() {
        assert_eq!(
            normalize("binder", "../req.txt").as_deref(),
            Some("req.txt")
        );
        assert_eq!(normalize("", "../x"), None);
        assert_eq!(normalize("", "/etc/passwd"), None);
    }
}
