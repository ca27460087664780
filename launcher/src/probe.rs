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
    let url = format!("{dashboard}/json/counts.json");
    let resp = client
        .get(&url)
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
