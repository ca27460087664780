//! The Swarm backend: a session is services of Docker's swarm mode on an attachable overlay
//! network of its own, so its workers run on whichever nodes of the swarm have room.
//!
//! The same guarantees as the Docker backend: one image for Jupyter, scheduler and workers;
//! limits (memory, CPU, pids), every capability dropped, never root; labels on the services
//! and the network are the only state. The session's token is not in any service spec (which
//! every user of the engine can read): it is a Swarm secret, mounted as a file that Jupyter
//! reads (`JUPYTER_TOKEN_FILE`), and derived from a key only berth's user holds
//! ([`session_key`]), so a restarted server finds every session's URL again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum,
    Limit, Mount, MountType, NetworkAttachmentConfig, NetworkCreateRequest, SecretSpec, Service,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    ListNetworksOptionsBuilder, ListNodesOptionsBuilder, ListSecretsOptionsBuilder,
    ListServicesOptionsBuilder, ListTasksOptionsBuilder, LogsOptionsBuilder,
};
use bollard::Docker;
use futures_util::{FutureExt, StreamExt};
use hmac::Mac;
use tracing::{info, info_span, Instrument};

use crate::docker::{
    cluster_env, engine, label, DockerBackend, ROLE_SCHEDULER, ROLE_SESSION, ROLE_WORKER,
};
use crate::{
    probe, shared, Attached, Backend, LaunchError, Limits, Output, Session, SessionSpec,
    SessionStatus,
};

/// The label holding the SHA-256 (hex) of the session's token: lets berth check that the token
/// it derives is the session's (another user's key derives another), without the token.
const TOKEN_SHA256: &str = "berth.token_sha256";
/// The label naming the backend a session runs on (`swarm`).
const BACKEND: &str = label::BACKEND;
/// Where the token secret is mounted in the Jupyter (or command) container.
const TOKEN_FILE: &str = "/run/secrets/berth-token";

/// The key session tokens are derived from: 32 random bytes in the file `BERTH_SESSION_KEY`
/// names, else `$XDG_DATA_HOME/berth/session.key` (`~/.local/share/berth/session.key`),
/// made (mode 0600) on first use.
///
/// # Errors
/// [`LaunchError::Engine`] when the file can be neither read nor made.
pub fn session_key() -> Result<Vec<u8>, LaunchError> {
    let path = match std::env::var_os("BERTH_SESSION_KEY") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let data = std::env::var_os("XDG_DATA_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| std::path::PathBuf::from(h).join(".local/share"))
                })
                .unwrap_or_else(|| std::path::PathBuf::from("/tmp"));
            data.join("berth/session.key")
        }
    };
    let bad =
        |e: std::io::Error| LaunchError::Engine(format!("session key {}: {e}", path.display()));
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {
            return Err(LaunchError::Engine(format!(
                "session key {} is shorter than 32 bytes",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bad)?;
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| LaunchError::Engine(format!("no random source: {e}")))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Another process may make it at the same moment: the first one wins, both read it.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => f.write_all(&key).map_err(bad)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(e)),
    }
    std::fs::read(&path).map_err(bad)
}

/// The token of session `id`: HMAC-SHA-256 of the id under `key`, the first 16 bytes in hex
/// (32 hex digits, 128 bits, as the Docker backend's random tokens).
fn derive_token(key: &[u8], id: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sessions as services of Docker's swarm mode (see the module's documentation).
pub struct SwarmBackend {
    docker: Docker,
    key: Vec<u8>,
}

impl SwarmBackend {
    /// Connects to the local engine, which must be a manager of an active swarm, with the key
    /// of [`session_key`].
    ///
    /// # Errors
    /// [`LaunchError::EngineUnavailable`]; [`LaunchError::SwarmInactive`] when the engine is
    /// not a swarm manager.
    pub async fn connect() -> Result<Self, LaunchError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| LaunchError::EngineUnavailable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| LaunchError::EngineUnavailable(e.to_string()))?;
        Self::with_client(docker, session_key()?).await
    }

    /// The backend on a connected engine, with the key tokens are derived from.
    ///
    /// # Errors
    /// [`LaunchError::SwarmInactive`] when the engine is not a manager of an active swarm.
    pub async fn with_client(docker: Docker, key: Vec<u8>) -> Result<Self, LaunchError> {
        let info = docker
            .info()
            .await
            .map_err(|e| LaunchError::EngineUnavailable(e.to_string()))?;
        let swarm = info.swarm.unwrap_or_default();
        let active = swarm.local_node_state == Some(bollard::models::LocalNodeState::ACTIVE);
        if !active || swarm.control_available != Some(true) {
            return Err(LaunchError::SwarmInactive);
        }
        Ok(Self { docker, key })
    }

    fn token(&self, id: &str) -> String {
        derive_token(&self.key, id)
    }

    /// Every berth service (of one session, or of all).
    async fn services(&self, session: Option<&str>) -> Result<Vec<Service>, LaunchError> {
        let filter = match session {
            Some(id) => format!("{}={id}", label::SESSION),
            None => label::SESSION.to_string(),
        };
        let filters = HashMap::from([("label", vec![filter.as_str()])]);
        let opts = ListServicesOptionsBuilder::new().filters(&filters).build();
        self.docker.list_services(Some(opts)).await.map_err(engine)
    }

    /// The tasks of berth's services (all of them: tasks carry no service labels).
    async fn tasks(&self) -> Result<Vec<Task>, LaunchError> {
        let opts = ListTasksOptionsBuilder::new().build();
        self.docker.list_tasks(Some(opts)).await.map_err(engine)
    }

    /// Removes every service, the secret and the network of a session; returns how many
    /// objects there were. Waits until the network is gone (its tasks' containers detach
    /// first), at most a minute.
    async fn remove_all(&self, id: &str) -> Result<usize, LaunchError> {
        let mut n = 0;
        for s in self.services(Some(id)).await? {
            if let Some(sid) = s.id {
                match self.docker.delete_service(&sid).await {
                    Ok(()) => n += 1,
                    Err(e) if is_404(&e) => {}
                    Err(e) => return Err(engine(e)),
                }
            }
        }
        let filter = format!("{}={id}", label::SESSION);
        let filters = HashMap::from([("label", vec![filter.as_str()])]);
        let secrets = self
            .docker
            .list_secrets(Some(
                ListSecretsOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(engine)?;
        // A secret in use cannot go: it is removed once the services are.
        let deadline = Instant::now() + Duration::from_secs(60);
        for sid in secrets.into_iter().filter_map(|sec| sec.id) {
            n += remove_when_free(deadline, || self.docker.delete_secret(&sid)).await?;
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(engine)?;
        for nid in networks.into_iter().filter_map(|net| net.id) {
            n += remove_when_free(deadline, || self.docker.remove_network(&nid)).await?;
        }
        // The services' containers on this node go asynchronously: wait for them too, so
        // nothing of the session is left when stop returns.
        let containers = DockerBackend::with_client(self.docker.clone());
        while containers.session_containers(id).await? > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(n)
    }

    /// Creates one service; its tasks' containers carry the same labels.
    async fn create(&self, spec: ServiceSpec) -> Result<(), LaunchError> {
        self.docker
            .create_service(spec, None)
            .await
            .map(|_| ())
            .map_err(engine)
    }

    /// The swarm's nodes and their addresses.
    async fn nodes(&self) -> Result<Nodes, LaunchError> {
        let local = self
            .docker
            .info()
            .await
            .map_err(engine)?
            .swarm
            .and_then(|s| s.node_id)
            .unwrap_or_default();
        let nodes = self
            .docker
            .list_nodes(Some(ListNodesOptionsBuilder::new().build()))
            .await
            .map_err(engine)?;
        let down = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().and_then(|s| s.state) != Some(bollard::models::NodeState::READY)
            })
            .filter_map(|n| n.id.clone())
            .collect();
        let addrs = nodes
            .into_iter()
            .filter_map(|n| Some((n.id?, n.status?.addr?)))
            .collect();
        Ok(Nodes { local, addrs, down })
    }

    /// Failures of tasks in `ignore` (by id) are old news: a node that went down, a retry the
    /// swarm already made.
    async fn failed_task(
        &self,
        id: &str,
        ignore: &std::collections::HashSet<String>,
    ) -> Result<Option<String>, LaunchError> {
        let services = self.services(Some(id)).await?;
        let names: HashMap<String, String> = services
            .iter()
            .filter_map(|s| {
                let name = s.spec.as_ref()?.name.clone()?;
                Some((s.id.clone()?, name))
            })
            .collect();
        for t in self.tasks().await? {
            let Some(name) = t.service_id.as_ref().and_then(|s| names.get(s)) else {
                continue;
            };
            if t.id.as_ref().is_some_and(|i| ignore.contains(i)) {
                continue;
            }
            let status = t.status.clone().unwrap_or_default();
            let bad = matches!(status.state, Some(TaskState::REJECTED | TaskState::FAILED));
            let err = status.err.clone().unwrap_or_default();
            // A pending task says why no node takes it ("no suitable node").
            let stuck = status.state == Some(TaskState::PENDING) && !err.is_empty();
            if bad || stuck {
                let what = if err.is_empty() {
                    status.message.unwrap_or_default()
                } else {
                    err
                };
                // A node that lacks the image pulls it from its name's registry.
                let hint = if what.contains("No such image") || what.contains("pull") {
                    "; the node cannot pull the image: push it to a registry every node reaches \
                     (berth launch --registry HOST:PORT, or registry: in the server's config)"
                } else {
                    ""
                };
                return Ok(Some(format!("{name}: {what}{hint}")));
            }
        }
        Ok(None)
    }

    /// Waits until Jupyter answers at `jupyter` (base URL, token) and the scheduler at
    /// `dashboard` sees `workers`; fails at once when a task failed.
    /// Where session `id`'s Jupyter (base URL, with `base_url`) and scheduler (`http://host:port`)
    /// answer now: the running tasks' published ports on nodes that are up (`local_host` for
    /// this one).
    async fn addresses(
        &self,
        id: &str,
        local_host: &str,
        base_url: &str,
    ) -> Result<(Option<String>, Option<String>), LaunchError> {
        let (services, tasks, nodes) =
            futures_util::try_join!(self.services(Some(id)), self.tasks(), self.nodes())?;
        let address = |suffix: &str, target: i64| {
            let name = format!("berth-{id}-{suffix}");
            let s = services
                .iter()
                .find(|s| s.spec.as_ref().and_then(|sp| sp.name.as_deref()) == Some(&name))?;
            let (node, port) = task_port(&tasks, s.id.as_deref()?, target, &nodes)?;
            Some(format!("http://{}:{port}", nodes.host(&node, local_host)?))
        };
        Ok((
            address("session", 8888).map(|a| format!("{a}{base_url}")),
            address("scheduler", 8787),
        ))
    }

    /// Waits until Jupyter answers (with `jupyter`: its base URL and token) and the scheduler
    /// (with `cluster`) sees `workers`; fails at once when a task failed (but those in
    /// `ignore`). Where they answer is read again every second: a task the swarm placed on
    /// another node (its node went down) answers there.
    #[allow(clippy::too_many_arguments)]
    async fn wait_ready(
        &self,
        id: &str,
        jupyter: Option<(&str, &str)>,
        cluster: bool,
        local_host: &str,
        workers: u32,
        timeout: Duration,
        ignore: &std::collections::HashSet<String>,
    ) -> Result<(), LaunchError> {
        let client = probe::client();
        let started = Instant::now();
        let mut jupyter_ok = jupyter.is_none();
        let mut seen = 0;
        let mut checked: Option<Instant> = None;
        let (mut server, mut dashboard) = (None, None);
        loop {
            if checked.is_none_or(|c| c.elapsed() >= Duration::from_secs(1)) {
                checked = Some(Instant::now());
                if let Some(reason) = self.failed_task(id, ignore).await? {
                    return Err(LaunchError::NotReady {
                        session: id.into(),
                        seconds: started.elapsed().as_secs(),
                        reason,
                    });
                }
                let base_url = jupyter.map_or("/", |(b, _)| b);
                (server, dashboard) = self.addresses(id, local_host, base_url).await?;
            }
            if !jupyter_ok {
                if let (Some(base), Some((_, token))) = (&server, jupyter) {
                    jupyter_ok = probe::jupyter_status(&client, base, token).await.is_ok();
                }
            }
            let mut scheduler_ok = !cluster;
            if let (true, Some(d)) = (cluster, &dashboard) {
                let answer = probe::dask_workers(&client, d).await;
                scheduler_ok = answer.is_ok();
                seen = answer.unwrap_or(0);
            }
            if jupyter_ok && scheduler_ok && seen == workers {
                return Ok(());
            }
            if started.elapsed() > timeout {
                let reason = if !jupyter_ok {
                    "Jupyter did not answer".to_string()
                } else if !scheduler_ok {
                    "the scheduler did not answer".to_string()
                } else {
                    format!("the scheduler sees {seen} of {workers} workers")
                };
                return Err(LaunchError::NotReady {
                    session: id.into(),
                    seconds: timeout.as_secs(),
                    reason,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn start_inner(&self, spec: &SessionSpec, id: &str) -> Result<Session, LaunchError> {
        let network = format!("berth-{id}");
        let checked = shared::check(spec)?;
        let (base_url, volumes) = (&checked.base_url, &checked.volumes);
        let (user, repo_dir) = DockerBackend::with_client(self.docker.clone())
            .image_runtime(&spec.image, &spec.repo_dir)
            .await?;
        let token = self.token(id);
        let mut common = shared::common_labels(spec, id, &checked, &user, &repo_dir);
        common.insert(BACKEND.into(), "swarm".into());
        common.insert(TOKEN_SHA256.into(), sha256_hex(&token));
        tracing::debug!(session = id, "creating overlay network");
        self.docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("overlay".into()),
                attachable: Some(true),
                labels: Some(common.clone()),
                ..Default::default()
            })
            .await
            .map_err(engine)?;
        let secret = format!("berth-{id}-token");
        let secret_id = self
            .docker
            .create_secret(SecretSpec {
                name: Some(secret.clone()),
                labels: Some(HashMap::from([(
                    label::SESSION.to_string(),
                    id.to_string(),
                )])),
                data: Some(base64::engine::general_purpose::STANDARD.encode(&token)),
                ..Default::default()
            })
            .await
            .map_err(engine)?
            .id;
        let w = ServiceParts {
            id,
            image: &spec.image,
            common: &common,
            limits: &spec.limits,
            user: &user,
            network: &network,
            mounts: volumes,
        };
        let cluster = spec.has_cluster();
        if cluster {
            self.start_scheduler(&w, &repo_dir, &spec.env).await?;
            for n in 1..=spec.initial_workers() {
                self.start_worker(&w, n, &repo_dir, &spec.env).await?;
            }
        }
        let mut env = vec![format!("JUPYTER_TOKEN_FILE={TOKEN_FILE}")];
        if cluster {
            env.extend(shared::cluster_link_env(base_url));
        }
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let (uid, gid) = user
            .split_once(':')
            .unwrap_or((user.as_str(), user.as_str()));
        let secrets = vec![TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some("berth-token".into()),
                uid: Some(uid.to_string()),
                gid: Some(gid.to_string()),
                mode: Some(0o400),
            }),
            secret_id: Some(secret_id),
            secret_name: Some(secret),
        }];
        let name = format!("berth-{id}-session");
        match &spec.command {
            Some(cmd) => {
                // A command starts working at once: the cluster must be there before it.
                if cluster {
                    self.wait_ready(
                        id,
                        None,
                        true,
                        &spec.bind_ip,
                        spec.initial_workers(),
                        spec.ready_timeout,
                        &Default::default(),
                    )
                    .await?;
                }
                let s = w.service(&name, ROLE_SESSION, None, cmd.clone(), env, false, secrets);
                self.create(s).await?;
                Ok(self.get(id).await?)
            }
            None => {
                let cmd = shared::jupyter_cmd(base_url);
                let mut s = w.service(&name, ROLE_SESSION, None, cmd, env, true, secrets);
                s.endpoint_spec = Some(endpoint(Some(8888)));
                self.create(s).await?;
                self.wait_ready(
                    id,
                    Some((base_url, &token)),
                    cluster,
                    &spec.bind_ip,
                    spec.initial_workers(),
                    spec.ready_timeout,
                    &Default::default(),
                )
                .await?;
                self.get(id).await
            }
        }
    }

    async fn start_scheduler(
        &self,
        w: &ServiceParts<'_>,
        repo_dir: &str,
        user_env: &[(String, String)],
    ) -> Result<(), LaunchError> {
        let mut env = cluster_env(repo_dir, user_env);
        if let Some(path) = env.iter_mut().find(|e| e.starts_with("PYTHONPATH=")) {
            path.push_str(":/srv/dashboard");
        }
        env.push(format!(
            "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES={}",
            probe::SCHEDULER_ROUTES
        ));
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
        let name = format!("berth-{}-scheduler", w.id);
        let mut s = ServiceParts {
            // The scheduler reads no data: the mounts are the notebook's and the workers'.
            mounts: &[],
            ..*w
        }
        .service(&name, ROLE_SCHEDULER, None, cmd, env, true, Vec::new());
        s.endpoint_spec = Some(endpoint(Some(8787)));
        if let Some(nets) = s.task_template.as_mut().and_then(|t| t.networks.as_mut()) {
            nets[0].aliases = Some(vec!["scheduler".into()]);
        }
        self.create(s).await
    }

    async fn start_worker(
        &self,
        w: &ServiceParts<'_>,
        n: u32,
        repo_dir: &str,
        user_env: &[(String, String)],
    ) -> Result<(), LaunchError> {
        let name = format!("berth-{}-worker-{n}", w.id);
        let cmd = DockerBackend::worker_cmd("tcp://scheduler:8786", &name, w.limits);
        let env = cluster_env(repo_dir, user_env);
        let s = w.service(&name, ROLE_WORKER, Some(n), cmd, env, true, Vec::new());
        self.create(s).await
    }

    /// The session `id` from its services, their tasks, and its network's labels.
    fn session_from(
        &self,
        id: &str,
        services: &[&Service],
        tasks: &[Task],
        nodes: &Nodes,
        network_labels: Option<&HashMap<String, String>>,
    ) -> Option<Session> {
        let labels_of = |s: &Service| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.labels.clone())
                .unwrap_or_default()
        };
        let role_of = |s: &Service| labels_of(s).get(label::ROLE).cloned().unwrap_or_default();
        // A task on a node that is down runs no more, whatever its last state said.
        let running = |s: &Service| {
            tasks.iter().any(|t| {
                t.service_id == s.id
                    && t.status.as_ref().and_then(|st| st.state) == Some(TaskState::RUNNING)
                    && !t.node_id.as_ref().is_some_and(|n| nodes.down.contains(n))
            })
        };
        // No task yet, or only tasks before running (new … starting) and none ended: the
        // service's first task is on its way.
        let starting = |s: &Service| {
            let states: Vec<Option<TaskState>> = tasks
                .iter()
                .filter(|t| t.service_id == s.id)
                .map(|t| t.status.as_ref().and_then(|st| st.state))
                .collect();
            states.iter().all(|st| {
                matches!(
                    st,
                    Some(
                        TaskState::NEW
                            | TaskState::ALLOCATED
                            | TaskState::PENDING
                            | TaskState::ASSIGNED
                            | TaskState::ACCEPTED
                            | TaskState::PREPARING
                            | TaskState::READY
                            | TaskState::STARTING
                    )
                )
            })
        };
        let session = services.iter().find(|s| role_of(s) == ROLE_SESSION);
        let scheduler = services.iter().find(|s| role_of(s) == ROLE_SCHEDULER);
        let workers: Vec<&&Service> = services
            .iter()
            .filter(|s| role_of(s) == ROLE_WORKER)
            .collect();
        let labels = session
            .or(scheduler)
            .or(services.first())
            .map(|s| labels_of(s))
            .or_else(|| network_labels.cloned())?;
        let token = self.token(id);
        let token_ok = labels.get(TOKEN_SHA256) == Some(&sha256_hex(&token));
        let bind_ip = labels
            .get(label::BIND_IP)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into());
        let base_url = labels.get(label::BASE_URL).cloned().unwrap_or("/".into());
        let open = labels.get(label::OPEN).cloned().unwrap_or("lab".into());
        // Published ports are the running tasks', on whichever node they run.
        let address_of = |s: &Service, target: i64| {
            let (node, port) = task_port(tasks, s.id.as_deref()?, target, nodes)?;
            Some(format!("http://{}:{port}", nodes.host(&node, &bind_ip)?))
        };
        let jupyter_port = session.and_then(|s| address_of(s, 8888));
        let server_url = jupyter_port
            .as_ref()
            .map(|a| format!("{a}{base_url}"))
            .unwrap_or_default();
        let url = match (jupyter_port, token_ok) {
            (Some(_), true) => format!("{server_url}{open}?token={token}"),
            (Some(_), false) => format!("{server_url}{open}"),
            (None, _) => String::new(),
        };
        let dashboard_url = scheduler
            .and_then(|s| address_of(s, 8787))
            .map(|a| format!("{a}/status"));
        let workers_running = workers.iter().filter(|s| running(s)).count() as u32;
        let deadline: i64 = labels
            .get(label::DEADLINE)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let command = session.is_some_and(|s| {
            let cmd = s
                .spec
                .as_ref()
                .and_then(|sp| sp.task_template.as_ref())
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.command.as_ref());
            cmd.and_then(|c| c.first()).map(String::as_str) != Some("jupyter")
        });
        let status = match session {
            None if chrono::Utc::now().timestamp() < deadline => SessionStatus::Starting,
            None => SessionStatus::Failed,
            Some(s) if running(s) => {
                let scheduler_down = scheduler.is_some_and(|s| !running(s));
                if scheduler_down || workers_running < workers.len() as u32 {
                    SessionStatus::Degraded
                } else {
                    SessionStatus::Running
                }
            }
            // A first task on its way (pulling, starting): the launch is under way.
            Some(s) if starting(s) && chrono::Utc::now().timestamp() < deadline => {
                SessionStatus::Starting
            }
            // A command that ended, or a Jupyter the swarm is placing again.
            Some(_) if command => SessionStatus::Stopped,
            Some(_) => SessionStatus::Degraded,
        };
        Some(Session {
            id: id.to_string(),
            url,
            server_url,
            token: if token_ok { token } else { String::new() },
            image: labels.get(label::IMAGE).cloned().unwrap_or_default(),
            repo_url: labels.get("berth.repo_url").cloned().unwrap_or_default(),
            workers: workers_running,
            workers_wanted: workers.len() as u32,
            max_workers: labels
                .get(label::MAX_WORKERS)
                .and_then(|m| m.parse().ok())
                .unwrap_or(16),
            dashboard_url,
            created: labels
                .get(label::CREATED)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            status,
            data: labels
                .get(label::DATA)
                .map(|d| d.split(',').map(String::from).collect())
                .unwrap_or_default(),
            pool: labels.get(label::POOL).cloned(),
            adapt: crate::adapt_of(&labels),
        })
    }

    /// The exit status of the session's command once its task has ended.
    async fn command_exit(docker: Docker, service: String) -> Result<i64, String> {
        loop {
            let filters = HashMap::from([("service", vec![service.as_str()])]);
            let opts = ListTasksOptionsBuilder::new().filters(&filters).build();
            let tasks = docker
                .list_tasks(Some(opts))
                .await
                .map_err(|e| engine(e).to_string())?;
            for t in tasks {
                let st = t.status.unwrap_or_default();
                match st.state {
                    Some(TaskState::COMPLETE) => return Ok(0),
                    Some(TaskState::FAILED) => {
                        return Ok(st.container_status.and_then(|c| c.exit_code).unwrap_or(1))
                    }
                    Some(TaskState::REJECTED) => {
                        return Err(format!(
                            "{service}: {}",
                            st.err.unwrap_or_else(|| "rejected".into())
                        ))
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Removes an object the engine refuses to remove while something still uses it (a secret
/// while services mount it, a network while containers are attached): retries every 250 ms
/// until `deadline`. Returns 1 when it was removed, 0 when it was gone already.
async fn remove_when_free<F, Fut>(deadline: Instant, remove: F) -> Result<usize, LaunchError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), bollard::errors::Error>>,
{
    loop {
        match remove().await {
            Ok(()) => return Ok(1),
            Err(e) if is_404(&e) => return Ok(0),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "still in use");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(engine(e)),
        }
    }
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The endpoint of every session service: names resolve to the tasks' own addresses (DNS
/// round robin), and `target` (if any) is published in host mode on a port the node's engine
/// chooses, on the node the task runs on. Neither needs the kernel's IPVS, which the swarm's
/// virtual IPs and routing mesh do (and which some kernels, this project's CI machines among
/// them, lack).
fn endpoint(target: Option<i64>) -> EndpointSpec {
    EndpointSpec {
        mode: Some(EndpointSpecModeEnum::DNSRR),
        ports: target.map(|t| {
            vec![EndpointPortConfig {
                target_port: Some(t),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            }]
        }),
    }
}

/// Where the swarm's nodes are: the local node's id, every node's address, and the nodes the
/// managers see down (their tasks' states are stale until the swarm reschedules them).
struct Nodes {
    local: String,
    addrs: HashMap<String, String>,
    down: std::collections::HashSet<String>,
}

impl Nodes {
    /// The host to reach a port published by a task on `node`: `local_host` on this node,
    /// else the node's address.
    fn host(&self, node: &str, local_host: &str) -> Option<String> {
        if node == self.local {
            Some(local_host.to_string())
        } else {
            self.addrs.get(node).cloned()
        }
    }
}

/// The running task of `service_id` (on a node that is not down: a task there still reads
/// running until the node comes back) and the host port it publishes `target` on:
/// `(node, port)`.
fn task_port(
    tasks: &[Task],
    service_id: &str,
    target: i64,
    nodes: &Nodes,
) -> Option<(String, u16)> {
    tasks
        .iter()
        .filter(|t| t.service_id.as_deref() == Some(service_id))
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter(|t| !t.node_id.as_ref().is_some_and(|n| nodes.down.contains(n)))
        .find_map(|t| {
            let port = t
                .status
                .as_ref()?
                .port_status
                .as_ref()?
                .ports
                .as_ref()?
                .iter()
                .find(|p| p.target_port == Some(target))?
                .published_port?;
            Some((t.node_id.clone()?, u16::try_from(port).ok()?))
        })
}

/// What every service of a session shares.
#[derive(Clone, Copy)]
struct ServiceParts<'a> {
    id: &'a str,
    image: &'a str,
    common: &'a HashMap<String, String>,
    limits: &'a Limits,
    user: &'a str,
    network: &'a str,
    mounts: &'a [crate::Volume],
}

impl ServiceParts<'_> {
    /// A one-replica service running `cmd`; restarted on failure (`restart`) or never.
    #[allow(clippy::too_many_arguments)]
    fn service(
        &self,
        name: &str,
        role: &str,
        worker: Option<u32>,
        cmd: Vec<String>,
        env: Vec<String>,
        restart: bool,
        secrets: Vec<TaskSpecContainerSpecSecrets>,
    ) -> ServiceSpec {
        let mut labels = self.common.clone();
        labels.insert(label::ROLE.into(), role.into());
        if let Some(n) = worker {
            labels.insert(label::WORKER.into(), n.to_string());
        }
        let mounts: Vec<Mount> = self
            .mounts
            .iter()
            .map(|v| Mount {
                target: Some(v.target.clone()),
                source: Some(v.source.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(v.read_only),
                ..Default::default()
            })
            .collect();
        ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(self.image.to_string()),
                    labels: Some(labels),
                    command: Some(cmd),
                    env: Some(env),
                    user: Some(self.user.to_string()),
                    mounts: (!mounts.is_empty()).then_some(mounts),
                    secrets: (!secrets.is_empty()).then_some(secrets),
                    init: Some(true),
                    capability_drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: self.limits.millicpus.map(|m| (m * 1_000_000) as i64),
                        memory_bytes: self.limits.memory_bytes.map(|b| b as i64),
                        pids: Some(self.limits.pids as i64),
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(if restart {
                        TaskSpecRestartPolicyConditionEnum::ANY
                    } else {
                        TaskSpecRestartPolicyConditionEnum::NONE
                    }),
                    delay: Some(1_000_000_000),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.network.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            endpoint_spec: Some(endpoint(None)),
            ..Default::default()
        }
    }
}

#[async_trait::async_trait]
impl Backend for SwarmBackend {
    async fn start(&self, spec: &SessionSpec) -> Result<Session, LaunchError> {
        shared::check(spec)?;
        let id = shared::session_id(spec)?;
        let span = info_span!("launch", session = %id, image = %spec.image, backend = "swarm");
        async {
            match self.start_inner(spec, &id).await {
                Ok(s) => {
                    info!(session = %id, "session ready");
                    Ok(s)
                }
                Err(e) => {
                    // Nothing half-started is left: services, secret and network go.
                    if let Err(c) = self.remove_all(&id).await {
                        tracing::warn!(session = %id, error = %c, "cleanup after a failed launch");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn list(&self) -> Result<Vec<Session>, LaunchError> {
        let services = self.services(None).await?;
        let tasks = self.tasks().await?;
        let filters = HashMap::from([("label", vec![BACKEND])]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(engine)?;
        let mut ids: Vec<String> = services
            .iter()
            .filter_map(|s| {
                s.spec
                    .as_ref()?
                    .labels
                    .as_ref()?
                    .get(label::SESSION)
                    .cloned()
            })
            .chain(
                networks
                    .iter()
                    .filter_map(|n| n.labels.as_ref()?.get(label::SESSION).cloned()),
            )
            .collect();
        ids.sort();
        ids.dedup();
        let nodes = self.nodes().await?;
        let mut out = Vec::new();
        for id in ids {
            let of: Vec<&Service> = services
                .iter()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|sp| sp.labels.as_ref())
                        .and_then(|l| l.get(label::SESSION))
                        == Some(&id)
                })
                .collect();
            let net = networks
                .iter()
                .find(|n| n.labels.as_ref().and_then(|l| l.get(label::SESSION)) == Some(&id))
                .and_then(|n| n.labels.as_ref());
            if let Some(s) = self.session_from(&id, &of, &tasks, &nodes, net) {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.created);
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Session, LaunchError> {
        if !crate::valid_session_id(id) {
            return Err(LaunchError::UnknownSession(id.into()));
        }
        self.list()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| LaunchError::UnknownSession(id.into()))
    }

    async fn scale(&self, id: &str, workers: u32) -> Result<Session, LaunchError> {
        // A scheduler or Jupyter whose node went down is being placed on another node by the
        // swarm: wait for it (at most a minute and a half) rather than fail.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut session = self.get(id).await?;
        while session.dashboard_url.is_none()
            && session.status == SessionStatus::Degraded
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            session = self.get(id).await?;
        }
        let session = session;
        let dashboard = shared::scalable(&session, workers)?;
        let span = info_span!("scale", session = %id, from = session.workers, to = workers, backend = "swarm");
        async {
            // Failures before this scale (a node that went down) do not fail it.
            let old_failures: std::collections::HashSet<String> = self
                .tasks()
                .await?
                .into_iter()
                .filter(|t| {
                    matches!(
                        t.status.as_ref().and_then(|s| s.state),
                        Some(TaskState::REJECTED | TaskState::FAILED)
                    )
                })
                .filter_map(|t| t.id)
                .collect();
            let services = self.services(Some(id)).await?;
            let labels_of = |s: &Service| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.labels.clone())
                    .unwrap_or_default()
            };
            let common = services
                .iter()
                .map(labels_of)
                .find(|l| l.get(label::ROLE).map(String::as_str) == Some(ROLE_SESSION))
                .unwrap_or_default();
            let mut running: Vec<(u32, String)> = services
                .iter()
                .filter_map(|s| {
                    let l = labels_of(s);
                    (l.get(label::ROLE).map(String::as_str) == Some(ROLE_WORKER)).then(|| {
                        (
                            l.get(label::WORKER)
                                .and_then(|i| i.parse().ok())
                                .unwrap_or(0),
                            s.spec
                                .as_ref()
                                .and_then(|sp| sp.name.clone())
                                .unwrap_or_default(),
                        )
                    })
                })
                .collect();
            running.sort();
            let current = running.len() as u32;
            let max_index = running.iter().map(|(i, _)| *i).max().unwrap_or(0);
            if workers > current {
                let image = session.image.clone();
                if self.docker.inspect_image(&image).await.is_err() {
                    return Err(LaunchError::ImageMissing(image));
                }
                let settings = shared::Settings::from_labels(&common);
                let mut base = common.clone();
                base.remove(label::ROLE);
                let network = format!("berth-{id}");
                let w = ServiceParts {
                    id,
                    image: &image,
                    common: &base,
                    limits: &settings.limits,
                    user: &settings.user,
                    network: &network,
                    mounts: &settings.volumes,
                };
                for n in max_index + 1..=max_index + (workers - current) {
                    self.start_worker(&w, n, &settings.repo_dir, &settings.env)
                        .await?;
                }
            } else if workers < current {
                let retire: Vec<String> = running[workers as usize..]
                    .iter()
                    .map(|(_, n)| n.clone())
                    .collect();
                // The scheduler moves what they hold to the others first.
                probe::retire_workers(&probe::client(), &dashboard, &retire)
                    .await
                    .map_err(LaunchError::Scheduler)?;
                for name in retire {
                    match self.docker.delete_service(&name).await {
                        Ok(()) => {}
                        Err(e) if is_404(&e) => {}
                        Err(e) => return Err(engine(e)),
                    }
                }
            }
            let bind_ip = common
                .get(label::BIND_IP)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into());
            self.wait_ready(
                id,
                None,
                true,
                &bind_ip,
                workers,
                Duration::from_secs(120),
                &old_failures,
            )
            .await
        }
        .instrument(span)
        .await?;
        self.get(id).await
    }

    async fn stop(&self, id: &str) -> Result<(), LaunchError> {
        let span = info_span!("stop", session = %id, backend = "swarm");
        let removed = self.remove_all(id).instrument(span).await?;
        if removed == 0 {
            return Err(LaunchError::UnknownSession(id.into()));
        }
        Ok(())
    }

    async fn logs(&self, id: &str) -> Result<String, LaunchError> {
        let mut names: Vec<String> = self
            .services(Some(id))
            .await?
            .into_iter()
            .filter_map(|s| s.spec?.name)
            .collect();
        if names.is_empty() {
            return Err(LaunchError::UnknownSession(id.into()));
        }
        names.sort();
        let mut out = String::new();
        for name in names {
            let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
            let mut s = self.docker.service_logs(&name, Some(opts));
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
        let exit = Self::command_exit(self.docker.clone(), name.clone())
            .boxed()
            .shared();
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        // A service's log stream stays open after its task ends: it ends here a moment after
        // the task did (the last lines are still in flight then).
        let ended = exit
            .clone()
            .then(|_| tokio::time::sleep(Duration::from_secs(1)));
        let output = self
            .docker
            .service_logs(&name, Some(opts))
            .map(|item| match item.map_err(engine)? {
                bollard::container::LogOutput::StdErr { message } => {
                    Ok(Output::Stderr(message.to_vec()))
                }
                other => Ok(Output::Stdout(other.into_bytes().to_vec())),
            })
            .take_until(ended)
            .boxed();
        let exit = async move { exit.await.map_err(LaunchError::Engine) }.boxed();
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
    fn tokens_are_derived_from_the_key_and_the_session() {
        let a = derive_token(&[1; 32], "demo-0011aabb");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, derive_token(&[1; 32], "demo-0011aabb"));
        assert_ne!(a, derive_token(&[2; 32], "demo-0011aabb"));
        assert_ne!(a, derive_token(&[1; 32], "demo-0011aabc"));
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/session.key");
        std::env::set_var("BERTH_SESSION_KEY", &path);
        let k1 = session_key().unwrap();
        let k2 = session_key().unwrap();
        std::env::remove_var("BERTH_SESSION_KEY");
        assert_eq!(k1.len(), 32);
        assert_eq!(k1, k2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
