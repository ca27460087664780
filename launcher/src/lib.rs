//! berth's launcher: a session is a Jupyter server plus a Dask scheduler and workers, all from
//! the same image, on a private network.
//!
//! Everything above [`Backend`] is independent of where containers run; [`DockerBackend`] is the
//! embedded default. A Kubernetes backend implements the same trait. Sessions keep no state
//! outside the backend: they are found again from labels, so a new process (or a restarted
//! server) sees every running session.
#![deny(missing_docs)]

pub mod adapt;
mod docker;
pub mod egress;
pub mod probe;
mod shared;
mod swarm;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use docker::DockerBackend;
pub use swarm::{session_key, SwarmBackend};

/// Errors of the launcher. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No session has that id.
    #[error("no session {0:?} (see berth ls)")]
    UnknownSession(String),
    /// A session id that is not lowercase letters, digits and dashes.
    #[error("invalid session id {0:?}")]
    InvalidSessionId(String),
    /// A worker count outside `0..=max`.
    #[error("cannot scale session {session} to {wanted} workers: the maximum is {max}")]
    TooManyWorkers {
        /// The session.
        session: String,
        /// The count asked for.
        wanted: u32,
        /// The session's maximum.
        max: u32,
    },
    /// The image to start from does not exist (any more).
    #[error("image {0} does not exist; build it again with berth build")]
    ImageMissing(String),
    /// The requested host port is in use.
    #[error("port {0} is already in use on the host; choose another with --port or leave it out")]
    PortTaken(u16),
    /// A path to open that would leave the session (`..`, an absolute URL).
    #[error("invalid path {0:?}: it must be a relative path inside the session")]
    InvalidPath(String),
    /// The session did not become ready in time.
    #[error("session {session} was not ready after {seconds} s: {reason}")]
    NotReady {
        /// The session.
        session: String,
        /// How long berth waited, in seconds.
        seconds: u64,
        /// What was missing.
        reason: String,
    },
    /// No container engine answers.
    #[error("cannot reach the Docker engine: {0}")]
    EngineUnavailable(String),
    /// The Swarm backend's engine is not a manager of an active swarm.
    #[error("the Docker engine is not a swarm manager: run docker swarm init (or join this node to a swarm as a manager), or use --backend docker")]
    SwarmInactive,
    /// The engine answered with an error.
    #[error("Docker engine: {0}")]
    Engine(String),
    /// The Dask scheduler refused an operation.
    #[error("Dask scheduler: {0}")]
    Scheduler(String),
    /// An `--adapt MIN:MAX` that is not two counts with MIN ≤ MAX ≤ the session's maximum.
    #[error("invalid --adapt {}: {reason}", quote(.spec))]
    InvalidAdapt {
        /// The range as given.
        spec: String,
        /// Why it is refused.
        reason: String,
    },
    /// The rule that keeps sessions from the host's services could not be installed.
    #[error("cannot keep the session from the host's services: {0} (or launch with --allow-host-access)")]
    Isolation(String),
    /// An environment variable (`-e/--env KEY=VALUE`) that cannot be set.
    #[error("invalid --env {}: {reason}", quote(.spec))]
    InvalidEnv {
        /// The variable as given (quoted at most [`QUOTE_CHARS`] characters long).
        spec: String,
        /// Why it is refused.
        reason: String,
    },
    /// A bind mount (`-v/--volume SRC:DEST[:ro]`) that cannot be made.
    #[error("invalid --volume {}: {reason}", quote(.spec))]
    InvalidVolume {
        /// The mount as given (quoted at most [`QUOTE_CHARS`] characters long).
        spec: String,
        /// Why it is refused.
        reason: String,
    },
}

/// How many characters of user input an error message quotes before `…`.
pub const QUOTE_CHARS: usize = 60;

/// `s` in double quotes, at most [`QUOTE_CHARS`] characters of it, then `…`.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// Environment variables berth sets itself in a session's containers, which `-e/--env` may
/// not set: Jupyter's token (or the file holding it, on Swarm), and where `distributed.Client()` finds the session's cluster and
/// its dashboard.
pub const RESERVED_ENV: &[&str] = &[
    "JUPYTER_TOKEN",
    "JUPYTER_TOKEN_FILE",
    "DASK_SCHEDULER_ADDRESS",
    "DASK_DISTRIBUTED__DASHBOARD__LINK",
];

/// Checks one environment variable of a session: the name is a POSIX name (letters, digits
/// and `_`, not starting with a digit, at most 256 bytes), not one of [`RESERVED_ENV`], and the
/// value holds no NUL byte.
///
/// # Errors
/// [`LaunchError::InvalidEnv`] naming the reason.
pub fn check_env(key: &str, value: &str) -> Result<(), LaunchError> {
    let bad = |reason: String| LaunchError::InvalidEnv {
        spec: format!("{key}={value}"),
        reason,
    };
    let name_ok = !key.is_empty()
        && key.len() <= 256
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if !name_ok {
        return Err(bad(
            "the name must be letters, digits and '_', not starting with a digit".into(),
        ));
    }
    if RESERVED_ENV.contains(&key) {
        return Err(bad(format!("berth sets {key} itself")));
    }
    if value.contains('\0') {
        return Err(bad("the value holds a NUL byte".into()));
    }
    Ok(())
}

/// Parses one `-e/--env` argument as `docker run -e` and repo2docker do: `KEY=VALUE` sets
/// KEY (an empty VALUE too); a bare `KEY` passes on the value `host` gives for it, and is left
/// out (`Ok(None)`) when `host` has none. The result is checked with [`check_env`].
///
/// # Errors
/// [`LaunchError::InvalidEnv`].
pub fn parse_env(
    spec: &str,
    host: impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, LaunchError> {
    let (key, value) = match spec.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => match host(spec) {
            Some(v) => (spec.to_string(), v),
            None => {
                // Checked all the same, so a malformed name is an error either way.
                check_env(spec, "")?;
                return Ok(None);
            }
        },
    };
    check_env(&key, &value).map_err(|e| match e {
        LaunchError::InvalidEnv { reason, .. } => LaunchError::InvalidEnv {
            spec: spec.to_string(),
            reason,
        },
        other => other,
    })?;
    Ok(Some((key, value)))
}

/// A host folder or file bind-mounted into a session's Jupyter (or `berth run` command)
/// container and its Dask workers, as `docker run -v SRC:DEST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The host path: absolute, without `..`.
    pub source: String,
    /// The path in the containers: absolute, without `..`, not `/`.
    pub target: String,
    /// Mounted read-only (`:ro`); read-write by default, as repo2docker.
    pub read_only: bool,
}

impl Volume {
    /// Parses `SRC:DEST`, `SRC:DEST:ro` or `SRC:DEST:rw`. A relative SRC is taken from `cwd`
    /// and must exist (it is resolved to its real path, symlinks followed); DEST must be
    /// absolute.
    ///
    /// # Errors
    /// [`LaunchError::InvalidVolume`] for a missing part, a SRC that does not exist, a
    /// relative DEST, `..`, `:` or control characters in a path, or another mode than `ro`/`rw`.
    pub fn parse(spec: &str, cwd: &std::path::Path) -> Result<Self, LaunchError> {
        let bad = |reason: &str| LaunchError::InvalidVolume {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dest, read_only) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            [_, _, _] => return Err(bad("the mode after the second ':' must be ro or rw")),
            _ => {
                return Err(bad(
                    "expected SRC:DEST or SRC:DEST:ro (no ':' in the paths)",
                ))
            }
        };
        if src.is_empty() || dest.is_empty() {
            return Err(bad("expected SRC:DEST or SRC:DEST:ro"));
        }
        if spec.chars().any(|c| c.is_control()) {
            return Err(bad("the paths hold control characters"));
        }
        let path = cwd.join(src);
        let real = path
            .canonicalize()
            .map_err(|_| bad("the host path does not exist"))?;
        let source = real
            .to_str()
            .ok_or_else(|| bad("the host path is not UTF-8"))?
            .to_string();
        if !dest.starts_with('/') {
            return Err(bad("the path in the container must be absolute"));
        }
        if dest.split('/').any(|p| p == "..") {
            return Err(bad("the path in the container may not contain '..'"));
        }
        let target = format!("/{}", dest.trim_matches('/'));
        if target == "/" {
            return Err(bad("the path in the container may not be /"));
        }
        Ok(Self {
            source,
            target,
            read_only,
        })
    }

    /// The mount as Docker's `Binds` entry: `SRC:DEST` or `SRC:DEST:ro`.
    pub fn bind(&self) -> String {
        if self.read_only {
            format!("{}:{}:ro", self.source, self.target)
        } else {
            format!("{}:{}", self.source, self.target)
        }
    }

    /// Checks a mount built without [`Volume::parse`] (the engine creates a missing SRC as
    /// root, so callers check existence themselves): both paths absolute, without `..`, `:`
    /// or control characters, DEST not `/`.
    ///
    /// # Errors
    /// [`LaunchError::InvalidVolume`].
    pub fn check(&self) -> Result<(), LaunchError> {
        let bad = |reason: &str| LaunchError::InvalidVolume {
            spec: self.bind(),
            reason: reason.to_string(),
        };
        for p in [&self.source, &self.target] {
            if !p.starts_with('/')
                || p.contains(':')
                || p.chars().any(|c| c.is_control())
                || p.split('/').any(|c| c == "..")
            {
                return Err(bad(
                    "both paths must be absolute, without '..', ':' or control characters",
                ));
            }
        }
        if self.target.trim_matches('/').is_empty() {
            return Err(bad("the path in the container may not be /"));
        }
        Ok(())
    }
}

/// Where data sets of berth's data library appear in a session's containers: `/data/NAME`.
pub const DATA_MOUNT_ROOT: &str = "/data";

/// One version of a data set of berth's data library (a Zarr v3 store on the host), mounted
/// read-only at `/data/NAME` ([`DATA_MOUNT_ROOT`]) in a session's Jupyter (or command)
/// container and on every worker, including workers `scale` adds later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMount {
    /// The data set's name (berth-data's rules: 1 to 64 of `[A-Za-z0-9._-]`, not starting
    /// with `.`, no `..`).
    pub name: String,
    /// The exact version id (SHA-256, 64 lower-case hex digits).
    pub version: String,
    /// The version's store directory on the host (absolute).
    pub source: String,
}

impl DataMount {
    /// The read-only bind mount of the store at `/data/NAME`.
    ///
    /// # Errors
    /// [`LaunchError::InvalidVolume`] for a name that is not a data set name, or paths
    /// [`Volume::check`] refuses.
    pub fn volume(&self) -> Result<Volume, LaunchError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && !self.name.starts_with('.')
            && !self.name.contains("..")
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let v = Volume {
            source: self.source.clone(),
            target: format!("{DATA_MOUNT_ROOT}/{}", self.name),
            read_only: true,
        };
        if !name_ok {
            return Err(LaunchError::InvalidVolume {
                spec: v.bind(),
                reason: format!("{:?} is not a data set name", self.name),
            });
        }
        v.check()?;
        Ok(v)
    }
}

/// The session label value naming the data sets mounted: `NAME@<version>` entries joined
/// with `,`, in the order given (names and versions hold no `,` or `@`).
pub fn data_label(data: &[DataMount]) -> String {
    data.iter()
        .map(|d| format!("{}@{}", d.name, d.version))
        .collect::<Vec<_>>()
        .join(",")
}

/// Adaptive workers: the scheduler's own estimate of the workers it needs
/// (`adaptive_target`) drives the count between `min` and `max` ([`adapt::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adapt {
    /// The fewest workers (0 allowed: an idle session then holds none).
    pub min: u32,
    /// The most workers.
    pub max: u32,
}

impl Adapt {
    /// Parses `MIN:MAX` (as `--adapt 0:4`), checking `MIN <= MAX <= max_workers`.
    ///
    /// # Errors
    /// [`LaunchError::InvalidAdapt`] naming the reason.
    pub fn parse(spec: &str, max_workers: u32) -> Result<Self, LaunchError> {
        let bad = |reason: String| LaunchError::InvalidAdapt {
            spec: spec.to_string(),
            reason,
        };
        let (min, max) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected MIN:MAX, as 0:4".into()))?;
        let count = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("{s:?} is not a worker count")))
        };
        let (min, max) = (count(min)?, count(max)?);
        if min > max {
            return Err(bad("MIN is larger than MAX".into()));
        }
        if max == 0 {
            return Err(bad("MAX must be at least 1".into()));
        }
        if max > max_workers {
            return Err(bad(format!(
                "MAX is above the most workers a session may have ({max_workers}; see --max-workers)"
            )));
        }
        Ok(Self { min, max })
    }

    /// The label value: `MIN:MAX`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.min, self.max)
    }
}

/// The label of an adaptive session (value `MIN:MAX`, [`Adapt::label`]), read back as
/// [`Session::adapt`].
pub const ADAPT_LABEL: &str = "berth.adapt";

/// Resource limits of every container of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit per container, in bytes; `None` for none.
    pub memory_bytes: Option<u64>,
    /// CPU limit per container, in thousandths of a CPU; `None` for none.
    pub millicpus: Option<u64>,
    /// Maximum number of processes per container.
    pub pids: u64,
}

/// The default memory limit per session container: 2 GiB (mybinder.org gives 1–2 GB).
pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 30;

impl Default for Limits {
    /// [`DEFAULT_MEMORY_BYTES`] of memory, no CPU limit, 4096 processes.
    fn default() -> Self {
        Self {
            memory_bytes: Some(DEFAULT_MEMORY_BYTES),
            millicpus: None,
            pids: 4096,
        }
    }
}

/// What to open in JupyterLab, as BinderHub's `urlpath`, `labpath` and `filepath`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenPath {
    /// A server URL path, such as `lab/tree/index.ipynb` or `voila/render/x.ipynb`.
    UrlPath(String),
    /// A path in JupyterLab's file browser.
    LabPath(String),
    /// A file in the repository, opened in JupyterLab.
    FilePath(String),
}

impl OpenPath {
    /// The URL path (no leading `/`) this opens, as BinderHub builds it.
    ///
    /// # Errors
    /// [`LaunchError::InvalidPath`] for a path with `..`, a scheme, a leading `/` or `//`,
    /// a backslash or control characters.
    pub fn url_path(&self) -> Result<String, LaunchError> {
        let (raw, prefix) = match self {
            OpenPath::UrlPath(p) => (p, ""),
            OpenPath::LabPath(p) | OpenPath::FilePath(p) => (p, "lab/tree/"),
        };
        let p = raw.trim_start_matches('/');
        let bad = raw.starts_with("//")
            || p.contains("://")
            || p.contains('\\')
            || p.chars().any(|c| c.is_control())
            || p.split(['/', '?', '#'])
                .any(|seg| seg == ".." || seg == "%2e%2e" || seg == "%2E%2E");
        if bad {
            return Err(LaunchError::InvalidPath(raw.clone()));
        }
        Ok(format!("{prefix}{p}"))
    }
}

/// How to start a session.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The session id to use (see [`new_session_id`]); `None` makes one from `name_hint`.
    /// A caller that sets `base_url` from the id (a proxy) chooses it first.
    pub id: Option<String>,
    /// The image every container runs.
    pub image: String,
    /// A short name the session id starts with (the repository's name).
    pub name_hint: String,
    /// Dask workers to start; 0 starts no scheduler either, unless `adapt` is set.
    pub workers: u32,
    /// Adaptive workers between a minimum and a maximum, recorded in the label
    /// [`ADAPT_LABEL`]; the session starts with `min` workers (`workers` is ignored) and a
    /// scheduler even when `min` is 0. Something must run [`adapt::run`] for it.
    pub adapt: Option<Adapt>,
    /// The most workers `scale` may reach.
    pub max_workers: u32,
    /// Limits of each container.
    pub limits: Limits,
    /// Host address Jupyter and the dashboard are published on.
    pub bind_ip: String,
    /// Host port for Jupyter; `None` lets the engine choose a free one.
    pub port: Option<u16>,
    /// Jupyter's base URL, starting and ending with `/` (`/user/<session>/` behind a proxy).
    /// `None` means `/`.
    pub base_url: Option<String>,
    /// What to open.
    pub open: Option<OpenPath>,
    /// Instead of Jupyter, run this command in the session container (for `berth run`).
    pub command: Option<Vec<String>>,
    /// Extra labels for every container and the network (repository, ref, commit).
    pub labels: Vec<(String, String)>,
    /// Where the repository lives in the image (`$REPO_DIR`); put on the workers' and the
    /// scheduler's `PYTHONPATH`, so tasks can import the repository's own modules. An image
    /// that records it (the label `berth.repo_dir`, set by berth's builder) overrides it.
    pub repo_dir: String,
    /// Environment variables (`-e/--env`) of the Jupyter (or command) container, the scheduler
    /// and the workers, so tasks see the same environment as the notebook. Each is checked
    /// with [`check_env`]; a `PYTHONPATH` given here follows `repo_dir` on the cluster's.
    pub env: Vec<(String, String)>,
    /// Bind mounts (`-v/--volume`) of the Jupyter (or command) container and the workers, so
    /// Dask tasks read the same files as the notebook. Recorded in labels: workers that
    /// `scale` adds get them too.
    pub volumes: Vec<Volume>,
    /// Data sets of berth's data library, each mounted read-only at `/data/NAME` in the
    /// Jupyter (or command) container and on every worker (workers `scale` adds too); their
    /// exact versions are recorded in the session's label `berth.data` ([`data_label`]).
    pub data: Vec<DataMount>,
    /// How long to wait for readiness.
    pub ready_timeout: Duration,
    /// Whether the session's containers may reach services of the host through the bridge
    /// gateway (berth's server, a registry, anything listening on `0.0.0.0`). Off by default;
    /// outbound connections to other hosts work either way.
    pub host_access: bool,
}

impl SessionSpec {
    /// A spec for `image` with the defaults: 2 workers, at most 16, no limits but pids,
    /// published on 127.0.0.1 at a free port.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            id: None,
            image: image.into(),
            name_hint: "session".into(),
            workers: 2,
            adapt: None,
            max_workers: 16,
            limits: Limits::default(),
            bind_ip: "127.0.0.1".into(),
            port: None,
            base_url: None,
            open: None,
            command: None,
            labels: Vec::new(),
            repo_dir: "/home/jovyan".into(),
            env: Vec::new(),
            volumes: Vec::new(),
            data: Vec::new(),
            ready_timeout: Duration::from_secs(180),
            host_access: false,
        }
    }
}

/// How a session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Jupyter (or the command) and every worker run.
    Running,
    /// Jupyter runs, but the scheduler or some workers have stopped (`berth scale` heals it).
    Degraded,
    /// The session container has stopped.
    Stopped,
    /// Parts of the session exist, but not yet its Jupyter (or command) container, and its
    /// start deadline has not passed: a launch under way (or one killed moments ago).
    Starting,
    /// Parts of the session exist without its Jupyter (or command) container after its start
    /// deadline: a launch that was killed or failed and left them; `berth stop` removes them.
    Failed,
}

impl SessionStatus {
    /// The status as `berth ls` prints it (`running`, `degraded`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Running => "running",
            SessionStatus::Degraded => "degraded",
            SessionStatus::Stopped => "stopped",
            SessionStatus::Starting => "starting",
            SessionStatus::Failed => "failed",
        }
    }
}

/// A session as the backend sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The session id (`<name>-<8 hex>`).
    pub id: String,
    /// The URL to open, with the token.
    pub url: String,
    /// Jupyter's base URL on the host, without path or token (`http://host:port/base_url/`);
    /// empty for a command session.
    pub server_url: String,
    /// Jupyter's token.
    pub token: String,
    /// The image.
    pub image: String,
    /// The repository the session was launched from (its `berth.repo_url` label), if known.
    pub repo_url: String,
    /// Workers running.
    pub workers: u32,
    /// Workers the session should have.
    pub workers_wanted: u32,
    /// The most workers `scale` may reach.
    pub max_workers: u32,
    /// The Dask dashboard's URL, when there is a cluster.
    pub dashboard_url: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// How the session is doing.
    pub status: SessionStatus,
    /// The data sets mounted at `/data/NAME`, as `NAME@<version id>` (its `berth.data`
    /// label); empty when none.
    #[serde(default)]
    pub data: Vec<String>,
    /// The spec a server's warm pool started this session for (its `berth.pool` label, as
    /// `<provider>/<spec>`); `None` for a session started on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The range adaptive workers move in (its [`ADAPT_LABEL`] label); `None` for a session
    /// whose worker count changes only with `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt: Option<Adapt>,
}

impl SessionSpec {
    /// The workers to start with: `adapt`'s minimum when set, else `workers`.
    pub fn initial_workers(&self) -> u32 {
        self.adapt.map_or(self.workers, |a| a.min)
    }

    /// Whether the session has a Dask cluster (a scheduler): with workers, or adaptive.
    pub fn has_cluster(&self) -> bool {
        self.adapt.is_some() || self.workers > 0
    }
}

/// Reads [`Session::adapt`] back from a session's labels.
pub(crate) fn adapt_of(labels: &std::collections::HashMap<String, String>) -> Option<Adapt> {
    let (min, max) = labels.get(ADAPT_LABEL)?.split_once(':')?;
    Some(Adapt {
        min: min.parse().ok()?,
        max: max.parse().ok()?,
    })
}

/// One piece of a command's output, as the engine delivered it (not split into lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes the command wrote to its standard output.
    Stdout(Vec<u8>),
    /// Bytes the command wrote to its standard error.
    Stderr(Vec<u8>),
}

/// A session container being followed: its output as a stream, then its exit status.
pub struct Attached {
    /// The output from the container's start until it exits; ends when it has exited.
    pub output: futures_util::stream::BoxStream<'static, Result<Output, LaunchError>>,
    /// The exit status (0 for success), to await once `output` has ended.
    pub exit: futures_util::future::BoxFuture<'static, Result<i64, LaunchError>>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attached { .. }")
    }
}

/// The label a server's warm pool puts on the sessions it starts (value: `<provider>/<spec>`),
/// read back as [`Session::pool`].
pub const POOL_LABEL: &str = "berth.pool";

/// Where sessions run. Nothing above this trait knows which engine it is.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Starts a session and returns once Jupyter answers (or the command started) and the
    /// scheduler sees every worker. On failure nothing of the session is left.
    async fn start(&self, spec: &SessionSpec) -> Result<Session, LaunchError>;
    /// All sessions.
    async fn list(&self) -> Result<Vec<Session>, LaunchError>;
    /// One session.
    async fn get(&self, id: &str) -> Result<Session, LaunchError>;
    /// Adds workers, or retires them through the scheduler (so results they hold move to the
    /// others) and removes their containers. Returns once the scheduler sees `workers`.
    async fn scale(&self, id: &str, workers: u32) -> Result<Session, LaunchError>;
    /// Removes every container and the network of a session.
    ///
    /// # Errors
    /// [`LaunchError::UnknownSession`] when nothing carries the session's label.
    async fn stop(&self, id: &str) -> Result<(), LaunchError>;
    /// The logs of the session's containers, each line prefixed with its role.
    async fn logs(&self, id: &str) -> Result<String, LaunchError>;
    /// The session container's output from its start, followed until it exits, and its exit
    /// status (for `berth run`). The caller consumes [`Attached::output`] to its end, then
    /// awaits [`Attached::exit`]; nothing is written anywhere by the backend.
    async fn attach(&self, id: &str) -> Result<Attached, LaunchError>;
    /// When the session's Jupyter server last saw activity; `None` when it cannot tell.
    async fn last_activity(
        &self,
        id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, LaunchError>;
}

/// Stops every session (or every one of `only`) whose Jupyter server reported no activity for
/// `max_idle`; returns the ids stopped. Sessions whose activity cannot be read are kept.
///
/// # Errors
/// [`LaunchError`] from listing; errors stopping one session are logged and skipped.
pub async fn cull(
    backend: &dyn Backend,
    max_idle: Duration,
    only: Option<&[String]>,
) -> Result<Vec<String>, LaunchError> {
    let now = chrono::Utc::now();
    let mut stopped = Vec::new();
    for s in backend.list().await? {
        if only.is_some_and(|o| !o.contains(&s.id)) {
            continue;
        }
        let last = match backend.last_activity(&s.id).await {
            Ok(Some(t)) => t,
            _ => continue,
        };
        let idle = (now - last).to_std().unwrap_or_default();
        if idle >= max_idle {
            tracing::info!(session = %s.id, idle_seconds = idle.as_secs(), "culling idle session");
            match backend.stop(&s.id).await {
                Ok(()) => stopped.push(s.id),
                Err(e) => tracing::warn!(session = %s.id, error = %e, "cannot cull"),
            }
        }
    }
    Ok(stopped)
}

/// A new session id: up to 24 characters of `name_hint` (lowercase letters, digits, `-`), a
/// dash and 8 random hex digits.
pub fn new_session_id(name_hint: &str) -> String {
    let hint: String = name_hint
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    let hint = hint.trim_matches('-');
    format!(
        "{}-{}",
        if hint.is_empty() { "session" } else { hint },
        random_hex(4)
    )
}

/// Whether `id` has the form session ids have (so it is safe in container names and URLs).
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 48
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
}

/// A random token of 32 hex digits (128 bits).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // getrandom only fails where the OS has no random source at all.
    if getrandom::fill(&mut buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (t >> (i % 16 * 8)) as u8);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_paths() {
        assert_eq!(
            OpenPath::LabPath("index.ipynb".into()).url_path().unwrap(),
            "lab/tree/index.ipynb"
        );
        assert_eq!(
            OpenPath::UrlPath("/voila/render/a.ipynb".into())
                .url_path()
                .unwrap(),
            "voila/render/a.ipynb"
        );
        for bad in [
            "../x",
            "a/../../b",
            "http://evil.example/",
            "//evil.example",
            "a\\b",
            "x/%2e%2e/y",
        ] {
            assert!(OpenPath::UrlPath(bad.into()).url_path().is_err(), "{bad}");
        }
    }

    #[test]
    fn env_arguments() {
        let host = |k: &str| (k == "HOME_SET").then(|| "/h".to_string());
        assert_eq!(
            parse_env("A=1", host).unwrap(),
            Some(("A".into(), "1".into()))
        );
        assert_eq!(
            parse_env("A=x=y", host).unwrap(),
            Some(("A".into(), "x=y".into()))
        );
        assert_eq!(
            parse_env("E=", host).unwrap(),
            Some(("E".into(), "".into()))
        );
        assert_eq!(
            parse_env("HOME_SET", host).unwrap(),
            Some(("HOME_SET".into(), "/h".into()))
        );
        assert_eq!(parse_env("UNSET", host).unwrap(), None);
        for bad in [
            "JUPYTER_TOKEN=x",
            "DASK_SCHEDULER_ADDRESS=tcp://x:1",
            "1A=2",
            "=v",
            "A B=1",
            "A-B",
        ] {
            let e = parse_env(bad, host).unwrap_err().to_string();
            assert!(e.starts_with("invalid --env "), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse_env("JUPYTER_TOKEN=x", host)
            .unwrap_err()
            .to_string()
            .contains("berth sets JUPYTER_TOKEN itself"));
    }

    #[test]
    fn volume_arguments() {
        let dir = std::env::temp_dir();
        let real = dir.canonicalize().unwrap();
        let real = real.to_str().unwrap();
        let v = Volume::parse(".:/mnt/x", &dir).unwrap();
        assert_eq!(v.source, real);
        assert_eq!(v.target, "/mnt/x");
        assert!(!v.read_only);
        assert_eq!(v.bind(), format!("{real}:/mnt/x"));
        let v = Volume::parse(&format!("{real}:/mnt/x/:ro"), &dir).unwrap();
        assert!(v.read_only);
        assert_eq!(v.bind(), format!("{real}:/mnt/x:ro"));
        assert!(v.check().is_ok());
        for bad in [
            ".:relative",
            ".:/",
            ".:/a/../b",
            "/does/not/exist/berth:/mnt",
            ".:/mnt:rx",
            ".",
            ":/mnt",
            ".:/a:b:ro",
        ] {
            let e = Volume::parse(bad, &dir).unwrap_err().to_string();
            assert!(e.starts_with("invalid --volume "), "{bad}: {e}");
        }
        let odd = Volume {
            source: "rel".into(),
            target: "/x".into(),
            read_only: false,
        };
        assert!(odd.check().is_err());
    }

    #[test]
    fn data_mounts() {
        let id = "ab".repeat(32);
        let d = DataMount {
            name: "sst.v2".into(),
            version: id.clone(),
            source: format!("/lib/versions/{id}"),
        };
        let v = d.volume().unwrap();
        assert_eq!(v.bind(), format!("/lib/versions/{id}:/data/sst.v2:ro"));
        let e = DataMount {
            name: "winds".into(),
            ..d.clone()
        };
        assert_eq!(
            data_label(&[d.clone(), e]),
            format!("sst.v2@{id},winds@{id}")
        );
        for bad in ["", "..", ".x", "a/b", "a:b", &"n".repeat(65)] {
            let m = DataMount {
                name: bad.into(),
                ..d.clone()
            };
            let err = m.volume().unwrap_err().to_string();
            assert!(err.starts_with("invalid --volume "), "{bad}: {err}");
        }
        let rel = DataMount {
            source: "relative/store".into(),
            ..d
        };
        assert!(rel.volume().is_err());
    }

    #[test]
    fn tokens_are_random() {
        let a = random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_hex(16));
    }
}
