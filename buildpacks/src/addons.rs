//! Files that apply to every non-Dockerfile buildpack, as in repo2docker: `runtime.txt`,
//! `apt.txt`, `postBuild` and `start`.

use crate::{BuildPlan, BuildpackError, ManagedPython, PlanOptions, PythonChoice, SpecDir};

/// Fills the plan parts every Python-family buildpack shares: `apt.txt`, `postBuild`, `start`,
/// and the interpreter from `runtime.txt` unless `requested` (from `environment.yml` or
/// `Pipfile`) already names one.
pub(crate) fn common_plan(
    spec: &SpecDir<'_>,
    buildpack: &str,
    requested: Option<(String, String)>,
    opts: &PlanOptions,
) -> Result<BuildPlan, BuildpackError> {
    let mut plan = BuildPlan {
        buildpack: buildpack.to_string(),
        spec_dir: spec.dir.to_string(),
        env_files: Vec::new(),
        whole_repo: false,
        dockerfile: None,
        python: None,
        apt_packages: Vec::new(),
        packages: Vec::new(),
        requirements_files: Vec::new(),
        lock: None,
        server: crate::ServerEnv::Berth,
        local_install: None,
        post_build: None,
        start: None,
        warnings: Vec::new(),
    };

    let requested = match requested {
        Some(r) => Some(r),
        None => match spec.find(&["runtime.txt"]) {
            Some(path) => {
                let text = spec.read_text(&path)?;
                plan.env_files.push(path.clone());
                parse_runtime_txt(&path, &text)?.map(|v| (path, v))
            }
            None => None,
        },
    };
    plan.python = Some(choose_python(requested, opts, &mut plan.warnings)?);

    if let Some(path) = spec.find(&["apt.txt"]) {
        let text = spec.read_text(&path)?;
        plan.apt_packages = parse_apt_txt(&path, &text)?;
        plan.env_files.push(path);
    }
    if let Some(path) = spec.find(&["postBuild"]) {
        // postBuild may read anything in the repository, so the whole tree is the input.
        plan.whole_repo = true;
        plan.env_files.push(path.clone());
        plan.post_build = Some(path);
    }
    if let Some(path) = spec.find(&["start"]) {
        plan.env_files.push(path.clone());
        plan.start = Some(path);
    }
    Ok(plan)
}

/// Parses `runtime.txt` as repo2docker does: `python-3` asks for the default Python (`None`),
/// `python-X.Y` and `python-X.Y.Z` for `X.Y`. Other runtimes (`r-…`, as repo2docker's R
/// buildpack) are not Python and give `None`.
///
/// # Errors
/// [`BuildpackError::InvalidSpec`] naming the file for a `python-` line that is none of these
/// (`python-three`, `python-3.x`, `python-2`).
pub(crate) fn parse_runtime_txt(path: &str, text: &str) -> Result<Option<String>, BuildpackError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(line) = line else { return Ok(None) };
    let Some(version) = line.strip_prefix("python-") else {
        return Ok(None);
    };
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()));
    match parts.as_slice() {
        ["3"] => Ok(None),
        [major, minor] | [major, minor, _] if numeric => Ok(Some(format!("{major}.{minor}"))),
        _ => Err(BuildpackError::InvalidSpec {
            file: path.to_string(),
            message: format!("expected python-3, python-X.Y or python-X.Y.Z, found {line:?}"),
        }),
    }
}

/// `X.Y` of a version string such as `3.10`, `3.10.4` or `3.10.*`.
pub(crate) fn major_minor(version: &str) -> Option<String> {
    let mut parts = version.trim().split('.');
    let major = parts.next()?;
    let minor = parts.next()?.trim_end_matches('*');
    if major.is_empty()
        || minor.is_empty()
        || !major.bytes().all(|b| b.is_ascii_digit())
        || !minor.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(format!("{major}.{minor}"))
}

/// Picks the interpreter: the requested one when a base image has it; else, for a Python 3
/// version, one installed by uv when `opts.managed_python` allows it; else the nearest available
/// one with `--python-fallback` (and a warning); else an error saying why uv could not install
/// it. Without a request, the first available version.
///
/// # Errors
/// [`BuildpackError::PythonUnavailable`] when none of these applies.
pub(crate) fn choose_python(
    requested: Option<(String, String)>,
    opts: &PlanOptions,
    warnings: &mut Vec<String>,
) -> Result<PythonChoice, BuildpackError> {
    let default = opts
        .available_pythons
        .first()
        .cloned()
        .unwrap_or_else(|| "3".to_string());
    let Some((file, want)) = requested else {
        return Ok(PythonChoice {
            requested: None,
            version: default,
            fallback: false,
            managed: false,
            mirror: None,
        });
    };
    if opts.available_pythons.contains(&want) {
        return Ok(PythonChoice {
            requested: Some(want.clone()),
            version: want,
            fallback: false,
            managed: false,
            mirror: None,
        });
    }
    let why_not_managed = match &opts.managed_python {
        ManagedPython::Available { mirror } if want.starts_with("3.") => {
            return Ok(PythonChoice {
                requested: Some(want.clone()),
                version: want,
                fallback: false,
                managed: true,
                mirror: mirror.clone(),
            });
        }
        ManagedPython::Available { .. } => "uv installs only Python 3".to_string(),
        ManagedPython::Unavailable(reason) => reason.clone(),
    };
    if !opts.python_fallback {
        return Err(BuildpackError::PythonUnavailable {
            file,
            requested: want,
            available: opts.available_pythons.join(", "),
            managed: why_not_managed,
        });
    }
    let key = |v: &str| -> (i64, i64) {
        let mut it = v.split('.').map(|p| p.parse::<i64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let (wm, wn) = key(&want);
    // Nearest by minor distance within the major version; on a tie the newer one.
    let nearest = opts
        .available_pythons
        .iter()
        .min_by_key(|v| {
            let (m, n) = key(v);
            ((m - wm).abs() * 1000 + (n - wn).abs(), -n)
        })
        .cloned()
        .unwrap_or(default);
    // The plan enters the env hash: the warning names no reason that could change from one
    // build to the next (the builder reports why uv could not install it beside the plan).
    warnings.push(format!(
        "{file} asks for Python {want}, which is not available; building with Python {nearest} (--python-fallback)"
    ));
    Ok(PythonChoice {
        requested: Some(want),
        version: nearest,
        fallback: true,
        managed: false,
        mirror: None,
    })
}

/// Parses `apt.txt`: one Debian package per line, `#` comments. Names must be Debian package
/// names (optionally `=version` or `:arch`), so nothing in the file can reach a shell.
///
/// # Errors
/// [`BuildpackError::InvalidSpec`] naming the first line that is not a package name.
pub(crate) fn parse_apt_txt(path: &str, text: &str) -> Result<Vec<String>, BuildpackError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        for word in line.split_whitespace() {
            if !is_apt_package(word) {
                return Err(BuildpackError::InvalidSpec {
                    file: path.to_string(),
                    message: format!(
                        "line {}: {word:?} is not a Debian package name (only letters, digits and + - . : = ~ are allowed)",
                        i + 1
                    ),
                });
            }
            out.push(word.to_string());
        }
    }
    Ok(out)
}

fn is_apt_package(word: &str) -> bool {
    let mut chars = word.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | ':' | '=' | '~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_txt_versions() {
        assert_eq!(
            parse_runtime_txt("r", "python-3.10\n").unwrap(),
            Some("3.10".into())
        );
        assert_eq!(
            parse_runtime_txt("r", "python-3.9.7").unwrap(),
            Some("3.9".into())
        );
        assert_eq!(parse_runtime_txt("r", "r-4.1-2022-01-01").unwrap(), None);
        // The default Python, as repo2docker reads it.
        assert_eq!(parse_runtime_txt("r", "python-3\n").unwrap(), None);
        assert_eq!(
            parse_runtime_txt("r", "# pinned\npython-3.13.1\n").unwrap(),
            Some("3.13".into())
        );
        for bad in [
            "python-three",
            "python-3.x",
            "python-3.10.x",
            "python-3.",
            "python-",
            "python-2",
            "python-3.10.1.2",
            "python-99999.1",
        ] {
            let err = parse_runtime_txt("binder/runtime.txt", bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("binder/runtime.txt: expected python-3, python-X.Y"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn apt_txt_rejects_shell_metacharacters() {
        assert_eq!(
            parse_apt_txt(
                "apt.txt",
                "# tools\ncowsay\nlolcat libgdal-dev=3.6.2+dfsg-1\n"
            )
            .unwrap(),
            vec!["cowsay", "lolcat", "libgdal-dev=3.6.2+dfsg-1"]
        );
        for bad in [
            "cowsay; rm -rf /",
            "$(id)",
            "a|b",
            "`x`",
            "a&&b",
            "-y",
            "../x",
        ] {
            let err = parse_apt_txt("apt.txt", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("apt.txt: line 1:"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fallback_picks_nearest() {
        let opts = PlanOptions {
            available_pythons: vec!["3.11".into(), "3.9".into(), "3.12".into()],
            python_fallback: true,
            managed_python: ManagedPython::Unavailable("cannot reach example.org".into()),
        };
        let mut w = vec![];
        let c = choose_python(Some(("runtime.txt".into(), "3.10".into())), &opts, &mut w).unwrap();
        assert_eq!(c.version, "3.11");
        assert!(c.fallback && !c.managed);
        assert_eq!(
            w,
            ["runtime.txt asks for Python 3.10, which is not available; building with Python 3.11 (--python-fallback)"]
        );
        let strict = PlanOptions {
            python_fallback: false,
            ..opts
        };
        let err = choose_python(Some(("runtime.txt".into(), "3.10".into())), &strict, &mut w)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "runtime.txt asks for Python 3.10, but the base images have only 3.11, 3.9, 3.12 and \
             no uv-managed Python can be installed (cannot reach example.org); pass \
             --python-fallback to build with the nearest version"
        );
    }

    #[test]
    fn managed_python_when_no_base_has_the_version() {
        let opts = PlanOptions {
            available_pythons: vec!["3.11".into(), "3.13".into()],
            python_fallback: true,
            managed_python: ManagedPython::Available { mirror: None },
        };
        let mut w = vec![];
        let req = |v: &str| Some(("runtime.txt".to_string(), v.to_string()));
        // A base's version is never managed.
        let c = choose_python(req("3.13"), &opts, &mut w).unwrap();
        assert_eq!((c.version.as_str(), c.managed), ("3.13", false));
        let c = choose_python(req("3.10"), &opts, &mut w).unwrap();
        assert_eq!(c.version, "3.10");
        assert!(c.managed && !c.fallback);
        assert_eq!(c.mirror, None);
        assert!(w.is_empty());
        let mirrored = PlanOptions {
            managed_python: ManagedPython::Available {
                mirror: Some("http://pbs.example.org/d".into()),
            },
            ..opts.clone()
        };
        let c = choose_python(req("3.12"), &mirrored, &mut w).unwrap();
        assert_eq!(c.mirror.as_deref(), Some("http://pbs.example.org/d"));
        // Python 2 is not uv's: the error says so, the fallback takes the nearest.
        let c = choose_python(req("2.7"), &opts, &mut w).unwrap();
        assert_eq!((c.version.as_str(), c.fallback), ("3.11", true));
        let strict = PlanOptions {
            python_fallback: false,
            ..opts.clone()
        };
        let e = choose_python(req("2.7"), &strict, &mut w).unwrap_err();
        assert!(e.to_string().contains("(uv installs only Python 3)"), "{e}");
        // No request: the default, first in the list.
        let c = choose_python(None, &opts, &mut w).unwrap();
        assert_eq!((c.version.as_str(), c.managed), ("3.11", false));
    }
}
