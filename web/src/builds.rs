//! Shared builds: concurrent requests for the same repository and ref share one build, and
//! each receives its whole log, also when it joins late. A build whose clients have all left is
//! cancelled after a grace period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_builder::{BuildError, BuildEvent, BuildOutcome, BuildRequest, BuildpackError, Phase};
use tokio::sync::watch;

use crate::events::Event;

/// What builds images: the Docker engine in the server, a fake in tests.
#[async_trait::async_trait]
pub trait Builder: Send + Sync {
    /// Builds `req`, reporting progress through `report`, as [`berth_builder::build`]. Dropping
    /// the future cancels the build.
    async fn build(
        &self,
        req: &BuildRequest,
        report: &(dyn Fn(BuildEvent) + Send + Sync),
    ) -> Result<BuildOutcome, BuildError>;

    /// Whether the engine answers (for `/health`).
    async fn ping(&self) -> bool;
}

/// One build's events so far, and a counter that wakes subscribers.
pub struct SharedBuild {
    events: Mutex<Vec<Event>>,
    len: watch::Sender<usize>,
    /// Clients following the build (see [`Subscription`]).
    clients: AtomicUsize,
    /// The task running the build, to cancel it.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl SharedBuild {
    fn new() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            len: watch::channel(0).0,
            clients: AtomicUsize::new(0),
            task: Mutex::new(None),
        }
    }

    fn push(&self, event: Event) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(event);
        self.len.send_replace(events.len());
    }

    /// Events from index `from` on, waiting for new ones when there are none yet. Returns an
    /// empty list only when the build's last event has been read.
    pub async fn next(&self, from: usize) -> Vec<Event> {
        let mut rx = self.len.subscribe();
        loop {
            {
                let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
                if events.len() > from {
                    return events[from..].to_vec();
                }
                if events.last().is_some_and(Event::ends_build) {
                    return Vec::new();
                }
            }
            if rx.changed().await.is_err() {
                return Vec::new();
            }
        }
    }
}

/// A client following a shared build. While one exists the build runs; when the last one is
/// dropped, the build is cancelled unless another client joins within the grace period.
pub struct Subscription {
    build: Arc<SharedBuild>,
    hub: Arc<BuildHub>,
    key: String,
}

impl Subscription {
    /// As [`SharedBuild::next`].
    pub async fn next(&self, from: usize) -> Vec<Event> {
        self.build.next(from).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.build.clients.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hub, build, key) = (self.hub.clone(), self.build.clone(), self.key.clone());
        rt.spawn(async move {
            tokio::time::sleep(hub.grace).await;
            hub.cancel_if_abandoned(&key, &build);
        });
    }
}

/// Counts a build in `berth_builds_in_progress` (and BinderHub's `binderhub_inprogress_builds`)
/// for as long as it lives (also when cancelled).
struct InProgress;

impl InProgress {
    fn new() -> Self {
        metrics::gauge!("berth_builds_in_progress").increment(1.0);
        metrics::gauge!("binderhub_inprogress_builds").increment(1.0);
        InProgress
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        metrics::gauge!("berth_builds_in_progress").decrement(1.0);
        metrics::gauge!("binderhub_inprogress_builds").decrement(1.0);
    }
}

/// The builds under way, by repository URL and ref.
pub struct BuildHub {
    running: Mutex<HashMap<String, Arc<SharedBuild>>>,
    builder: Arc<dyn Builder>,
    grace: Duration,
}

impl BuildHub {
    /// A hub building with `builder`; builds every client has left are cancelled after `grace`.
    pub fn new(builder: Arc<dyn Builder>, grace: Duration) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            builder,
            grace,
        }
    }

    /// Joins the build of `req` under way, or starts it. The second value tells whether this
    /// call started it.
    pub fn join(self: &Arc<Self>, req: BuildRequest) -> (Subscription, bool) {
        let key = format!(
            "{}#{}",
            req.source,
            req.reference.as_deref().unwrap_or("HEAD")
        );
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = running.get(&key) {
            // Counted under the table's lock, so a cancellation never takes a joined build.
            b.clients.fetch_add(1, Ordering::SeqCst);
            let sub = Subscription {
                build: b.clone(),
                hub: self.clone(),
                key,
            };
            return (sub, false);
        }
        let build = Arc::new(SharedBuild::new());
        build.clients.fetch_add(1, Ordering::SeqCst);
        running.insert(key.clone(), build.clone());
        let hub = self.clone();
        let shared = build.clone();
        let task_key = key.clone();
        // The build runs on its own: a client that disconnects does not stop it for the others.
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let _counted = InProgress::new();
            let report = |ev: BuildEvent| {
                if let Some(e) = event_of(ev) {
                    shared.push(e);
                }
            };
            let result = hub.builder.build(&req, &report).await;
            let status = if result.is_ok() { "success" } else { "failure" };
            metrics::counter!("berth_builds_total", "status" => status).increment(1);
            metrics::histogram!("berth_build_duration_seconds", "status" => status)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("binderhub_build_time_seconds", "status" => status)
                .record(started.elapsed().as_secs_f64());
            // Out of the table first, so a request after the last event starts afresh.
            hub.remove(&task_key, &shared);
            shared.push(match result {
                Ok(out) => Event::Built {
                    message: if out.cached_env {
                        "Found built image, launching...\n".into()
                    } else {
                        "Built image, launching...\n".into()
                    },
                    // With a registry, sessions run the pushed image (nodes pull it), as
                    // BinderHub's image_name names the registry's.
                    image_name: out.pushed.map_or(out.image, |p| p.image),
                    commit: out.commit,
                    env_hash: out.env_hash,
                    cached_env: out.cached_env,
                    data: out.data,
                },
                Err(e) => Event::failed(500, failure_message(&e)),
            });
        });
        *build.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        drop(running);
        let sub = Subscription {
            build,
            hub: self.clone(),
            key,
        };
        (sub, true)
    }

    /// Removes `build` from the table, if it is still the one under `key`.
    fn remove(&self, key: &str, build: &Arc<SharedBuild>) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(key).is_some_and(|b| Arc::ptr_eq(b, build)) {
            running.remove(key);
            true
        } else {
            false
        }
    }

    /// Cancels `build` when it is still running and no client follows it.
    fn cancel_if_abandoned(&self, key: &str, build: &Arc<SharedBuild>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let current = running.get(key).is_some_and(|b| Arc::ptr_eq(b, build));
        if !current || build.clients.load(Ordering::SeqCst) > 0 {
            return;
        }
        running.remove(key);
        drop(running);
        if let Some(task) = build.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Dropping the build's future: the builder removes what the build had started.
            task.abort();
        }
        tracing::info!(build = %berth_builder::redact_url(key), "every client left; build cancelled");
        metrics::counter!("berth_builds_total", "status" => "cancelled").increment(1);
        build.push(Event::failed(
            500,
            "the build was cancelled: every client had left",
        ));
    }

    /// Builds under way.
    pub fn in_progress(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Whether the builder's engine answers.
    pub async fn ping(&self) -> bool {
        self.builder.ping().await
    }
}

/// What a failed build says to the person in the browser: the builder's one-line message,
/// except where that names a command-line flag. A Python this server cannot give reads as what
/// the repository asked for, what this server can give, and that its operator can allow the
/// nearest version (the `python_fallback` setting), since a browser has no `--python-fallback`.
pub fn failure_message(e: &BuildError) -> String {
    match e {
        BuildError::Spec(BuildpackError::PythonUnavailable {
            file,
            requested,
            available,
            managed,
        }) => {
            let versions: Vec<&str> = available
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            let can = match versions.as_slice() {
                [] => "no Python version".to_string(),
                [one] => format!("only Python {one}"),
                [rest @ .., last] => format!("only Python {} or {last}", rest.join(", ")),
            };
            format!(
                "This repository asks for Python {requested} (in {file}), but this server can build \
                 {can}, and it cannot download Python {requested} ({managed}). The operator of \
                 this server can allow building with the nearest version (python_fallback: true \
                 in its configuration), or the repository can ask for a version this server has."
            )
        }
        other => other.to_string(),
    }
}

/// A builder event as a BinderHub event.
fn event_of(ev: BuildEvent) -> Option<Event> {
    Some(match ev {
        BuildEvent::Phase(Phase::Fetching) => Event::Fetching {
            message: "Fetching the repository...\n".into(),
        },
        BuildEvent::Phase(Phase::BuildingEnv) => Event::Building {
            message: "Building the environment image...\n".into(),
        },
        BuildEvent::Phase(Phase::BuildingRepo) => Event::Building {
            message: "Adding the repository...\n".into(),
        },
        BuildEvent::Phase(Phase::Pushing) => Event::Building {
            message: "Pushing the images to the registry...\n".into(),
        },
        BuildEvent::Phase(_) => return None,
        BuildEvent::Log(line) => Event::Building {
            message: format!("{line}\n"),
        },
        BuildEvent::Warning(w) => Event::Building {
            message: format!("warning: {w}\n"),
        },
        BuildEvent::Fetch(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_python_speaks_to_the_browser() {
        let e = BuildError::Spec(BuildpackError::PythonUnavailable {
            file: "runtime.txt".into(),
            requested: "3.10".into(),
            available: "3.11, 3.13".into(),
            managed: "cannot resolve github.com".into(),
        });
        let m = failure_message(&e);
        assert_eq!(
            m,
            "This repository asks for Python 3.10 (in runtime.txt), but this server can build \
             only Python 3.11 or 3.13, and it cannot download Python 3.10 (cannot resolve \
             github.com). The operator of this server can allow building with the nearest \
             version (python_fallback: true in its configuration), or the repository can ask \
             for a version this server has."
        );
        assert!(!m.contains("--python-fallback"));
        // The command line keeps its own message.
        assert!(e.to_string().contains("pass --python-fallback"));
        // Other failures read as the builder says them.
        let other = BuildError::BuildFailed("step 3 failed".into());
        assert_eq!(failure_message(&other), "build failed: step 3 failed");
    }
}
