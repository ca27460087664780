//! Shared builds: concurrent requests for the same repository and ref share one build, and
//! each receives its whole log, also when it joins late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use berth_builder::{BuildEvent, BuildRequest, Engine, Phase};
use serde_json::{json, Value};
use tokio::sync::watch;

/// One build's events so far, and a counter that wakes subscribers.
pub struct SharedBuild {
    events: Mutex<Vec<Value>>,
    len: watch::Sender<usize>,
}

impl SharedBuild {
    fn new() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            len: watch::channel(0).0,
        }
    }

    fn push(&self, event: Value) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(event);
        self.len.send_replace(events.len());
    }

    /// Events from index `from` on, waiting for new ones when there are none yet. Returns an
    /// empty list only when the build's last event has been read.
    pub async fn next(&self, from: usize) -> Vec<Value> {
        let mut rx = self.len.subscribe();
        loop {
            {
                let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
                if events.len() > from {
                    return events[from..].to_vec();
                }
                if events.last().is_some_and(is_terminal) {
                    return Vec::new();
                }
            }
            if rx.changed().await.is_err() {
                return Vec::new();
            }
        }
    }
}

/// Whether an event ends a build (`built` or `failed`).
pub fn is_terminal(event: &Value) -> bool {
    matches!(event["phase"].as_str(), Some("built" | "failed"))
}

/// The builds under way, by repository URL and ref.
#[derive(Default)]
pub struct BuildHub {
    running: Mutex<HashMap<String, Arc<SharedBuild>>>,
}

impl BuildHub {
    /// Joins the build of `req` under way, or starts it. The second value tells whether this
    /// call started it.
    pub fn join(self: &Arc<Self>, engine: Engine, req: BuildRequest) -> (Arc<SharedBuild>, bool) {
        let key = format!(
            "{}#{}",
            req.source,
            req.reference.as_deref().unwrap_or("HEAD")
        );
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = running.get(&key) {
            return (b.clone(), false);
        }
        let build = Arc::new(SharedBuild::new());
        running.insert(key.clone(), build.clone());
        drop(running);
        let hub = self.clone();
        let shared = build.clone();
        // The build runs on its own: clients that disconnect do not stop it for the others.
        tokio::spawn(async move {
            let started = Instant::now();
            metrics::gauge!("berth_builds_in_progress").increment(1.0);
            let report = |ev: BuildEvent| {
                if let Some(v) = event_json(ev) {
                    shared.push(v);
                }
            };
            let result = berth_builder::build(&engine, &req, &report).await;
            let status = if result.is_ok() { "success" } else { "failure" };
            metrics::gauge!("berth_builds_in_progress").decrement(1.0);
            metrics::counter!("berth_builds_total", "status" => status).increment(1);
            metrics::histogram!("berth_build_duration_seconds", "status" => status)
                .record(started.elapsed().as_secs_f64());
            // Out of the table first, so a request after the last event starts afresh.
            hub.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            match result {
                Ok(out) => shared.push(json!({
                    "phase": "built",
                    "message": if out.cached_env { "Found built image, launching...\n" } else { "Built image, launching...\n" },
                    "imageName": out.image,
                    "commit": out.commit,
                    "env_hash": out.env_hash,
                    "cached_env": out.cached_env,
                })),
                Err(e) => shared.push(json!({
                    "phase": "failed",
                    "message": format!("{e}\n"),
                    "status_code": 500,
                })),
            }
        });
        (build, true)
    }

    /// Builds under way.
    pub fn in_progress(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// A builder event as a BinderHub event (`phase` and `message`).
fn event_json(ev: BuildEvent) -> Option<Value> {
    Some(match ev {
        BuildEvent::Phase(Phase::Fetching) => {
            json!({"phase": "fetching", "message": "Fetching the repository...\n"})
        }
        BuildEvent::Phase(Phase::BuildingEnv) => {
            json!({"phase": "building", "message": "Building the environment image...\n"})
        }
        BuildEvent::Phase(Phase::BuildingRepo) => {
            json!({"phase": "building", "message": "Adding the repository...\n"})
        }
        BuildEvent::Phase(_) => return None,
        BuildEvent::Log(line) => json!({"phase": "building", "message": format!("{line}\n")}),
        BuildEvent::Warning(w) => {
            json!({"phase": "building", "message": format!("warning: {w}\n")})
        }
        BuildEvent::Fetch(_) => return None,
    })
}
