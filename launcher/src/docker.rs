//! The Docker backend: one bridge network per session, a Jupyter container, a Dask scheduler
//! and workers, all found again from their labels.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings, HostConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tracing::{info, info_span, Instrument};

use crate::{probe, random_hex, Backend, LaunchError, Limits, Session, SessionSpec, SessionStatus};

/// Label keys of session containers and networks.
mod label {
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
}

const ROLE_SESSION: &str = "session";
const ROLE_SCHEDULER: &str = "scheduler";
const ROLE_WORKER: &str = "worker";
const JUPYTER_PORT: &str = "8888/tcp";
/// CPU weight of the cluster's containers while Jupyter starts (Docker's default is 1024):
/// Jupyter's start-up is the critical path of a launch.
const STARTUP_CPU_SHARES: i64 = 256;
/// Whether the cluster starts with [`STARTUP_CPU_SHARES`].
const STARTUP_BACKGROUND: bool = true;
const DASHBOARD_PORT: &str = "8787/tcp";

/// A port that is free on `ip` now (the OS picks it); the engine binds it moments later.
fn free_port(ip: &str) -> Result<u16, LaunchError> {
    let listener = std::net::TcpListener::bind((ip, 0))
        .map_err(|e| LaunchError::Engine(format!("cannot find a free port on {ip}: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| LaunchError::Engine(e.to_string()))
}

fn engine(e: bollard::errors::Error) -> LaunchError {
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
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(engine)
    }

    async fn networks(&self, session: &str) -> Result<Vec<String>, LaunchError> {
        let filters = HashMap::from([("label", vec![format!("{}={session}", label::SESSION)])]);
        let opts = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let nets = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(engine)?;
        Ok(nets.into_iter().filter_map(|n| n.id).collect())
    }

    /// Removes everything labelled with the session; returns how many objects it removed.
    async fn remove_all(&self, session: &str) -> Result<usize, LaunchError> {
        let mut n = 0;
        for c in self.containers(Some(session)).await? {
            if let Some(id) = c.id {
                let opts = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                match self.docker.remove_container(&id, Some(opts)).await {
                    Ok(()) => n += 1,
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => {}
                    Err(e) => return Err(engine(e)),
                }
            }
        }
        for net in self.networks(session).await? {
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
        background: bool,
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
            cpu_shares: background.then_some(STARTUP_CPU_SHARES),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(true),
            network_mode: Some(network.to_string()),
            port_bindings,
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
            user: Some("1000:1000".into()),
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

    fn worker_cmd(scheduler: &str, name: &str, limits: &Limits) -> Vec<String> {
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
        } = *w;
        let network = format!("berth-{session}");
        let starts = indices.map(|i| {
            let name = format!("berth-{session}-worker-{i}");
            let mut labels = common.clone();
            labels.insert(label::ROLE.into(), ROLE_WORKER.into());
            labels.insert(label::WORKER.into(), i.to_string());
            let cmd = Self::worker_cmd("tcp://scheduler:8786", &name, limits);
            let env = vec![format!("PYTHONPATH={repo_dir}")];
            let network = network.clone();
            async move {
                self.run_container(
                    &name, image, cmd, env, labels, limits, &network, None, None, background,
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

    /// Waits until Jupyter answers (when `jupyter` is given) and the scheduler sees `workers`.
    /// The moment Jupyter answers, the cluster gets its full CPU weight back.
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
        let mut polls: u32 = 0;
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
                seen = probe::dask_workers(&client, d).await.unwrap_or(0);
            }
            let cluster_ok = dashboard.is_none() || seen == workers;
            if dashboard.is_some() {
                tracing::debug!(
                    session,
                    seen,
                    seconds = started.elapsed().as_secs_f64(),
                    "workers seen"
                );
            }
            if jupyter_ok && cluster_ok {
                return Ok(());
            }
            // A container that died will never become ready: fail now, with its role. (Checked
            // once a second: listing containers costs the engine more than a probe.)
            polls += 1;
            let listed = if polls.is_multiple_of(10) {
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_inner(
        &self,
        spec: &SessionSpec,
        id: &str,
        token: &str,
    ) -> Result<Session, LaunchError> {
        let network = format!("berth-{id}");
        let base_url = spec.base_url.clone().unwrap_or_else(|| "/".into());
        let open = match &spec.open {
            Some(o) => o.url_path()?,
            None => "lab".to_string(),
        };
        let mut common: HashMap<String, String> = spec.labels.iter().cloned().collect();
        common.insert(label::SESSION.into(), id.into());
        common.insert(label::IMAGE.into(), spec.image.clone());
        common.insert(
            label::CREATED.into(),
            chrono::Utc::now().timestamp().to_string(),
        );
        common.insert(label::MAX_WORKERS.into(), spec.max_workers.to_string());
        common.insert(
            label::LIMITS.into(),
            serde_json::to_string(&spec.limits).unwrap_or_default(),
        );
        common.insert(label::BIND_IP.into(), spec.bind_ip.clone());
        common.insert(label::BASE_URL.into(), base_url.clone());
        common.insert(label::OPEN.into(), open.clone());
        common.insert(label::REPO_DIR.into(), spec.repo_dir.clone());

        tracing::debug!(session = id, "creating network");
        self.docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                labels: Some(common.clone()),
                ..Default::default()
            })
            .await
            .map_err(engine)?;

        // The dashboard's host port is chosen up front, so Jupyter (the slowest to start) can
        // start first, already knowing the dashboard link.
        let dashboard = if spec.workers > 0 {
            Some(format!(
                "http://{}:{}",
                spec.bind_ip,
                free_port(&spec.bind_ip)?
            ))
        } else {
            None
        };
        let mut env = vec![format!("JUPYTER_TOKEN={token}")];
        if let Some(d) = &dashboard {
            env.push("DASK_SCHEDULER_ADDRESS=tcp://scheduler:8786".into());
            env.push(format!("DASK_DISTRIBUTED__DASHBOARD__LINK={d}/status"));
        }
        let name = format!("berth-{id}-session");
        let mut labels = common.clone();
        labels.insert(label::ROLE.into(), ROLE_SESSION.into());
        labels.insert(label::TOKEN.into(), token.into());
        match &spec.command {
            Some(cmd) => {
                // A command starts working at once: the cluster must be there before it.
                if let Some(d) = &dashboard {
                    self.start_cluster(id, spec, &common, &network, d, false)
                        .await?;
                    self.wait_ready(id, None, Some(d), spec.workers, spec.ready_timeout)
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
                    false,
                )
                .await?;
            }
            None => {
                let cmd = vec![
                    "jupyter".to_string(),
                    "lab".into(),
                    "--ip=0.0.0.0".into(),
                    "--port=8888".into(),
                    "--no-browser".into(),
                    format!("--ServerApp.base_url={base_url}"),
                ];
                let publish = Some((JUPYTER_PORT, spec.bind_ip.as_str(), spec.port));
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
                    false,
                )
                .await?;
                tracing::debug!(session = id, "jupyter container started");
                if let Some(d) = &dashboard {
                    self.start_cluster(id, spec, &common, &network, d, STARTUP_BACKGROUND)
                        .await?;
                }
            }
        }
        tracing::debug!(session = id, "containers started");
        let jupyter_base = if spec.command.is_none() {
            let port = self.published_port(&name, JUPYTER_PORT).await?;
            Some(format!("http://{}:{port}{base_url}", spec.bind_ip))
        } else {
            None
        };
        self.wait_ready(
            id,
            jupyter_base.as_deref().map(|b| (b, token)),
            dashboard.as_deref(),
            spec.workers,
            spec.ready_timeout,
        )
        .await?;
        self.get(id).await
    }

    /// Starts the scheduler, published at `dashboard`'s port, then the workers, concurrently.
    async fn start_cluster(
        &self,
        id: &str,
        spec: &SessionSpec,
        common: &HashMap<String, String>,
        network: &str,
        dashboard: &str,
        background: bool,
    ) -> Result<(), LaunchError> {
        let port: u16 = dashboard
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| LaunchError::Engine(format!("bad dashboard address {dashboard}")))?;
        let name = format!("berth-{id}-scheduler");
        let mut labels = common.clone();
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
        self.run_container(
            &name,
            &spec.image,
            cmd,
            vec![format!("PYTHONPATH={}", spec.repo_dir)],
            labels,
            &spec.limits,
            network,
            Some("scheduler"),
            Some((DASHBOARD_PORT, &spec.bind_ip, Some(port))),
            background,
        )
        .await?;
        let w = Workers {
            session: id,
            image: &spec.image,
            common,
            limits: &spec.limits,
            repo_dir: &spec.repo_dir,
            background,
        };
        self.add_workers(&w, 1..=spec.workers).await
    }

    /// Runs a Python snippet in the scheduler container (for retiring workers).
    async fn scheduler_python(&self, session: &str, code: &str) -> Result<String, LaunchError> {
        let name = format!("berth-{session}-scheduler");
        let exec = self
            .docker
            .create_exec(
                &name,
                CreateExecOptions {
                    cmd: Some(vec!["python", "-c", code]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine)?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(engine)?
        {
            while let Some(Ok(chunk)) = output.next().await {
                out.push_str(&chunk.to_string());
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.map_err(engine)?;
        if inspect.exit_code != Some(0) {
            let last = out.lines().last().unwrap_or("").to_string();
            return Err(LaunchError::Scheduler(last));
        }
        Ok(out)
    }

    fn session_from(id: &str, containers: &[ContainerSummary]) -> Option<Session> {
        let role_of =
            |c: &ContainerSummary| c.labels.as_ref().and_then(|l| l.get(label::ROLE)).cloned();
        let session = containers
            .iter()
            .find(|c| role_of(c).as_deref() == Some(ROLE_SESSION))?;
        let labels = session.labels.clone().unwrap_or_default();
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
        let token = get(label::TOKEN);
        let server_url = port_of(session, 8888)
            .map(|p| format!("http://{bind_ip}:{p}{}", get(label::BASE_URL)))
            .unwrap_or_default();
        let url = if server_url.is_empty() {
            String::new()
        } else {
            format!("{server_url}{}?token={token}", get(label::OPEN))
        };
        let dashboard_url = containers
            .iter()
            .find(|c| role_of(c).as_deref() == Some(ROLE_SCHEDULER))
            .and_then(|c| port_of(c, 8787))
            .map(|p| format!("http://{bind_ip}:{p}/status"));
        let status = if !running(session) {
            SessionStatus::Stopped
        } else if up < workers.len() as u32 {
            SessionStatus::Degraded
        } else {
            SessionStatus::Running
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
        })
    }
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    async fn start(&self, spec: &SessionSpec) -> Result<Session, LaunchError> {
        if spec.workers > spec.max_workers {
            return Err(LaunchError::TooManyWorkers {
                session: "(new)".into(),
                wanted: spec.workers,
                max: spec.max_workers,
            });
        }
        let id = match &spec.id {
            Some(id) => {
                if !crate::valid_session_id(id) {
                    return Err(LaunchError::InvalidSessionId(id.clone()));
                }
                id.clone()
            }
            None => crate::new_session_id(&spec.name_hint),
        };
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
        let mut out: Vec<Session> = by_session
            .iter()
            .filter_map(|(id, cs)| Self::session_from(id, cs))
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Session, LaunchError> {
        let cs = self.containers(Some(id)).await?;
        Self::session_from(id, &cs).ok_or_else(|| LaunchError::UnknownSession(id.into()))
    }

    async fn scale(&self, id: &str, workers: u32) -> Result<Session, LaunchError> {
        let session = self.get(id).await?;
        if workers > session.max_workers {
            return Err(LaunchError::TooManyWorkers {
                session: id.into(),
                wanted: workers,
                max: session.max_workers,
            });
        }
        let Some(dashboard) = session
            .dashboard_url
            .as_deref()
            .map(|d| d.trim_end_matches("/status").to_string())
        else {
            return Err(LaunchError::Scheduler(format!(
                "session {id} has no Dask cluster (it was launched with --workers 0)"
            )));
        };
        let span = info_span!("scale", session = %id, from = session.workers, to = workers);
        async {
            let containers = self.containers(Some(id)).await?;
            let mut running = Vec::new();
            let mut max_index = 0;
            for c in &containers {
                let l = c.labels.clone().unwrap_or_default();
                if l.get(label::ROLE).map(String::as_str) != Some(ROLE_WORKER) {
                    continue;
                }
                let idx: u32 = l
                    .get(label::WORKER)
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0);
                max_index = max_index.max(idx);
                let name = format!("berth-{id}-worker-{idx}");
                if c.state == Some(ContainerSummaryStateEnum::RUNNING) {
                    running.push((idx, name));
                } else {
                    // A worker that died is replaced, not counted.
                    let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = self.docker.remove_container(&name, Some(opts)).await;
                }
            }
            running.sort();
            let current = running.len() as u32;
            if workers > current {
                let labels = containers
                    .iter()
                    .find(|c| {
                        c.labels
                            .as_ref()
                            .and_then(|l| l.get(label::ROLE))
                            .map(String::as_str)
                            == Some(ROLE_SESSION)
                    })
                    .and_then(|c| c.labels.clone())
                    .unwrap_or_default();
                let limits: Limits = labels
                    .get(label::LIMITS)
                    .and_then(|l| serde_json::from_str(l).ok())
                    .unwrap_or_default();
                let mut common: HashMap<String, String> = labels;
                common.remove(label::TOKEN);
                common.remove(label::ROLE);
                let image = session.image.clone();
                if self.docker.inspect_image(&image).await.is_err() {
                    return Err(LaunchError::ImageMissing(image));
                }
                let repo_dir = common
                    .get(label::REPO_DIR)
                    .cloned()
                    .unwrap_or_else(|| "/home/jovyan".into());
                let w = Workers {
                    session: id,
                    image: &image,
                    common: &common,
                    limits: &limits,
                    repo_dir: &repo_dir,
                    background: false,
                };
                self.add_workers(&w, max_index + 1..=max_index + (workers - current))
                    .await?;
            } else if workers < current {
                let retire: Vec<String> = running[workers as usize..]
                    .iter()
                    .map(|(_, n)| n.clone())
                    .collect();
                let names = serde_json::to_string(&retire).unwrap_or_default();
                let code = format!(
                    "from distributed import Client\n\
                     c = Client('tcp://127.0.0.1:8786', timeout=30)\n\
                     c.retire_workers(names={names}, close_workers=True, remove=True)\n\
                     c.close()\n"
                );
                self.scheduler_python(id, &code).await?;
                for name in &retire {
                    let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                    self.docker
                        .remove_container(name, Some(opts))
                        .await
                        .map_err(engine)?;
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

    async fn attach(&self, id: &str) -> Result<i64, LaunchError> {
        let name = format!("berth-{id}-session");
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        let mut s = self.docker.logs(&name, Some(opts));
        while let Some(item) = s.next().await {
            match item.map_err(engine)? {
                bollard::container::LogOutput::StdErr { message } => {
                    let _ = std::io::stderr().write_all(&message);
                }
                other => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&other.into_bytes());
                    let _ = out.flush();
                }
            }
        }
        let mut wait = self.docker.wait_container(&name, None);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(engine(e)),
            None => Err(LaunchError::Engine(format!("{name} gave no exit status"))),
        }
    }

    async fn last_activity(
        &self,
        id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, LaunchError> {
        let s = self.get(id).await?;
        if s.status == SessionStatus::Stopped || s.url.is_empty() {
            return Ok(None);
        }
        Ok(
            probe::jupyter_status(&probe::client(), &s.server_url, &s.token)
                .await
                .ok()
                .and_then(|st| st.last_activity),
        )
    }
}
