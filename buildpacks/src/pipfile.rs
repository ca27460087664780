//! `Pipfile` and `Pipfile.lock`, installed as plain requirements (the lock's pins when there is
//! a lock), including development packages as repo2docker's `pipenv install --dev` does.

use std::str::FromStr;

use serde_json::Value as Json;

use crate::addons::{common_plan, major_minor};
use crate::{BuildPlan, Buildpack, BuildpackError, PlanOptions, SpecDir};

/// `Pipfile.lock` or `Pipfile` in the spec folder.
pub(crate) struct PipfileBuildpack;

impl Buildpack for PipfileBuildpack {
    fn name(&self) -> &'static str {
        "pipfile"
    }
    fn detect(&self, spec: &SpecDir<'_>) -> bool {
        spec.find(&["Pipfile.lock", "Pipfile"]).is_some()
    }
    fn plan(&self, spec: &SpecDir<'_>, opts: &PlanOptions) -> Result<BuildPlan, BuildpackError> {
        let (file, parsed) = if let Some(lock) = spec.find(&["Pipfile.lock"]) {
            let p = parse_lock(&lock, &spec.read_text(&lock)?)?;
            (lock, p)
        } else {
            let path = spec.path("Pipfile");
            let p = parse_pipfile(&path, &spec.read_text(&path)?)?;
            (path, p)
        };
        let requested = parsed.python.map(|v| (file.clone(), v));
        let mut plan = common_plan(spec, self.name(), requested, opts)?;
        for f in ["Pipfile", "Pipfile.lock"] {
            if let Some(p) = spec.find(&[f]) {
                plan.env_files.push(p);
            }
        }
        plan.whole_repo |= parsed.local;
        plan.packages = parsed.packages;
        Ok(plan)
    }
}

#[derive(Debug, Default)]
struct Parsed {
    python: Option<String>,
    packages: Vec<String>,
    local: bool,
}

fn invalid(file: &str, message: String) -> BuildpackError {
    BuildpackError::InvalidSpec {
        file: file.to_string(),
        message,
    }
}

fn parse_lock(file: &str, text: &str) -> Result<Parsed, BuildpackError> {
    let doc: Json =
        serde_json::from_str(text).map_err(|e| invalid(file, format!("not valid JSON: {e}")))?;
    let mut out = Parsed {
        python: doc
            .pointer("/_meta/requires/python_version")
            .and_then(Json::as_str)
            .and_then(major_minor),
        ..Parsed::default()
    };
    for section in ["default", "develop"] {
        let Some(pkgs) = doc.get(section).and_then(Json::as_object) else {
            continue;
        };
        for (name, entry) in pkgs {
            let req = entry_requirement(file, name, entry, &mut out.local)?;
            out.packages.push(req);
        }
    }
    Ok(out)
}

fn parse_pipfile(file: &str, text: &str) -> Result<Parsed, BuildpackError> {
    let doc = toml::Table::from_str(text).map_err(|e| {
        let msg = e.to_string();
        invalid(
            file,
            format!("not valid TOML: {}", msg.lines().next().unwrap_or("")),
        )
    })?;
    let mut out = Parsed {
        python: doc
            .get("requires")
            .and_then(|r| r.get("python_version"))
            .and_then(|v| v.as_str())
            .and_then(major_minor),
        ..Parsed::default()
    };
    for section in ["packages", "dev-packages"] {
        let Some(pkgs) = doc.get(section).and_then(|v| v.as_table()) else {
            continue;
        };
        for (name, entry) in pkgs {
            let json = serde_json::to_value(entry)
                .map_err(|e| invalid(file, format!("[{section}] {name}: {e}")))?;
            let req = entry_requirement(file, name, &json, &mut out.local)?;
            out.packages.push(req);
        }
    }
    Ok(out)
}

/// One Pipfile/lock entry as a pip requirement string.
fn entry_requirement(
    file: &str,
    name: &str,
    entry: &Json,
    local: &mut bool,
) -> Result<String, BuildpackError> {
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(file, format!("{name:?} is not a package name")));
    }
    let spec = match entry {
        Json::String(s) if s == "*" => String::new(),
        Json::String(s) => s.clone(),
        Json::Object(o) => {
            if let Some(path) = o.get("path").and_then(Json::as_str) {
                *local = true;
                let editable = o.get("editable").and_then(Json::as_bool).unwrap_or(false);
                return Ok(if editable {
                    format!("-e {path}")
                } else {
                    path.to_string()
                });
            }
            if let Some(git) = o.get("git").and_then(Json::as_str) {
                let r = o
                    .get("ref")
                    .and_then(Json::as_str)
                    .map(|r| format!("@{r}"))
                    .unwrap_or_default();
                return Ok(format!("{name} @ git+{git}{r}"));
            }
            let mut s = o
                .get("version")
                .and_then(Json::as_str)
                .unwrap_or("*")
                .to_string();
            if s == "*" {
                s.clear();
            }
            if let Some(m) = o.get("markers").and_then(Json::as_str) {
                s.push_str(&format!(" ; {m}"));
            }
            s
        }
        other => return Err(invalid(file, format!("{name}: unexpected entry {other}"))),
    };
    let req = format!("{name}{spec}");
    crate::python::parse_requirement(&req).map_err(|e| invalid(file, format!("{name}: {e}")))?;
    Ok(req)
}
