//! Dockerfile rendering from a [`BuildPlan`].

use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

use crate::{
    BuildPlan, LocalInstall, RepoFiles, BASE_PACKAGES, BUILDPACK_VERSION, UV_VERSION, VENV_DIR,
};

const PYTHON_TEMPLATE: &str = include_str!("../templates/python.Dockerfile.j2");

/// The container entrypoint, installed as `/usr/local/bin/berth-entrypoint`: it runs the
/// command through the repository's `start` script when there is one, as repo2docker's
/// entrypoint does, so `docker run IMAGE CMD…` runs CMD in the prepared environment.
pub const ENTRYPOINT_SCRIPT: &str = r#"#!/bin/sh
# berth-entrypoint: run the command through the repository's start script, if any.
if [ -n "${BERTH_START:-}" ] && [ -f "$BERTH_START" ]; then
  [ -x "$BERTH_START" ] || chmod +x "$BERTH_START" 2>/dev/null
  exec "$BERTH_START" "$@"
fi
exec "$@"
"#;

/// Settings of the rendering that do not come from the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderOptions {
    /// The image to build `FROM`.
    pub base_image: String,
    /// Where the repository lives in the image (`$REPO_DIR`); `/home/jovyan` by default, as
    /// repo2docker.
    pub repo_dir: String,
    /// Whether the build context carries `berth/ca-certificates.crt`, the site's CA bundle.
    pub ca_cert: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            base_image: "berth-base:bookworm".into(),
            repo_dir: "/home/jovyan".into(),
            ca_cert: false,
        }
    }
}

/// Quotes a word for a POSIX shell (single quotes), unless it is plainly safe.
fn sh_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',')
        });
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The arguments of the one `uv pip install` that resolves the base packages together with the
/// repository's, so the repository's pins win.
fn install_args(plan: &BuildPlan) -> String {
    let mut args: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
    for p in &plan.packages {
        if p.starts_with('-') {
            args.extend(p.split_whitespace().map(sh_quote));
        } else {
            args.push(sh_quote(p));
        }
    }
    for r in &plan.requirements_files {
        args.push("-r".into());
        args.push(sh_quote(r));
    }
    match plan.local_install {
        Some(LocalInstall::Editable) => args.extend(["-e".to_string(), ".".to_string()]),
        Some(LocalInstall::Package) => args.push(".".into()),
        None => {}
    }
    args.join(" ")
}

/// Renders the Dockerfile of a plan.
///
/// For the `dockerfile` buildpack this is the repository's own Dockerfile, unchanged; for the
/// others, berth's Python template. The Python template expects a build context with the
/// repository's files under `repo/` and berth's under `berth/` (`entrypoint`, and
/// `ca-certificates.crt` when `opts.ca_cert`).
pub fn render_dockerfile(plan: &BuildPlan, repo: &RepoFiles, opts: &RenderOptions) -> String {
    if let Some(path) = &plan.dockerfile {
        return String::from_utf8_lossy(repo.read(path).unwrap_or_default()).into_owned();
    }
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    env.add_filter("sh", |s: String| sh_quote(&s));
    let python = plan
        .python
        .as_ref()
        .map(|p| p.version.clone())
        .unwrap_or_else(|| "3".into());
    let ctx = context! {
        plan => plan,
        buildpack_version => BUILDPACK_VERSION,
        base_image => opts.base_image,
        repo_dir => opts.repo_dir,
        ca_cert => opts.ca_cert,
        venv_dir => VENV_DIR,
        uv_version => UV_VERSION,
        python => python,
        base_packages => BASE_PACKAGES.join(" "),
        install_args => install_args(plan),
    };
    match env.render_str(PYTHON_TEMPLATE, ctx) {
        Ok(text) => text,
        // The template is part of berth and covered by snapshot tests; a failure here is a bug
        // of berth, and the comment makes the build fail at its first line with the reason.
        Err(e) => format!("# berth template error: {e}\nFROM scratch-invalid-template\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("numpy==1.2.*"), "'numpy==1.2.*'");
        assert_eq!(sh_quote("pandas>=2,<3"), "'pandas>=2,<3'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(
            sh_quote("binder/requirements.txt"),
            "binder/requirements.txt"
        );
    }
}
