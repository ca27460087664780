//! What every backend does the same way: checking a spec, the labels a session carries, the
//! Jupyter command and its cluster variables, reading a session's settings back from its
//! labels, and the checks before a scale.

use std::collections::HashMap;

use crate::docker::{label, DEFAULT_USER};
use crate::{probe, LaunchError, Limits, Session, SessionSpec, SessionStatus, Volume};

/// A spec checked for starting: what to open, the base URL, and every mount (`-v` and the
/// data sets, which are read-only mounts at `/data/NAME`).
pub(crate) struct Checked {
    pub open: String,
    pub base_url: String,
    pub volumes: Vec<Volume>,
}

/// Checks what a spec asks before anything starts: the worker counts against the maximum,
/// the path to open, the variables, the mounts (a target mounted twice is refused).
pub(crate) fn check(spec: &SessionSpec) -> Result<Checked, LaunchError> {
    if let Some(a) = spec.adapt {
        if a.max > spec.max_workers {
            return Err(LaunchError::InvalidAdapt {
                spec: a.label(),
                reason: format!("MAX is above the session's maximum ({})", spec.max_workers),
            });
        }
    }
    if spec.initial_workers() > spec.max_workers {
        return Err(LaunchError::TooManyWorkers {
            session: "(new)".into(),
            wanted: spec.initial_workers(),
            max: spec.max_workers,
        });
    }
    let open = match &spec.open {
        Some(o) => o.url_path()?,
        None => "lab".to_string(),
    };
    for (k, v) in &spec.env {
        crate::check_env(k, v)?;
    }
    for v in &spec.volumes {
        v.check()?;
    }
    let mut volumes = spec.volumes.clone();
    for d in &spec.data {
        let v = d.volume()?;
        if volumes.iter().any(|o| o.target == v.target) {
            return Err(LaunchError::InvalidVolume {
                spec: v.bind(),
                reason: format!("{} is mounted twice", v.target),
            });
        }
        volumes.push(v);
    }
    Ok(Checked {
        open,
        base_url: spec.base_url.clone().unwrap_or_else(|| "/".into()),
        volumes,
    })
}

/// The session id to use: the spec's (checked) or a new one from its name hint.
pub(crate) fn session_id(spec: &SessionSpec) -> Result<String, LaunchError> {
    match &spec.id {
        Some(id) if crate::valid_session_id(id) => Ok(id.clone()),
        Some(id) => Err(LaunchError::InvalidSessionId(id.clone())),
        None => Ok(crate::new_session_id(&spec.name_hint)),
    }
}

/// The labels every object of session `id` carries (its only state): the spec's own labels,
/// then berth's (`berth.session`, the image, creation time, limits, base URL, what to open,
/// `$REPO_DIR`, the user, `-e`, the mounts, the data sets, the adaptive range, and the
/// deadline after which a session without its Jupyter container has failed).
pub(crate) fn common_labels(
    spec: &SessionSpec,
    id: &str,
    checked: &Checked,
    user: &str,
    repo_dir: &str,
) -> HashMap<String, String> {
    let now = chrono::Utc::now().timestamp();
    let mut common: HashMap<String, String> = spec.labels.iter().cloned().collect();
    common.insert(label::SESSION.into(), id.into());
    common.insert(label::IMAGE.into(), spec.image.clone());
    common.insert(label::CREATED.into(), now.to_string());
    common.insert(label::MAX_WORKERS.into(), spec.max_workers.to_string());
    common.insert(
        label::LIMITS.into(),
        serde_json::to_string(&spec.limits).unwrap_or_default(),
    );
    common.insert(label::BIND_IP.into(), spec.bind_ip.clone());
    common.insert(label::BASE_URL.into(), checked.base_url.clone());
    common.insert(label::OPEN.into(), checked.open.clone());
    common.insert(label::REPO_DIR.into(), repo_dir.into());
    common.insert(label::USER.into(), user.into());
    if !spec.env.is_empty() {
        common.insert(
            label::ENV.into(),
            serde_json::to_string(&spec.env).unwrap_or_default(),
        );
    }
    if !checked.volumes.is_empty() {
        common.insert(
            label::VOLUMES.into(),
            serde_json::to_string(&checked.volumes).unwrap_or_default(),
        );
    }
    if !spec.data.is_empty() {
        common.insert(label::DATA.into(), crate::data_label(&spec.data));
    }
    if let Some(a) = spec.adapt {
        common.insert(crate::ADAPT_LABEL.into(), a.label());
    }
    common.insert(
        label::DEADLINE.into(),
        (now + spec.ready_timeout.as_secs() as i64 + 30).to_string(),
    );
    common
}

/// JupyterLab on port 8888 of every address, under `base_url`.
pub(crate) fn jupyter_cmd(base_url: &str) -> Vec<String> {
    vec![
        "jupyter".to_string(),
        "lab".into(),
        "--ip=0.0.0.0".into(),
        "--port=8888".into(),
        "--no-browser".into(),
        format!("--ServerApp.base_url={base_url}"),
    ]
}

/// The variables that attach the Jupyter (or command) container to its session's cluster:
/// `distributed.Client()` finds the scheduler (network alias `scheduler`), and the dashboard
/// link goes through Jupyter's own proxy (jupyter-server-proxy, host `scheduler` allowed by
/// berth's server configuration), so it opens wherever Jupyter does, with the session's token.
pub(crate) fn cluster_link_env(base_url: &str) -> [String; 3] {
    [
        "DASK_SCHEDULER_ADDRESS=tcp://scheduler:8786".into(),
        format!("DASK_DISTRIBUTED__DASHBOARD__LINK={base_url}proxy/scheduler:8787/status"),
        format!("BERTH_DASHBOARD_URL={base_url}proxy/scheduler:8787"),
    ]
}

/// A session's settings, read back from its labels (for workers `scale` adds).
pub(crate) struct Settings {
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    pub volumes: Vec<Volume>,
    pub user: String,
    pub repo_dir: String,
}

impl Settings {
    /// From labels; sessions started before a label existed get what berth did then.
    pub(crate) fn from_labels(labels: &HashMap<String, String>) -> Self {
        fn json<T: serde::de::DeserializeOwned + Default>(
            labels: &HashMap<String, String>,
            key: &str,
        ) -> T {
            labels
                .get(key)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        }
        Self {
            limits: json(labels, label::LIMITS),
            env: json(labels, label::ENV),
            volumes: json(labels, label::VOLUMES),
            user: labels
                .get(label::USER)
                .cloned()
                .unwrap_or_else(|| DEFAULT_USER.into()),
            repo_dir: labels
                .get(label::REPO_DIR)
                .cloned()
                .unwrap_or_else(|| "/home/jovyan".into()),
        }
    }
}

/// Checks that `session` may be scaled to `workers` and returns its scheduler's HTTP address
/// (`http://host:port`, without `/status`).
pub(crate) fn scalable(session: &Session, workers: u32) -> Result<String, LaunchError> {
    let id = &session.id;
    if workers > session.max_workers {
        return Err(LaunchError::TooManyWorkers {
            session: id.clone(),
            wanted: workers,
            max: session.max_workers,
        });
    }
    if matches!(
        session.status,
        SessionStatus::Starting | SessionStatus::Failed | SessionStatus::Stopped
    ) {
        return Err(LaunchError::Scheduler(format!(
            "session {id} is {}: only a running session can be scaled (berth stop {id} removes it)",
            session.status.as_str()
        )));
    }
    session
        .dashboard_url
        .as_deref()
        .map(|d| d.trim_end_matches("/status").to_string())
        .ok_or_else(|| {
            LaunchError::Scheduler(format!(
                "session {id} has no Dask cluster (it was launched with --workers 0)"
            ))
        })
}

/// When the session's Jupyter server last saw activity; `None` for a stopped session, a
/// command session, or one whose token berth does not hold.
pub(crate) async fn last_activity(session: &Session) -> Option<chrono::DateTime<chrono::Utc>> {
    if session.status == SessionStatus::Stopped
        || session.server_url.is_empty()
        || session.token.is_empty()
    {
        return None;
    }
    probe::jupyter_status(&probe::client(), &session.server_url, &session.token)
        .await
        .ok()
        .and_then(|st| st.last_activity)
}
