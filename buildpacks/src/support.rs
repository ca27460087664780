//! Files berth puts into every environment's build context besides the repository's: the
//! server environment's lock, the build-time helper, the Dask session hook and the kernel
//! spec. They are part of berth (their bytes enter the env hash through the rendered
//! Dockerfile's inputs, see [`context_files`]).

use crate::{BuildPlan, ServerEnv, VENV_DIR};

/// Where the build-time helper writes the image's package record (JSON, see
/// `berth_builder::record`): the kernel, server and dashboard environments' distributions with
/// name, version and the sha256 of their installed `RECORD`.
pub const PACKAGES_RECORD: &str = "/etc/berth/packages.json";

/// The server environment's requirements (`scripts/lock-server` locks them).
pub const SERVER_IN: &str = include_str!("../locks/server.in");

const LOCKS: &[(&str, &str)] = &[
    ("3.11", include_str!("../locks/server-py3.11.txt")),
    ("3.13", include_str!("../locks/server-py3.13.txt")),
];

const TOOL: &str = include_str!("../files/tool.py");
const OFFLINE_APT: &str = include_str!("../files/offline-apt-install.sh");

/// Where an offline build's Dockerfile copies the sources folder (`wheels/`, `debs/` and
/// berth's helpers); removed again before the build's last step.
pub const OFFLINE_SOURCES_DIR: &str = "/opt/berth/sources";
const DASK_HOOK: &str = include_str!("../files/berth_dask.py");
const DASK_HOOK_PTH: &str = include_str!("../files/berth_dask.pth");

/// The lock berth ships for the server environment of Python `python` (`X.Y`): a
/// requirements file with every package pinned and hashed, made by `scripts/lock-server`.
/// `None` for a Python without a lock (its server environment is then resolved at build time,
/// with a warning).
pub fn server_lock(python: &str) -> Option<&'static str> {
    LOCKS.iter().find(|(v, _)| *v == python).map(|(_, l)| *l)
}

/// One file of the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Path inside the context (`berth/…`).
    pub path: &'static str,
    /// The bytes.
    pub data: Vec<u8>,
    /// Unix mode.
    pub mode: u32,
}

fn kernel_spec() -> String {
    format!(
        "{{\n \"argv\": [\"{VENV_DIR}/bin/python\", \"-m\", \"ipykernel_launcher\", \"-f\", \"{{connection_file}}\"],\n \"display_name\": \"Python 3 (ipykernel)\",\n \"language\": \"python\",\n \"metadata\": {{\"debugger\": true}}\n}}\n"
    )
}

/// berth's files of an environment's build context (beside the entrypoint and the CA bundle):
/// `berth/server-lock.txt` (the pinned server environment, or `server.in` when the Python has
/// no lock), `berth/tool.py`, `berth/_berth_dask.py` with its `.pth`, and
/// `berth/kernel.json` (the `python3` kernel spec that runs the kernel environment).
pub fn context_files(plan: &BuildPlan) -> Vec<ContextFile> {
    let mut out = Vec::new();
    if plan.dockerfile.is_some() {
        return out;
    }
    if plan.server == ServerEnv::Berth {
        let python = plan
            .python
            .as_ref()
            .map(|p| p.version.as_str())
            .unwrap_or("");
        out.push(ContextFile {
            path: "berth/server-lock.txt",
            data: server_lock(python).unwrap_or(SERVER_IN).as_bytes().to_vec(),
            mode: 0o644,
        });
    }
    out.push(ContextFile {
        path: "berth/tool.py",
        data: TOOL.as_bytes().to_vec(),
        mode: 0o644,
    });
    out.push(ContextFile {
        path: "berth/_berth_dask.py",
        data: DASK_HOOK.as_bytes().to_vec(),
        mode: 0o644,
    });
    out.push(ContextFile {
        path: "berth/_berth_dask.pth",
        data: DASK_HOOK_PTH.as_bytes().to_vec(),
        mode: 0o644,
    });
    out.push(ContextFile {
        path: "berth/kernel.json",
        data: kernel_spec().into_bytes(),
        mode: 0o644,
    });
    out
}

/// berth's helpers an offline build's context carries beside the sources folder:
/// `berth/sources/tool.py` (the build helper, usable before `/opt/berth/tool.py` is in place)
/// and `berth/sources/apt-install` (installs Debian packages from the `.deb` files in
/// `berth/sources/debs/`). Not part of the env hash: an offline build makes the same
/// environment.
pub fn offline_context_files() -> Vec<ContextFile> {
    vec![
        ContextFile {
            path: "berth/sources/tool.py",
            data: TOOL.as_bytes().to_vec(),
            mode: 0o644,
        },
        ContextFile {
            path: "berth/sources/apt-install",
            data: OFFLINE_APT.as_bytes().to_vec(),
            mode: 0o755,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_python_has_a_hashed_lock() {
        for v in ["3.11", "3.13"] {
            let lock = server_lock(v).unwrap();
            for name in [
                "jupyterlab==",
                "jupyter-server==",
                "dask-labextension==",
                "jupyter-server-proxy==",
            ] {
                assert!(lock.contains(name), "{v}: {name}");
            }
            assert!(lock.contains("--hash=sha256:"));
        }
        assert!(server_lock("3.10").is_none());
        let spec: serde_json::Value = serde_json::from_str(&kernel_spec()).unwrap();
        assert_eq!(spec["argv"][0], "/srv/venv/bin/python");
    }
}
