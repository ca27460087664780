//! Dockerfile rendering from a [`BuildPlan`].

use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

use crate::support::OFFLINE_SOURCES_DIR;
use crate::{
    BuildPlan, LocalInstall, Lock, RepoFiles, ServerEnv, BUILDPACK_VERSION, DASHBOARD_DIR,
    JUPYTER_DATA_DIR, KERNEL_PACKAGES, PACKAGES_RECORD, REPOSITORY_SERVER_PACKAGES, SERVER_DIR,
    UV_VERSION, VENV_DIR,
};

const PYTHON_TEMPLATE: &str = include_str!("../templates/python.Dockerfile.j2");

/// The Dockerfile template of berth's Python buildpacks (minijinja), as it is compiled into
/// berth; its bytes enter the env hash, so a changed template never reuses an old image.
pub fn template_source() -> &'static str {
    PYTHON_TEMPLATE
}

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
    /// The user's numeric id (`--user-id`); 1000 by default, as repo2docker.
    pub user_id: u32,
    /// The user's login name (`--user-name`); `jovyan` by default, as repo2docker. `$HOME` is
    /// `/home/<user_name>`.
    pub user_name: String,
    /// An offline build (`berth build --offline`): the Dockerfile takes every Debian package
    /// and Python distribution from the build context's `berth/sources/` (copied to
    /// [`OFFLINE_SOURCES_DIR`], see [`offline_context_files`](crate::offline_context_files)) and reaches no network. How the
    /// image is built, not what: it stays out of the env hash.
    #[serde(default)]
    pub offline: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            base_image: "berth-base:bookworm".into(),
            repo_dir: "/home/jovyan".into(),
            ca_cert: false,
            user_id: 1000,
            user_name: "jovyan".into(),
            offline: false,
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

/// The spec file an install reads, named in its error line.
fn spec_file(plan: &BuildPlan) -> String {
    if let Some(lock) = &plan.lock {
        return lock.file().to_string();
    }
    if let Some(r) = plan.requirements_files.first() {
        return r.clone();
    }
    const SPECS: &[&str] = &[
        "environment.yml",
        "environment.yaml",
        "Pipfile.lock",
        "Pipfile",
        "setup.py",
        "pyproject.toml",
    ];
    plan.env_files
        .iter()
        .find(|f| SPECS.iter().any(|s| f.rsplit('/').next() == Some(*s)))
        .cloned()
        .unwrap_or_else(|| "the kernel environment".into())
}

/// The shell command that installs the kernel environment.
///
/// It runs in the spec folder, so local paths in spec files are relative to the file that
/// names them (`-e ..` in `binder/requirements.txt` is the repository's root), as pip does for
/// a requirements file in the current folder. Unlocked specs are resolved in one
/// `uv pip install` together with [`KERNEL_PACKAGES`], so the repository's pins win; locks
/// are installed as they are ([`Lock`]). `tool.py run` turns a failure into one
/// `berth-error:` line naming the file and the package.
fn kernel_install(plan: &BuildPlan, python: &str, repo_dir: &str) -> String {
    let dir = if plan.spec_dir.is_empty() {
        repo_dir.to_string()
    } else {
        format!("{repo_dir}/{}", plan.spec_dir)
    };
    let name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let run = |file: &str, cmd: String| {
        format!(
            "cd {} && python{python} /opt/berth/tool.py run {} -- {cmd}",
            sh_quote(&dir),
            sh_quote(file)
        )
    };
    let local = |args: &mut Vec<String>| match plan.local_install {
        Some(LocalInstall::Editable) => args.extend(["-e".to_string(), sh_quote(repo_dir)]),
        Some(LocalInstall::Package) => args.push(sh_quote(repo_dir)),
        None => {}
    };
    match &plan.lock {
        Some(Lock::Uv {
            file,
            installs_project,
            ..
        }) => {
            let project = if *installs_project {
                ""
            } else {
                " --no-install-project"
            };
            run(
                file,
                format!("env UV_PROJECT_ENVIRONMENT={VENV_DIR} uv sync --quiet --locked{project}"),
            )
        }
        Some(Lock::Pylock { file, .. }) => run(
            file,
            format!("uv pip install --quiet -r {}", sh_quote(&name(file))),
        ),
        Some(Lock::HashedRequirements { file, .. }) => {
            let mut cmd = run(
                file,
                format!(
                    "uv pip install --quiet --require-hashes -r {}",
                    sh_quote(&name(file))
                ),
            );
            let mut args = Vec::new();
            local(&mut args);
            if !args.is_empty() {
                cmd.push_str(&format!(
                    " \\\n && uv pip install --quiet --no-deps {}",
                    args.join(" ")
                ));
            }
            cmd
        }
        None => {
            let mut args: Vec<String> = KERNEL_PACKAGES.iter().map(|p| p.to_string()).collect();
            if plan.server == ServerEnv::Repository {
                args.extend(REPOSITORY_SERVER_PACKAGES.iter().map(|p| p.to_string()));
            }
            for p in &plan.packages {
                if p.starts_with('-') {
                    args.extend(p.split_whitespace().map(sh_quote));
                } else {
                    args.push(sh_quote(p));
                }
            }
            for r in &plan.requirements_files {
                args.push("-r".into());
                args.push(sh_quote(&format!("{repo_dir}/{r}")));
            }
            local(&mut args);
            run(
                &spec_file(plan),
                format!("uv pip install --quiet {}", args.join(" ")),
            )
        }
    }
}

/// What a lock lacks and berth adds after installing it, space-separated (empty without a
/// lock, or when the lock has everything).
fn kernel_missing(plan: &BuildPlan) -> String {
    let Some(lock) = &plan.lock else {
        return String::new();
    };
    let mut add: Vec<String> = lock.missing().to_vec();
    if plan.server == ServerEnv::Repository {
        add.extend(REPOSITORY_SERVER_PACKAGES.iter().map(|p| p.to_string()));
    }
    add.join(" ")
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
        server_dir => SERVER_DIR,
        dashboard_dir => DASHBOARD_DIR,
        jupyter_data_dir => JUPYTER_DATA_DIR,
        packages_record => PACKAGES_RECORD,
        uv_version => UV_VERSION,
        python => python,
        user_id => opts.user_id,
        user_name => opts.user_name,
        offline => opts.offline,
        sources_dir => OFFLINE_SOURCES_DIR,
        berth_server => plan.server == ServerEnv::Berth,
        server_locked => crate::server_lock(&python).is_some(),
        kernel_packages => KERNEL_PACKAGES.join(", "),
        kernel_install => kernel_install(plan, &python, &opts.repo_dir),
        kernel_missing => kernel_missing(plan),
        lock_file => plan.lock.as_ref().map(|l| l.file().to_string()).unwrap_or_default(),
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
