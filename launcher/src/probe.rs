//! HTTP probes of a session: Jupyter's `/api/status` and the Dask scheduler's JSON counts.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A client for probes: short timeouts, no proxy (sessions are on this host).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// What Jupyter's `GET {base}api/status` reports.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JupyterStatus {
    /// Last activity of the server (kernels, terminals, API requests), in UTC.
    pub last_activity: Option<DateTime<Utc>>,
    /// Running kernels.
    #[serde(default)]
    pub kernels: u64,
    /// Open connections.
    #[serde(default)]
    pub connections: u64,
}

/// Asks Jupyter at `base` (`http://host:port/base_url/`) for its status, with `token`.
///
/// # Errors
/// A one-line reason when it does not answer 200 with the status JSON.
pub async fn jupyter_status(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<JupyterStatus, String> {
    let url = format!("{base}api/status");
    let resp = client
        .get(&url)
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    resp.json().await.map_err(|e| format!("{url}: {e}"))
}

/// The number of workers the scheduler whose HTTP server is at `dashboard`
/// (`http://host:port`) sees, from distributed's `/json/counts.json`.
///
/// # Errors
/// A one-line reason when it does not answer.
pub async fn dask_workers(client: &reqwest::Client, dashboard: &str) -> Result<u32, String> {
    worker_count(client, &format!("{dashboard}/json/counts.json")).await
}

/// The `workers` member of the JSON object `url` answers with.
async fn worker_count(client: &reqwest::Client, url: &str) -> Result<u32, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
    v.get("workers")
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as u32)
        .ok_or_else(|| format!("{url}: no worker count"))
}

/// The scheduler HTTP routes a session's scheduler serves: distributed's defaults plus its
/// JSON API (`distributed.http.scheduler.api`: `/api/v1/get_workers`, `/api/v1/retire_workers`,
/// `/api/v1/adaptive_target`), through which berth scales and adapts a cluster on any backend.
/// The value of `DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES` (a Python list literal, as Dask's
/// configuration reads environment variables).
pub const SCHEDULER_ROUTES: &str = "['distributed.http.scheduler.prometheus', \
'distributed.http.scheduler.info', 'distributed.http.scheduler.json', \
'distributed.http.health', 'distributed.http.proxy', 'distributed.http.statics', \
'distributed.http.scheduler.api']";

/// One worker as the scheduler's `/api/v1/get_workers` lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DaskWorker {
    /// The worker's address (`tcp://ip:port`), how the scheduler names it.
    pub address: String,
    /// The name it was started with (`--name`; berth uses the container's or service's name).
    #[serde(default, deserialize_with = "name_as_string")]
    pub name: String,
}

fn name_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v: serde_json::Value = serde::Deserialize::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The workers the scheduler whose HTTP server is at `dashboard` (`http://host:port`) knows,
/// from its API (`GET /api/v1/get_workers`).
///
/// # Errors
/// A one-line reason when it does not answer with the list (a scheduler without the API route
/// answers 404).
pub async fn dask_worker_list(
    client: &reqwest::Client,
    dashboard: &str,
) -> Result<Vec<DaskWorker>, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        workers: Vec<DaskWorker>,
    }
    let url = format!("{dashboard}/api/v1/get_workers");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let a: Answer = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
    Ok(a.workers)
}

/// Retires the workers named `names` through the scheduler at `dashboard`
/// (`POST /api/v1/retire_workers`): the scheduler first moves the results they hold to the
/// other workers, then lets them go; returns once it has. Names it does not know are skipped.
/// The caller removes their containers afterwards.
///
/// # Errors
/// A one-line reason when the scheduler does not answer or refuses.
pub async fn retire_workers(
    client: &reqwest::Client,
    dashboard: &str,
    names: &[String],
) -> Result<(), String> {
    let workers: Vec<String> = dask_worker_list(client, dashboard)
        .await?
        .into_iter()
        .filter(|w| names.contains(&w.name))
        .map(|w| w.address)
        .collect();
    if workers.is_empty() {
        return Ok(());
    }
    let url = format!("{dashboard}/api/v1/retire_workers");
    // Moving results can take a while on a loaded cluster: longer than a probe's timeout.
    let resp = client
        .post(&url)
        .timeout(Duration::from_secs(120))
        .json(&serde_json::json!({ "workers": workers }))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    Ok(())
}

/// How many workers the scheduler at `dashboard` would like now, from its own estimate
/// (`GET /api/v1/adaptive_target`: distributed's `Scheduler.adaptive_target`, which counts
/// queued and processing tasks against their expected durations, and memory).
///
/// # Errors
/// A one-line reason when it does not answer.
pub async fn adaptive_target(client: &reqwest::Client, dashboard: &str) -> Result<u32, String> {
    worker_count(client, &format!("{dashboard}/api/v1/adaptive_target")).await
}
