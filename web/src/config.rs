//! The server's configuration, read from YAML (`berth serve --config FILE`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Everything an operator can set. Every field has a default, so an empty file (or none)
/// serves the `gh`, `gl`, `gist` and `git` providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`host:port`).
    pub listen: String,
    /// The URL users reach the server at, used in launch links and events; by default
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// Base URLs of the providers, by provider name (`gh`, `gl`, `gist`): a spec's repository is
    /// appended to it. `git` takes full clone URLs and needs none.
    pub providers: BTreeMap<String, String>,
    /// Regular expressions over `<provider>/<spec>`; when non-empty, only matching specs launch.
    pub allow: Vec<String>,
    /// Regular expressions over `<provider>/<spec>` that may not launch (as BinderHub's
    /// `banned_specs`).
    pub deny: Vec<String>,
    /// Most sessions at once for one repository (0: no limit).
    pub per_repo_quota: usize,
    /// Most sessions at once in total (0: no limit).
    pub total_quota: usize,
    /// Dask workers per launched session.
    pub workers: u32,
    /// The most workers a session may be scaled to.
    pub max_workers: u32,
    /// Allow local paths and `file://` URLs through the `git` provider.
    pub allow_local: bool,
    /// Stop sessions idle for this many seconds (0: never).
    pub max_idle_seconds: u64,
    /// The CA bundle handed to builds (as `--ca-cert`); `BERTH_CA_CERT` also works.
    pub ca_cert: Option<PathBuf>,
    /// Build with the nearest Python when no base image has the requested one and uv cannot
    /// install it; off by default, when such a build fails with a message saying so.
    pub python_fallback: bool,
    /// Where uv downloads a Python that no base image has: `uv` (its own source, the default),
    /// a mirror's `http://` or `https://` URL, or `none` (as `--python-mirror`).
    pub python_mirror: berth_builder::PythonDownloads,
    /// Memory limit per session container, in bytes (`null` for none); by default the
    /// launcher's 2 GiB, as mybinder.org's 1–2 GB.
    pub memory_bytes: Option<u64>,
    /// Let sessions reach services of this host through the bridge gateway (berth's server, a
    /// registry, anything on `0.0.0.0`); off by default (see the launcher's `egress` module).
    pub allow_host_access: bool,
    /// CPU limit per session container, in thousandths of a CPU.
    pub millicpus: Option<u64>,
    /// Hosts the server may fetch repositories from although they are private: host names,
    /// addresses or CIDR blocks (`git.internal`, `10.1.2.3`, `10.0.0.0/8`, `::1/128`). Empty by
    /// default: loopback, link-local, private and other non-global addresses are refused, as a
    /// defence against server-side request forgery.
    pub allow_private_hosts: Vec<String>,
    /// Seconds after which a build all of whose clients have disconnected is cancelled (its
    /// build containers removed); a client that comes back within them finds it still running.
    pub abandoned_build_grace_seconds: u64,
    /// The longest a build (fetch, environment, repository layer) may take, in seconds.
    pub build_timeout_seconds: u64,
    /// Memory limit of each build step's container, in bytes (swap included); `null` for none.
    /// By default the builder's (4 GiB).
    pub build_memory_bytes: Option<u64>,
    /// Most processes in each build step's container; `null` for none. By default the builder's
    /// (4096).
    pub build_pids: Option<u64>,
    /// Offer each launched environment for download as a berth bundle (one tar file with the
    /// image as an OCI image layout, the repository as a git bundle and berth's manifest; what
    /// `berth export` writes, without sources): `GET /export/<provider>/<spec>?token=<session
    /// token>`, and an `export_url` in the `ready` event. Off by default, when `/export/…`
    /// answers 404. Only a holder of the token of a live session of that spec launched by this
    /// server gets it. Each image is exported once, into `<cache dir>/bundles/<image id
    /// hex>.berth.tar` (berth's cache folder, `BERTH_CACHE_DIR`), which may take about the
    /// image's size on disk; the folder can be emptied at any time (files are made again on
    /// demand).
    pub export: bool,
    /// The root of berth's data library: served read-only at `/data` (catalog pages, a STAC
    /// catalog and the Zarr stores; see the `data` module), and mounted read-only at
    /// `/data/NAME` by launches (the `data=NAME[@VERSION]` launch parameter, a repository's
    /// `berth-data.txt`). `null` (the default): `berth_data::default_root()`, that is
    /// `$BERTH_DATA_DIR`, else `$XDG_DATA_HOME/berth/data`, else `~/.local/share/berth/data`.
    /// A folder without a library shows an empty catalog.
    pub data_dir: Option<PathBuf>,
    /// Sessions kept started and ready ahead of demand, per spec (a class at 9:00):
    /// `warm_pool: [{spec: gh/org/repo/main, sessions: 20}]`. A launch of that spec (without
    /// `data=` parameters) takes a warm session instead of starting one; each is handed to one
    /// client only, with its own token, and the pool starts another in the background. Warm
    /// sessions count towards the quotas (the pool stops short of them) and are never culled
    /// while warm; a taken one is culled like any other. See the `pool` module.
    pub warm_pool: Vec<WarmPoolEntry>,
    /// Most sessions starting at once; further launches wait their turn (their clients see
    /// `launching`). `null` (the default): the machine's CPU count. On a small machine, twenty
    /// sessions starting together all finish late (each gets a twentieth of the CPU); in turns,
    /// the first are ready in seconds and the last no later. 0: no limit.
    pub launch_concurrency: Option<usize>,
    /// Where sessions run: `docker` (this engine's containers, the default) or `swarm`
    /// (services of the swarm this engine manages, so workers spread over its nodes; the
    /// images must be on every node, or in a registry they pull from).
    pub backend: BackendKind,
    /// Adaptive workers for every session the server launches, `MIN:MAX` (as `berth launch
    /// --adapt`): the scheduler's own estimate moves the count between them, so an idle
    /// session holds MIN (0 allowed) and a class of sessions costs little until someone
    /// computes. Instead of `workers`; the server runs the loop (`berth_launcher::adapt`) for
    /// every adaptive session it finds, those of an earlier server process too.
    pub adapt: Option<String>,
    /// A registry every build pushes its environment and repository images to, so that other
    /// machines (Swarm nodes) can pull them: `host:port` or `host:port/prefix` (as `berth build
    /// --push --registry`), e.g. `127.0.0.1:5000` for the registry `scripts/registry start`
    /// runs. Images are pushed as `<registry>/<name>:<tag>` (`<registry>/berth-env:<env hash>`,
    /// `<registry>/berth/<repo>:<tree>`); a build whose images the registry already has
    /// uploads no layer (the engine asks for each first). A build whose push fails fails, with
    /// the registry's one-line reason. `null` (the default): nothing is pushed.
    pub registry: Option<berth_builder::Registry>,
}

/// The session backends ([`Config::backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Containers of this Docker engine ([`berth_launcher::DockerBackend`]).
    #[default]
    Docker,
    /// Services of Docker's swarm mode ([`berth_launcher::SwarmBackend`]).
    Swarm,
}

/// One entry of [`Config::warm_pool`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolEntry {
    /// `<provider>/<spec>` as in launch URLs (`gh/binder-examples/conda/main`).
    pub spec: String,
    /// How many warm sessions to keep.
    pub sessions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8585".into(),
            public_url: None,
            providers: BTreeMap::from([
                ("gh".into(), "https://github.com".into()),
                ("gl".into(), "https://gitlab.com".into()),
                ("gist".into(), "https://gist.github.com".into()),
            ]),
            allow: Vec::new(),
            deny: Vec::new(),
            per_repo_quota: 0,
            total_quota: 0,
            workers: 2,
            max_workers: 16,
            allow_local: false,
            max_idle_seconds: 3600,
            ca_cert: std::env::var_os("BERTH_CA_CERT").map(PathBuf::from),
            python_fallback: false,
            python_mirror: berth_builder::PythonDownloads::default(),
            memory_bytes: Some(berth_launcher::DEFAULT_MEMORY_BYTES),
            allow_host_access: false,
            millicpus: None,
            allow_private_hosts: Vec::new(),
            abandoned_build_grace_seconds: 60,
            build_timeout_seconds: berth_builder::DEFAULT_BUILD_TIMEOUT.as_secs(),
            build_memory_bytes: berth_builder::BuildLimits::default().memory_bytes,
            build_pids: berth_builder::BuildLimits::default().pids,
            export: false,
            data_dir: None,
            warm_pool: Vec::new(),
            launch_concurrency: None,
            backend: BackendKind::Docker,
            adapt: None,
            registry: None,
        }
    }
}

impl Config {
    /// Reads a YAML file; missing fields keep their defaults, and provider entries replace or add
    /// to the default ones.
    ///
    /// # Errors
    /// A one-line message for an unreadable file or invalid YAML.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut cfg: Config =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut providers = Config::default().providers;
        providers.append(&mut cfg.providers);
        cfg.providers = providers;
        Ok(cfg)
    }

    /// The data library's root folder: `data_dir`, else `berth_data::default_root()`.
    pub fn data_root(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(berth_data::default_root)
    }

    /// The public URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_setting_is_read_and_checked() {
        let cfg: Config = serde_yaml::from_str("registry: 127.0.0.1:5000/team\n").unwrap();
        assert_eq!(
            cfg.registry.map(|r| r.to_string()).as_deref(),
            Some("127.0.0.1:5000/team")
        );
        assert!(Config::default().registry.is_none());
        let e = serde_yaml::from_str::<Config>("registry: http://127.0.0.1:5000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a scheme"), "{e}");
    }
}
