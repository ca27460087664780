//! The Docker backend: one bridge network per session, a Jupyter container, a Dask scheduler
//! and workers, all found again from their labels.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings, HostConfig,
    Network, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{FutureExt, StreamExt};
use tracing::{info, info_span, Instrument};

use crate::{
    probe, random_hex, shared, Attached, Backend, LaunchError, Limits, Output, Session,
    SessionSpec, SessionStatus,
};

/// Label keys of session containers and networks.
pub(crate) mod label {
    pub const SESSION: &str = "berth.session";
    pub const ROLE: &str = "berth.role";
    pub const WORKER: &str = "berth.worker";
    pub const TOKEN: &str = "berth.token";
    pub const IMAGE: &str = "berth.session.image";
    pub const CREATED: &str = "berth.created";
    pub const MAX_WORKERS: &str = "berth.max_workers";
    pub const LIMITS: &str = "berth.limits";
    pub const BIND_IP: &str = "berth.bind_ip";
    pub const BASE_URL: &str = "berth.base_url";
    pub const OPEN: &str = "berth.open";
    pub const REPO_DIR: &str = "berth.repo_dir";
    /// The host port the dashboard is published on (kept when the scheduler is replaced).
    pub const DASHBOARD_PORT: &str = "berth.dashboard_port";
    /// Unix time (seconds) after which a session without its Jupyter container has failed.
    pub const DEADLINE: &str = "berth.deadline";
    /// `true` when the session may reach the host's services.
    pub const HOST_ACCESS: &str = "berth.host_access";
    /// The user every container runs as (`uid`, or `uid:gid`).
    pub const USER: &str = "berth.user";
    /// The `-e/--env` variables, a JSON array of `[key, value]` pairs.
    pub const ENV: &str = "berth.env";
    /// The `-v/--volume` mounts, a JSON array of [`crate::Volume`] objects.
    pub const VOLUMES: &str = "berth.volumes";
    /// The data sets mounted at `/data/NAME`: `NAME@<version>,…` ([`crate::data_label`]).
    pub const DATA: &str = "berth.data";
    /// The spec a warm pool started the session for (`<provider>/<spec>`).
    pub const POOL: &str = crate::POOL_LABEL;
    /// On an image: the uid of the user berth's template created (set by the builder).
    pub const IMAGE_USER_ID: &str = "berth.user_id";
    /// The backend of a session that is not the Docker backend's (`swarm`); the Docker
    /// backend leaves such containers and networks alone.
    pub const BACKEND: &str = "berth.backend";
}

/// Whether labels are of a Swarm backend's session ([`label::BACKEND`] `swarm`).
fn on_swarm(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(label::BACKEND))
        .map(String::as_str)
        == Some("swarm")
}

/// The user containers run as when the image names none berth may use (root, a name, none).
pub(crate) const DEFAULT_USER: &str = "1000:1000";

pub(crate) const ROLE_SESSION: &str = "session";
pub(crate) const ROLE_SCHEDULER: &str = "scheduler";
pub(crate) const ROLE_WORKER: &str = "worker";
const JUPYTER_PORT: &str = "8888/tcp";
/// CPU weight of the cluster's containers while Jupyter starts (Docker's default is 1024):
/// Jupyter's start-up is the critical path of a launch.
const STARTUP_CPU_SHARES: i64 = 256;
/// Whether the cluster starts with [`STARTUP_CPU_SHARES`].
const STARTUP_BACKGROUND: bool = true;
const DASHBOARD_PORT: &str = "8787/tcp";
/// How often readiness probes run when no log line announced anything.
const READY_FALLBACK_POLL: Duration = Duration::from_millis(1000);
/// After an announcement in a log: probes this many more times, [`READY_QUICK_POLL`] apart,
/// should the first find the port not open yet.
const READY_QUICK_PROBES: u32 = 10;
/// See [`READY_QUICK_PROBES`].
const READY_QUICK_POLL: Duration = Duration::from_millis(50);

/// Ports this process handed out, with when: concurrent launches never pick the same port in
/// the moments before the engine binds it. Entries older than [`PORT_HOLD`] are forgotten.
static HANDED_OUT: std::sync::Mutex<Vec<(u16, Instant)>> = std::sync::Mutex::new(Vec::new());
/// How long a port handed out stays reserved in this process (seconds' scale: a launch binds
/// its ports within a second or two).
const PORT_HOLD: Duration = Duration::from_secs(300);
/// The lowest port berth hands out for sessions.
const SESSION_PORTS_FROM: u16 = 10_000;

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`, Linux's
/// default 32768–60999): the ports outgoing connections take.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999))
}

/// A port that is free on `ip` now; the engine binds it moments later.
///
/// Chosen at random below the kernel's ephemeral range ([`ephemeral_range`], from
/// [`SESSION_PORTS_FROM`]), so the ports of outgoing connections (the readiness probes of 20
/// sessions starting at once open thousands) never take it first, and never one this process
/// handed out in the last [`PORT_HOLD`]. Where the ephemeral range leaves no room below it, the
/// OS picks (bind to port 0).
fn free_port(ip: &str) -> Result<u16, LaunchError> {
    let (low, _) = ephemeral_range();
    let mut held = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|(_, at)| at.elapsed() < PORT_HOLD);
    let span = low.saturating_sub(SESSION_PORTS_FROM);
    if span >= 1000 {
        for _ in 0..200 {
            let mut b = [0u8; 2];
            if getrandom::fill(&mut b).is_err() {
                break;
            }
            let port = SESSION_PORTS_FROM + u16::from_le_bytes(b) % span;
            if held.iter().any(|(p, _)| *p == port) {
                continue;
            }
            if std::net::TcpListener::bind((ip, port)).is_ok() {
                held.push((port, Instant::now()));
                return Ok(port);
            }
        }
    }
    let listener = std::net::TcpListener::bind((ip, 0))
        .map_err(|e| LaunchError::Engine(format!("cannot find a free port on {ip}: {e}")))?;
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| LaunchError::Engine(e.to_string()))?;
    held.push((port, Instant::now()));
    Ok(port)
}

/// The port of a dashboard address (`http://host:port`).
fn dashboard_port(dashboard: &str) -> Result<u16, LaunchError> {
    dashboard
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| LaunchError::Engine(format!("bad dashboard address {dashboard}")))
}

pub(crate) fn engine(e: bollard::errors::Error) -> LaunchError {
    LaunchError::Engine(e.to_string().lines().next().unwrap_or("").to_string())
}

/// What every worker of a session shares.
#[derive(Clone, Copy)]
struct Workers<'a> {
    session: &'a str,
    image: &'a str,
    common: &'a HashMap<String, String>,
    limits: &'a Limits,
    repo_dir: &'a str,
    background: bool,
    /// The user the containers run as.
    user: &'a str,
    /// The `-e/--env` variables.
    env: &'a [(String, String)],
    /// The `-v/--volume` mounts, as Docker's `Binds` entries.
    binds: &'a [String],
}

/// Dask settings (as `DASK_*` variables, Dask's configuration convention) that make an idle
/// cluster cheap: by default an idle worker wakes every 10 ms to sample its threads for the
/// profiler, every 20 ms for the event-loop tick and every 500 ms for the system monitor, which
/// costs a session of two workers about 0.13 of a core while nobody computes; with these it
/// costs 0.03 (bench/launch, README). The profiler, the blocked-loop warning and the
/// dashboard's system page all still work, at a coarser grain. A variable the user gives
/// (`-e`) wins.
pub const QUIET_CLUSTER_ENV: [(&str, &str); 3] = [
    ("DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL", "100ms"),
    ("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "1s"),
    ("DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL", "2s"),
];

/// The environment of the scheduler and the workers: the repository on `PYTHONPATH` (before
/// a `PYTHONPATH` the user gave), [`QUIET_CLUSTER_ENV`] unless the user set those names, then
/// the user's other variables.
pub(crate) fn cluster_env(repo_dir: &str, env: &[(String, String)]) -> Vec<String> {
    let mut python_path = repo_dir.to_string();
    let mut out = Vec::new();
    for (k, v) in env {
        if k == "PYTHONPATH" {
            if !v.is_empty() {
                python_path = format!("{repo_dir}:{v}");
            }
        } else {
            out.push(format!("{k}={v}"));
        }
    }
    let quiet = QUIET_CLUSTER_ENV
        .iter()
        .filter(|(k, _)| !env.iter().any(|(u, _)| u == k))
        .map(|(k, v)| format!("{k}={v}"));
    out.splice(
        0..0,
        std::iter::once(format!("PYTHONPATH={python_path}")).chain(quiet),
    );
    out
}

/// The user a session's containers run as, from the image's labels and config: the uid berth's
/// builder recorded (`berth.user_id`), as `uid:uid` (berth's images give the user a group of
/// the same id); else the image's own `USER` when it is numeric and not
/// root (a repository's Dockerfile); else [`DEFAULT_USER`]. Never root.
fn image_user(labels: &HashMap<String, String>, config_user: Option<&str>) -> String {
    let uid_ok = |s: &str| s.parse::<u32>().is_ok_and(|n| n > 0);
    if let Some(uid) = labels.get(label::IMAGE_USER_ID) {
        if uid_ok(uid) {
            // berth's images make the user's group with the same id.
            return format!("{uid}:{uid}");
        }
    }
    if let Some(u) = config_user {
        let ok = match u.split_once(':') {
            Some((uid, gid)) => uid_ok(uid) && gid.parse::<u32>().is_ok(),
            None => uid_ok(u),
        };
        if ok {
            return u.to_string();
        }
    }
    DEFAULT_USER.to_string()
}

/// How a container starts besides its command.
#[derive(Clone, Copy, Default)]
struct StartOpts {
    /// Starts with [`STARTUP_CPU_SHARES`] (the cluster, while Jupyter boots).
    background: bool,
    /// Restarted by the engine when it exits or the engine restarts (`unless-stopped`), so a
    /// session survives an engine restart. Off for `berth run`'s command.
    restart: bool,
}

/// Sessions as Docker containers on this machine.
#[derive(Debug, Clone)]
pub struct DockerBackend {
    docker: Docker,
}

impl DockerBackend {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket), negotiating the API
    /// version.
    ///
    /// # Errors
    /// [`LaunchError::EngineUnavailable`].
    pub async fn connect() -> Result<Self, LaunchError> {
        let un = |e: bollard::errors::Error| LaunchError::EngineUnavailable(e.to_string());
        let docker = Docker::connect_with_local_defaults().map_err(un)?;
        let docker = docker.negotiate_version().await.map_err(un)?;
        docker.ping().await.map_err(un)?;
        Ok(Self { docker })
    }

    /// Uses an existing client.
    pub fn with_client(docker: Docker) -> Self {
        Self { docker }
    }

    async fn containers(
        &self,
        session: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, LaunchError> {
        let filter = match session {
            Some(s) => format!("{}={s}", label::SESSION),
            None => label::SESSION.to_string(),
        };
        let filters = HashMap::from([("label", vec![filter])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let mut cs = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(engine)?;
        // The Swarm backend's tasks are its sessions, not this backend's.
        cs.retain(|c| !on_swarm(c.labels.as_ref()));
        Ok(cs)
    }

    /// How many containers (in any state) carry session `id`'s label on this engine, the
    /// Swarm backend's tasks' too.
    pub(crate) async fn session_containers(&self, id: &str) -> Result<usize, LaunchError> {
        let filters = HashMap::from([("label", vec![format!("{}={id}", label::SESSION)])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let cs = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(engine)?;
        Ok(cs.len())
    }

    /// The networks labelled with `session`, or with any session (not the Swarm backend's).
    async fn networks(&self, session: Option<&str>) -> Result<Vec<Network>, LaunchError> {
        let filter = match session {
            Some(s) => format!("{}={s}", label::SESSION),
            None => label::SESSION.to_string(),
        };
        let filters = HashMap::from([("label", vec![filter])]);
        let opts = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let mut ns = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(engine)?;
        ns.retain(|n| !on_swarm(n.labels.as_ref()));
        Ok(ns)
    }

    /// Removes everything labelled with the session; returns how many objects it removed.
    async fn remove_all(&self, session: &str) -> Result<usize, LaunchError> {
        // Containers at once: the engine stops each (up to its grace period) in parallel.
        let removals = self
            .containers(Some(session))
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .map(|id| async move {
                let opts = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                match self.docker.remove_container(&id, Some(opts)).await {
                    Ok(()) => Ok(1),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => Ok(0),
                    Err(e) => Err(engine(e)),
                }
            });
        let mut n: usize = futures_util::future::try_join_all(removals)
            .await?
            .into_iter()
            .sum();
        // The network last: it cannot go while a container is attached.
        for net in self.networks(Some(session)).await? {
            let Some(net) = net.id else { continue };
            match self.docker.remove_network(&net).await {
                Ok(()) => n += 1,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(engine(e)),
            }
        }
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        name: &str,
        image: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        labels: HashMap<String, String>,
        limits: &Limits,
        network: &str,
        alias: Option<&str>,
        publish: Option<(&str, &str, Option<u16>)>,
        start: StartOpts,
        user: &str,
        binds: &[String],
    ) -> Result<(), LaunchError> {
        let port_bindings = publish.map(|(port, ip, host)| {
            HashMap::from([(
                port.to_string(),
                Some(vec![PortBinding {
                    host_ip: Some(ip.to_string()),
                    host_port: Some(host.map(|p| p.to_string()).unwrap_or_default()),
                }]),
            )])
        });
        let host_config = HostConfig {
            memory: limits.memory_bytes.map(|b| b as i64),
            nano_cpus: limits.millicpus.map(|m| (m * 1_000_000) as i64),
            pids_limit: Some(limits.pids as i64),
            // Background containers yield the CPU to Jupyter while a session starts.
            cpu_shares: start.background.then_some(STARTUP_CPU_SHARES),
            restart_policy: start.restart.then_some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(true),
            network_mode: Some(network.to_string()),
            port_bindings,
            binds: (!binds.is_empty()).then(|| binds.to_vec()),
            ..Default::default()
        };
        let endpoints = HashMap::from([(
            network.to_string(),
            EndpointSettings {
                aliases: alias.map(|a| vec![a.to_string()]),
                ..Default::default()
            },
        )]);
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(cmd),
            env: Some(env),
            user: Some(user.to_string()),
            labels: Some(labels),
            exposed_ports: publish.map(|(port, _, _)| vec![port.to_string()]),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(endpoints),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        match self.docker.create_container(Some(opts), body).await {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.contains("image") => {
                return Err(LaunchError::ImageMissing(image.to_string()))
            }
            Err(e) => return Err(engine(e)),
        }
        if let Err(e) = self.docker.start_container(name, None).await {
            let msg = e.to_string();
            if let Some((_, _, Some(p))) = publish {
                if msg.contains("already allocated") || msg.contains("address already in use") {
                    return Err(LaunchError::PortTaken(p));
                }
            }
            return Err(engine(e));
        }
        Ok(())
    }

    async fn published_port(&self, name: &str, port: &str) -> Result<u16, LaunchError> {
        let c = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(engine)?;
        c.network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(port).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| LaunchError::Engine(format!("{name} has no published port {port}")))
    }

    pub(crate) fn worker_cmd(scheduler: &str, name: &str, limits: &Limits) -> Vec<String> {
        let threads = limits
            .millicpus
            .map(|m| m.div_ceil(1000).max(1))
            .unwrap_or(1);
        let mut cmd = vec![
            "dask".to_string(),
            "worker".into(),
            scheduler.into(),
            "--name".into(),
            name.into(),
            "--nthreads".into(),
            threads.to_string(),
            "--no-dashboard".into(),
            // The container is the worker's supervisor: a nanny process would double the
            // start-up cost (a second Python interpreter) for nothing.
            "--no-nanny".into(),
        ];
        if let Some(m) = limits.memory_bytes {
            cmd.extend(["--memory-limit".into(), m.to_string()]);
        }
        cmd
    }

    async fn add_workers(
        &self,
        w: &Workers<'_>,
        indices: impl Iterator<Item = u32>,
    ) -> Result<(), LaunchError> {
        let Workers {
            session,
            image,
            common,
            limits,
            repo_dir,
            background,
            user,
            env,
            binds,
        } = *w;
        let network = format!("berth-{session}");
        let starts = indices.map(|i| {
            let name = format!("berth-{session}-worker-{i}");
            let mut labels = common.clone();
            labels.insert(label::ROLE.into(), ROLE_WORKER.into());
            labels.insert(label::WORKER.into(), i.to_string());
            let cmd = Self::worker_cmd("tcp://scheduler:8786", &name, limits);
            let env = cluster_env(repo_dir, env);
            let network = network.clone();
            let start = StartOpts {
                background,
                restart: true,
            };
            async move {
                self.run_container(
                    &name, image, cmd, env, labels, limits, &network, None, None, start, user,
                    binds,
                )
                .await
            }
        });
        futures_util::future::try_join_all(starts).await.map(|_| ())
    }

    /// Gives the cluster's containers Docker's default CPU weight back (after Jupyter started).
    async fn restore_cpu_shares(&self, session: &str) -> Result<(), LaunchError> {
        for c in self.containers(Some(session)).await? {
            let role = c
                .labels
                .as_ref()
                .and_then(|l| l.get(label::ROLE))
                .map(String::as_str);
            if let (Some(cid), true) = (c.id, role != Some(ROLE_SESSION)) {
                let body = bollard::models::ContainerUpdateBody {
                    cpu_shares: Some(1024),
                    ..Default::default()
                };
                self.docker
                    .update_container(&cid, body)
                    .await
                    .map_err(engine)?;
            }
        }
        Ok(())
    }

    /// Wakes `notify` whenever the log of `container` (followed from its start) shows a line
    /// containing `needle`: readiness reacts to the processes' own announcements instead of
    /// polling their HTTP servers.
    fn watch_log(
        &self,
        container: String,
        needle: &'static str,
        notify: std::sync::Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let opts = LogsOptionsBuilder::new()
                .stdout(true)
                .stderr(true)
                .follow(true)
                .build();
            let mut s = docker.logs(&container, Some(opts));
            // Chunks need not end at line ends: keep the tail of the last one.
            let mut tail = String::new();
            while let Some(Ok(item)) = s.next().await {
                tail.push_str(&item.to_string());
                if tail.contains(needle) {
                    notify.notify_one();
                }
                let keep = tail.len().saturating_sub(needle.len());
                let cut = (keep..=tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap_or(tail.len());
                tail.drain(..cut);
            }
        })
    }

    /// Waits until Jupyter answers (when `jupyter` is given) and the scheduler sees `workers`.
    /// The moment Jupyter answers, the cluster gets its full CPU weight back.
    ///
    /// Event-driven: the probes run when Jupyter's log says it is running ("is running at",
    /// as Jupyter Server and the classic notebook print it) and when the scheduler's log
    /// registers a worker ("Register worker", distributed's INFO line), then shortly after in
    /// case the port was not open yet; otherwise once every [`READY_FALLBACK_POLL`] (images
    /// whose servers print something else still start). Twenty sessions starting at once
    /// would otherwise spend a good share of the two cores answering probes.
    async fn wait_ready(
        &self,
        session: &str,
        jupyter: Option<(&str, &str)>,
        dashboard: Option<&str>,
        workers: u32,
        timeout: Duration,
    ) -> Result<(), LaunchError> {
        let client = probe::client();
        let started = Instant::now();
        let mut jupyter_ok = jupyter.is_none();
        let mut seen = 0;
        // The scheduler answered once (with no workers to wait for, that is the cluster's
        // readiness: an adaptive session may start with none).
        let mut scheduler_ok = dashboard.is_none();
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut watchers = Vec::new();
        if jupyter.is_some() {
            watchers.push(self.watch_log(
                format!("berth-{session}-session"),
                "is running at",
                notify.clone(),
            ));
        }
        if dashboard.is_some() {
            watchers.push(self.watch_log(
                format!("berth-{session}-scheduler"),
                "Register worker",
                notify.clone(),
            ));
        }
        struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.iter().for_each(tokio::task::JoinHandle::abort);
            }
        }
        let _watchers = AbortOnDrop(watchers);
        // Probes left to run in quick succession after an announcement.
        let mut quick = 0u32;
        let mut checked = Instant::now();
        loop {
            if !jupyter_ok {
                if let Some((base, token)) = jupyter {
                    jupyter_ok = probe::jupyter_status(&client, base, token).await.is_ok();
                    if jupyter_ok && dashboard.is_some() && STARTUP_BACKGROUND {
                        self.restore_cpu_shares(session).await?;
                    }
                    if jupyter_ok {
                        info!(
                            session,
                            seconds = started.elapsed().as_secs_f64(),
                            "jupyter answers"
                        );
                    }
                }
            }
            if let Some(d) = dashboard {
                if !scheduler_ok || seen < workers {
                    let answer = probe::dask_workers(&client, d).await;
                    scheduler_ok |= answer.is_ok();
                    seen = answer.unwrap_or(0);
                    tracing::debug!(
                        session,
                        seen,
                        seconds = started.elapsed().as_secs_f64(),
                        "workers seen"
                    );
                }
            }
            let cluster_ok = dashboard.is_none() || scheduler_ok && seen == workers;
            if jupyter_ok && cluster_ok {
                return Ok(());
            }
            // A container that died will never become ready: fail now, with its role. (Checked
            // once a second: listing containers costs the engine more than a probe.)
            let listed = if checked.elapsed() >= Duration::from_secs(1) {
                checked = Instant::now();
                self.containers(Some(session)).await?
            } else {
                Vec::new()
            };
            for c in listed {
                if c.state == Some(ContainerSummaryStateEnum::EXITED) {
                    let role = c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(label::ROLE))
                        .cloned()
                        .unwrap_or_default();
                    if role != ROLE_WORKER || dashboard.is_some() && seen < workers {
                        let status = c.status.unwrap_or_default();
                        return Err(LaunchError::NotReady {
                            session: session.into(),
                            seconds: started.elapsed().as_secs(),
                            reason: format!(
                                "the {role} container stopped ({status}); see berth logs"
                            ),
                        });
                    }
                }
            }
            if started.elapsed() > timeout {
                let reason = if !jupyter_ok {
                    "Jupyter did not answer".to_string()
                } else {
                    format!("the scheduler sees {seen} of {workers} workers")
                };
                return Err(LaunchError::NotReady {
                    session: session.into(),
                    seconds: timeout.as_secs(),
                    reason,
                });
            }
            if quick > 0 {
                quick -= 1;
                tokio::time::sleep(READY_QUICK_POLL).await;
                continue;
            }
            tokio::select! {
                () = notify.notified() => quick = READY_QUICK_PROBES,
                () = tokio::time::sleep(READY_FALLBACK_POLL) => {}
            }
        }
    }

    async fn start_inner(
        &self,
        spec: &SessionSpec,
        id: &str,
        token: &str,
    ) -> Result<Session, LaunchError> {
        let network = format!("berth-{id}");
        // Data sets are read-only bind mounts like the others, so recording every mount in
        // one label lets `scale` give new workers the data too.
        let checked = shared::check(spec)?;
        let (base_url, volumes) = (&checked.base_url, &checked.volumes);
        let binds: Vec<String> = volumes.iter().map(crate::Volume::bind).collect();
        // The image decides who runs it and where its repository is.
        let (user, repo_dir) = self.image_runtime(&spec.image, &spec.repo_dir).await?;
        let mut common = shared::common_labels(spec, id, &checked, &user, &repo_dir);
        common.insert(label::HOST_ACCESS.into(), spec.host_access.to_string());
        // Host ports are chosen up front, so they stay the same when the engine restarts the
        // containers (the session keeps its URL), and so Jupyter (the slowest to start) can
        // start first, already knowing the dashboard link.
        let dashboard_port = if spec.has_cluster() {
            Some(free_port(&spec.bind_ip)?)
        } else {
            None
        };
        let dashboard = dashboard_port.map(|p| format!("http://{}:{p}", spec.bind_ip));
        if let Some(p) = dashboard_port {
            common.insert(label::DASHBOARD_PORT.into(), p.to_string());
        }
        let jupyter_port = match (spec.port, &spec.command) {
            (Some(p), _) => Some(p),
            (None, None) => Some(free_port(&spec.bind_ip)?),
            (None, Some(_)) => None,
        };

        let mut options = HashMap::new();
        if !spec.host_access {
            crate::egress::ensure_host_guard().await?;
            options.insert(
                "com.docker.network.bridge.name".to_string(),
                crate::egress::bridge_name(),
            );
        }
        tracing::debug!(session = id, "creating network");
        self.docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                labels: Some(common.clone()),
                options: Some(options),
                ..Default::default()
            })
            .await
            .map_err(engine)?;
        let mut env = vec![format!("JUPYTER_TOKEN={token}")];
        if dashboard.is_some() {
            // The host port (`dashboard_url`) stays for direct use.
            env.extend(shared::cluster_link_env(base_url));
        }
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let w = Workers {
            session: id,
            image: &spec.image,
            common: &common,
            limits: &spec.limits,
            repo_dir: &repo_dir,
            background: false,
            user: &user,
            env: &spec.env,
            binds: &binds,
        };
        let name = format!("berth-{id}-session");
        let mut labels = common.clone();
        labels.insert(label::ROLE.into(), ROLE_SESSION.into());
        labels.insert(label::TOKEN.into(), token.into());
        match &spec.command {
            Some(cmd) => {
                // A command starts working at once: the cluster must be there before it.
                if let Some(d) = &dashboard {
                    self.start_cluster(&w, spec, &network, d, true).await?;
                    self.wait_ready(
                        id,
                        None,
                        Some(d),
                        spec.initial_workers(),
                        spec.ready_timeout,
                    )
                    .await?;
                }
                self.run_container(
                    &name,
                    &spec.image,
                    cmd.clone(),
                    env,
                    labels,
                    &spec.limits,
                    &network,
                    None,
                    None,
                    StartOpts::default(),
                    &user,
                    &binds,
                )
                .await?;
            }
            None => {
                let cmd = shared::jupyter_cmd(base_url);
                let publish = Some((JUPYTER_PORT, spec.bind_ip.as_str(), jupyter_port));
                // Jupyter's start-up is the longest part of a launch: its container starts
                // first, and the cluster's containers are created while it boots.
                self.run_container(
                    &name,
                    &spec.image,
                    cmd,
                    env,
                    labels,
                    &spec.limits,
                    &network,
                    None,
                    publish,
                    StartOpts {
                        background: false,
                        restart: true,
                    },
                    &user,
                    &binds,
                )
                .await?;
                tracing::debug!(session = id, "jupyter container started");
                if let Some(d) = &dashboard {
                    let w = Workers {
                        background: STARTUP_BACKGROUND,
                        ..w
                    };
                    self.start_cluster(&w, spec, &network, d, true).await?;
                }
            }
        }
        tracing::debug!(session = id, "containers started");
        let jupyter_base = if spec.command.is_none() {
            // The port berth chose (or was given) is the one the engine bound.
            let port = match jupyter_port {
                Some(p) => p,
                None => self.published_port(&name, JUPYTER_PORT).await?,
            };
            Some(format!("http://{}:{port}{base_url}", spec.bind_ip))
        } else {
            None
        };
        self.wait_ready(
            id,
            jupyter_base.as_deref().map(|b| (b, token)),
            dashboard.as_deref(),
            spec.initial_workers(),
            spec.ready_timeout,
        )
        .await?;
        self.get(id).await
    }

    /// Starts the scheduler, published at `dashboard`'s port, and the workers, concurrently.
    async fn start_cluster(
        &self,
        w: &Workers<'_>,
        spec: &SessionSpec,
        network: &str,
        dashboard: &str,
        with_workers: bool,
    ) -> Result<(), LaunchError> {
        let port = dashboard_port(dashboard)?;
        let scheduler = self.start_scheduler(w, network, &spec.bind_ip, port);
        if !with_workers {
            return scheduler.await;
        }
        // All at once: a worker that comes up before the scheduler's name resolves retries
        // (distributed's connect loop), and the engine overlaps the containers' set-up.
        futures_util::future::try_join(scheduler, self.add_workers(w, 1..=spec.initial_workers()))
            .await
            .map(|_| ())
    }

    /// The user the containers of `image` run as ([`image_user`]) and its `$REPO_DIR` (the
    /// label `berth.repo_dir`, else `fallback`).
    ///
    /// # Errors
    /// [`LaunchError::ImageMissing`] when the image does not exist.
    pub(crate) async fn image_runtime(
        &self,
        image: &str,
        fallback: &str,
    ) -> Result<(String, String), LaunchError> {
        let info = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(LaunchError::ImageMissing(image.to_string())),
            Err(e) => return Err(engine(e)),
        };
        let config = info.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let user = image_user(&labels, config.user.as_deref());
        let repo_dir = labels
            .get(label::REPO_DIR)
            .filter(|d| d.starts_with('/'))
            .cloned()
            .unwrap_or_else(|| fallback.to_string());
        Ok((user, repo_dir))
    }

    /// Starts the session's scheduler (network alias `scheduler`), its dashboard published on
    /// `bind_ip:port`.
    async fn start_scheduler(
        &self,
        w: &Workers<'_>,
        network: &str,
        bind_ip: &str,
        port: u16,
    ) -> Result<(), LaunchError> {
        let name = format!("berth-{}-scheduler", w.session);
        let mut labels = w.common.clone();
        labels.insert(label::ROLE.into(), ROLE_SCHEDULER.into());
        let cmd = [
            "dask",
            "scheduler",
            "--port",
            "8786",
            "--dashboard-address",
            ":8787",
        ]
        .map(String::from)
        .to_vec();
        let mut env = cluster_env(w.repo_dir, w.env);
        // The dashboard's packages (bokeh and what the kernel environment lacks for it) are in
        // their own folder of berth's images, seen by the scheduler only: the kernel
        // environment stays exactly the repository's.
        if let Some(path) = env.iter_mut().find(|e| e.starts_with("PYTHONPATH=")) {
            path.push_str(":/srv/dashboard");
        }
        // berth scales (and adapts) the cluster through the scheduler's own HTTP API.
        env.push(format!(
            "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES={}",
            probe::SCHEDULER_ROUTES
        ));
        self.run_container(
            &name,
            w.image,
            cmd,
            env,
            labels,
            w.limits,
            network,
            Some("scheduler"),
            Some((DASHBOARD_PORT, bind_ip, Some(port))),
            StartOpts {
                background: w.background,
                restart: true,
            },
            w.user,
            // The scheduler reads no data: the mounts are the notebook's and the workers'.
            &[],
        )
        .await
    }

    /// The session `id` from its containers and the labels of its network (either may be
    /// missing: a launch killed part-way leaves some of them). `None` when neither exists.
    fn session_from(
        id: &str,
        containers: &[ContainerSummary],
        network_labels: Option<&HashMap<String, String>>,
    ) -> Option<Session> {
        let role_of =
            |c: &ContainerSummary| c.labels.as_ref().and_then(|l| l.get(label::ROLE)).cloned();
        let session = containers
            .iter()
            .find(|c| role_of(c).as_deref() == Some(ROLE_SESSION));
        let labels = session
            .or_else(|| containers.first())
            .and_then(|c| c.labels.clone())
            .or_else(|| network_labels.cloned())?;
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let running = |c: &ContainerSummary| c.state == Some(ContainerSummaryStateEnum::RUNNING);
        let port_of = |c: &ContainerSummary, private: u16| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.private_port == private && p.public_port.is_some())
                .and_then(|p| p.public_port)
        };
        let workers: Vec<&ContainerSummary> = containers
            .iter()
            .filter(|c| role_of(c).as_deref() == Some(ROLE_WORKER))
            .collect();
        let up = workers.iter().filter(|c| running(c)).count() as u32;
        let bind_ip = get(label::BIND_IP);
        let token = if session.is_some() {
            get(label::TOKEN)
        } else {
            String::new()
        };
        let server_url = session
            .and_then(|s| port_of(s, 8888))
            .map(|p| format!("http://{bind_ip}:{p}{}", get(label::BASE_URL)))
            .unwrap_or_default();
        let url = if server_url.is_empty() {
            String::new()
        } else {
            format!("{server_url}{}?token={token}", get(label::OPEN))
        };
        let scheduler = containers
            .iter()
            .find(|c| role_of(c).as_deref() == Some(ROLE_SCHEDULER));
        // The dashboard's port is a label, so a session whose scheduler died still has one.
        let dashboard_port = labels
            .get(label::DASHBOARD_PORT)
            .and_then(|p| p.parse::<u16>().ok())
            .or_else(|| scheduler.and_then(|c| port_of(c, 8787)));
        let dashboard_url = dashboard_port.map(|p| format!("http://{bind_ip}:{p}/status"));
        let scheduler_down = dashboard_port.is_some() && !scheduler.is_some_and(running);
        let status = match session {
            None => {
                let deadline: i64 = get(label::DEADLINE).parse().unwrap_or(0);
                if chrono::Utc::now().timestamp() < deadline {
                    SessionStatus::Starting
                } else {
                    SessionStatus::Failed
                }
            }
            Some(s) if s.state == Some(ContainerSummaryStateEnum::CREATED) => {
                SessionStatus::Starting
            }
            Some(s) if !running(s) => SessionStatus::Stopped,
            Some(_) if scheduler_down || up < workers.len() as u32 => SessionStatus::Degraded,
            Some(_) => SessionStatus::Running,
        };
        Some(Session {
            id: id.to_string(),
            url,
            server_url,
            token,
            image: get(label::IMAGE),
            repo_url: get("berth.repo_url"),
            workers: up,
            workers_wanted: workers.len() as u32,
            max_workers: get(label::MAX_WORKERS).parse().unwrap_or(0),
            dashboard_url,
            created: get(label::CREATED).parse().unwrap_or(0),
            status,
            data: get(label::DATA)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
            pool: Some(get(label::POOL)).filter(|p| !p.is_empty()),
            adapt: crate::adapt_of(&labels),
        })
    }
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    async fn start(&self, spec: &SessionSpec) -> Result<Session, LaunchError> {
        shared::check(spec)?;
        let id = shared::session_id(spec)?;
        let token = random_hex(16);
        let span = info_span!("launch", session = %id, image = %spec.image, workers = spec.workers);
        let result = self.start_inner(spec, &id, &token).instrument(span).await;
        if result.is_err() {
            // Leave nothing half-started.
            if let Err(e) = self.remove_all(&id).await {
                tracing::warn!(session = %id, error = %e, "cleanup after a failed start");
            }
        } else {
            info!(session = %id, "session ready");
        }
        result
    }

    async fn list(&self) -> Result<Vec<Session>, LaunchError> {
        // Every container and network carrying a session label counts: a launch killed
        // part-way leaves some without the others, and `stop --all` must see them.
        let mut by_session: HashMap<String, Vec<ContainerSummary>> = HashMap::new();
        for c in self.containers(None).await? {
            if let Some(s) = c
                .labels
                .as_ref()
                .and_then(|l| l.get(label::SESSION))
                .cloned()
            {
                by_session.entry(s).or_default().push(c);
            }
        }
        let mut nets: HashMap<String, HashMap<String, String>> = HashMap::new();
        for n in self.networks(None).await? {
            if let Some(l) = n.labels {
                if let Some(s) = l.get(label::SESSION).cloned() {
                    by_session.entry(s.clone()).or_default();
                    nets.insert(s, l);
                }
            }
        }
        let mut out: Vec<Session> = by_session
            .iter()
            .filter_map(|(id, cs)| Self::session_from(id, cs, nets.get(id)))
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Session, LaunchError> {
        if !crate::valid_session_id(id) {
            return Err(LaunchError::UnknownSession(id.into()));
        }
        let cs = self.containers(Some(id)).await?;
        let net = if cs.is_empty() {
            self.networks(Some(id))
                .await?
                .into_iter()
                .find_map(|n| n.labels)
        } else {
            None
        };
        Self::session_from(id, &cs, net.as_ref())
            .ok_or_else(|| LaunchError::UnknownSession(id.into()))
    }

    async fn scale(&self, id: &str, workers: u32) -> Result<Session, LaunchError> {
        let session = self.get(id).await?;
        let dashboard = shared::scalable(&session, workers)?;
        let span = info_span!("scale", session = %id, from = session.workers, to = workers);
        async {
            let containers = self.containers(Some(id)).await?;
            let role_of = |c: &ContainerSummary| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(label::ROLE))
                    .cloned()
                    .unwrap_or_default()
            };
            let labels = containers
                .iter()
                .find(|c| role_of(c) == ROLE_SESSION)
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            let settings = shared::Settings::from_labels(&labels);
            let mut common: HashMap<String, String> = labels;
            common.remove(label::TOKEN);
            common.remove(label::ROLE);
            let image = session.image.clone();
            let bind_ip = common
                .get(label::BIND_IP)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into());
            let binds: Vec<String> = settings.volumes.iter().map(crate::Volume::bind).collect();
            let port = dashboard_port(&dashboard)?;
            let w = Workers {
                session: id,
                image: &image,
                common: &common,
                limits: &settings.limits,
                repo_dir: &settings.repo_dir,
                background: false,
                user: &settings.user,
                env: &settings.env,
                binds: &binds,
            };
            let remove = |name: String| async move {
                let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                match self.docker.remove_container(&name, Some(opts)).await {
                    Ok(())
                    | Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(engine(e)),
                }
            };
            let scheduler_up = containers.iter().any(|c| {
                role_of(c) == ROLE_SCHEDULER && c.state == Some(ContainerSummaryStateEnum::RUNNING)
            });
            let mut running = Vec::new();
            let mut max_index = 0;
            for c in &containers {
                let l = c.labels.clone().unwrap_or_default();
                if role_of(c) != ROLE_WORKER {
                    continue;
                }
                let idx: u32 = l
                    .get(label::WORKER)
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0);
                max_index = max_index.max(idx);
                let name = format!("berth-{id}-worker-{idx}");
                if scheduler_up && c.state == Some(ContainerSummaryStateEnum::RUNNING) {
                    running.push((idx, name));
                } else {
                    // A worker that died is replaced, not counted; with the scheduler gone,
                    // every worker is (they were attached to it).
                    remove(name).await?;
                }
            }
            running.sort();
            let current = running.len() as u32;
            // Anything to start needs the image: check once, before anything changes.
            if (!scheduler_up || workers > current)
                && self.docker.inspect_image(&image).await.is_err()
            {
                return Err(LaunchError::ImageMissing(image));
            }
            if !scheduler_up {
                info!(
                    session = id,
                    "the scheduler is not running; starting a new one"
                );
                remove(format!("berth-{id}-scheduler")).await?;
                self.start_scheduler(&w, &format!("berth-{id}"), &bind_ip, port)
                    .await?;
            }
            if workers > current {
                self.add_workers(&w, max_index + 1..=max_index + (workers - current))
                    .await?;
            } else if workers < current {
                let retire: Vec<String> = running[workers as usize..]
                    .iter()
                    .map(|(_, n)| n.clone())
                    .collect();
                probe::retire_workers(&probe::client(), &dashboard, &retire)
                    .await
                    .map_err(LaunchError::Scheduler)?;
                for name in retire {
                    remove(name).await?;
                }
            }
            self.wait_ready(
                id,
                None,
                Some(&dashboard),
                workers,
                Duration::from_secs(120),
            )
            .await
        }
        .instrument(span)
        .await?;
        self.get(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), LaunchError> {
        let span = info_span!("stop", session = %id);
        let removed = self.remove_all(id).instrument(span).await?;
        if removed == 0 {
            return Err(LaunchError::UnknownSession(id.into()));
        }
        Ok(())
    }

    async fn logs(&self, id: &str) -> Result<String, LaunchError> {
        let mut cs = self.containers(Some(id)).await?;
        if cs.is_empty() {
            return Err(LaunchError::UnknownSession(id.into()));
        }
        cs.sort_by_key(|c| c.names.clone());
        let mut out = String::new();
        for c in cs {
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default();
            let name = name.trim_start_matches('/').to_string();
            let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
            let mut s = self.docker.logs(&name, Some(opts));
            while let Some(item) = s.next().await {
                let chunk = item.map_err(engine)?.to_string();
                for line in chunk.lines() {
                    out.push_str(&format!("{name} | {line}\n"));
                }
            }
        }
        Ok(out)
    }

    async fn attach(&self, id: &str) -> Result<Attached, LaunchError> {
        let name = format!("berth-{id}-session");
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        let output = self
            .docker
            .logs(&name, Some(opts))
            .map(|item| match item.map_err(engine)? {
                bollard::container::LogOutput::StdErr { message } => {
                    Ok(Output::Stderr(message.to_vec()))
                }
                other => Ok(Output::Stdout(other.into_bytes().to_vec())),
            })
            .boxed();
        let docker = self.docker.clone();
        let exit = async move {
            let mut wait = docker.wait_container(&name, None);
            match wait.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Ok(code)
                }
                Some(Err(e)) => Err(engine(e)),
                None => Err(LaunchError::Engine(format!("{name} gave no exit status"))),
            }
        }
        .boxed();
        Ok(Attached { output, exit })
    }

    async fn last_activity(
        &self,
        id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, LaunchError> {
        Ok(shared::last_activity(&self.get(id).await?).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ports_are_distinct_and_below_the_ephemeral_range() {
        let (low, _) = ephemeral_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port("127.0.0.1").unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        if low >= SESSION_PORTS_FROM + 1000 {
            assert!(
                ports.iter().all(|p| (SESSION_PORTS_FROM..low).contains(p)),
                "{ports:?}"
            );
        }
    }

    #[test]
    fn the_user_a_session_runs_as() {
        let with = |uid: &str| HashMap::from([(label::IMAGE_USER_ID.to_string(), uid.to_string())]);
        let none = HashMap::new();
        assert_eq!(image_user(&with("1234"), Some("ana")), "1234:1234");
        assert_eq!(image_user(&with("0"), None), DEFAULT_USER);
        assert_eq!(image_user(&with("x"), Some("1001")), "1001");
        assert_eq!(image_user(&none, Some("1001:100")), "1001:100");
        assert_eq!(image_user(&none, Some("root")), DEFAULT_USER);
        assert_eq!(image_user(&none, Some("0")), DEFAULT_USER);
        assert_eq!(image_user(&none, Some("0:0")), DEFAULT_USER);
        assert_eq!(image_user(&none, Some("jovyan")), DEFAULT_USER);
        assert_eq!(image_user(&none, Some("")), DEFAULT_USER);
        assert_eq!(image_user(&none, None), DEFAULT_USER);
    }

    #[test]
    fn the_cluster_sees_the_repository_and_the_users_variables() {
        let quiet: Vec<String> = QUIET_CLUSTER_ENV
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let bare = cluster_env("/srv/r", &[]);
        assert_eq!(bare[0], "PYTHONPATH=/srv/r");
        assert_eq!(bare[1..], quiet[..]);
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("PYTHONPATH".to_string(), "/opt/lib".to_string()),
            (QUIET_CLUSTER_ENV[1].0.to_string(), "20ms".to_string()),
        ];
        let mut expected = vec!["PYTHONPATH=/srv/r:/opt/lib".to_string()];
        expected.extend([quiet[0].clone(), quiet[2].clone()]);
        expected.extend([
            "A=1".to_string(),
            format!("{}=20ms", QUIET_CLUSTER_ENV[1].0),
        ]);
        assert_eq!(cluster_env("/srv/r", &env), expected);
    }
}
