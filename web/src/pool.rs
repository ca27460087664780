//! The warm pool (`warm_pool` in the configuration): sessions of chosen specs started ahead of
//! demand, so a class that clicks a badge at 9:00 gets sessions that are already up.
//!
//! - **Filling.** One background task per entry builds (or finds) the spec's image through the
//!   same shared builds as launches, then starts sessions one at a time until the entry's
//!   `sessions` are warm. Each is an ordinary session (same image, limits, isolation, cluster)
//!   with its own token, labelled [`berth_launcher::POOL_LABEL`] so `berth ls` shows where it
//!   came from. Filling stops short of `total_quota` and `per_repo_quota`: warm sessions count.
//! - **Taking.** A launch of a pooled repository whose build gives the warm sessions' image
//!   (the same commit) takes one ([`WarmPool::take`]): it leaves the pool at once, so no second
//!   client ever gets it, and the refill task wakes up to replace it.
//! - **Staleness.** When the spec's ref moves to a new image, warm sessions of the old one are
//!   stopped and replaced (checked on every refill round, at least every
//!   [`REFRESH`]).
//! - **Culling.** Warm sessions are never culled (nobody has used them yet); a taken one is
//!   culled like any other, its idle time counted from when it was taken.
//! - **Restarts.** The pool is the server's memory: sessions a previous server process left
//!   warm are not offered again (one of them may have been handed out in its last moments);
//!   they are ordinary sessions for the culler, and the pool starts new ones.
//!
//! Figures: `berth_pool_warm_sessions{spec}` (gauge), `berth_pool_launches_total{spec,result}`
//! (`hit` or `miss`), on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_launcher::Session;
use tokio::sync::Notify;

use crate::events::Event;
use crate::providers::RepoSpec;
use crate::AppState;

/// How often a refill task checks its spec's image and tops up even when nothing was taken.
pub const REFRESH: Duration = Duration::from_secs(60);
/// How long a refill task waits after a failed build or start before trying again.
const RETRY: Duration = Duration::from_secs(30);

/// One configured entry, resolved.
struct Entry {
    /// `<provider>/<spec>` as configured (the metrics' label and the sessions' label value).
    key: String,
    repo: RepoSpec,
    sessions: usize,
}

/// A warm session and the image it runs.
struct Warm {
    session: Session,
    image: String,
}

/// The pool's state: warm sessions per entry, and when taken sessions were taken.
#[derive(Default)]
pub struct WarmPool {
    entries: Vec<Entry>,
    warm: Mutex<HashMap<String, Vec<Warm>>>,
    taken: Mutex<HashMap<String, Instant>>,
    /// Ids of sessions being started for the pool.
    starting: Mutex<std::collections::HashSet<String>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    changed: Notify,
}

impl WarmPool {
    /// The pool of `entries` (`(<provider>/<spec>, resolved repository, sessions)`).
    pub(crate) fn new(entries: Vec<(String, RepoSpec, usize)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .filter(|(_, _, n)| *n > 0)
                .map(|(key, repo, sessions)| Entry {
                    key,
                    repo,
                    sessions,
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Takes a warm session of `repo` running `image` with the data sets `data` (as
    /// [`berth_launcher::data_label`] writes them: the same versions mounted), if there is one:
    /// it leaves the pool (no other client can get it) and the refill task starts another.
    /// Counts a hit or, for a pooled repository with none warm, a miss.
    pub fn take(&self, repo: &RepoSpec, image: &str, data: &str) -> Option<Session> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.repo.repo_url == repo.repo_url)?;
        let session = {
            let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
            let list = warm.entry(entry.key.clone()).or_default();
            let i = list
                .iter()
                .position(|w| w.image == image && w.session.data.join(",") == data);
            i.map(|i| list.remove(i).session)
        };
        self.set_gauge(&entry.key);
        let result = if session.is_some() { "hit" } else { "miss" };
        metrics::counter!("berth_pool_launches_total", "spec" => entry.key.clone(), "result" => result)
            .increment(1);
        if let Some(s) = &session {
            tracing::info!(session = %s.id, spec = %entry.key, "warm session taken");
            self.taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.id.clone(), Instant::now());
        }
        self.changed.notify_waiters();
        session
    }

    /// Whether the session `id` is warm (in the pool, not handed out).
    pub fn is_warm(&self, id: &str) -> bool {
        self.warm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .any(|w| w.session.id == id)
    }

    /// How long ago the session `id` was taken from the pool, if it was within `within`; taking
    /// times older than that are forgotten (they no longer matter to the culler, and a server
    /// that runs for months hands out many sessions).
    pub fn taken_within(&self, id: &str, within: Duration) -> Option<Duration> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.retain(|_, at| at.elapsed() < within);
        taken.get(id).map(Instant::elapsed)
    }

    /// Warm sessions of the entry `key`.
    pub fn warm_count(&self, key: &str) -> usize {
        self.warm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(0, Vec::len)
    }

    /// Ends the refill tasks, then stops every warm session and any the pool was starting (the
    /// server is going away; none of them was handed out).
    pub async fn shut_down(&self, backend: &dyn berth_launcher::Backend) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let mut ids: Vec<String> = {
            let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
            warm.values_mut()
                .flat_map(|l| l.drain(..).map(|w| w.session.id))
                .collect()
        };
        ids.extend(
            self.starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(),
        );
        for id in ids {
            tracing::info!(session = %id, "warm pool: stopping an unused session");
            match backend.stop(&id).await {
                Ok(()) | Err(berth_launcher::LaunchError::UnknownSession(_)) => {}
                Err(e) => tracing::warn!(session = %id, error = %e, "warm pool: cannot stop"),
            }
        }
    }

    fn set_gauge(&self, key: &str) {
        metrics::gauge!("berth_pool_warm_sessions", "spec" => key.to_string())
            .set(self.warm_count(key) as f64);
    }
}

/// Starts one refill task per entry of the state's pool.
pub fn spawn(state: &Arc<AppState>) {
    for i in 0..state.pool.entries.len() {
        let s = state.clone();
        let task = tokio::spawn(async move { refill(s, i).await });
        state
            .pool
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.abort_handle());
    }
}

/// What the spec of `entry` builds to now (a shared build, cached when nothing changed): the
/// image, the commit and the data sets the repository declares.
async fn current_image(
    state: &AppState,
    entry: &Entry,
) -> Result<(String, String, Vec<String>), String> {
    let (build, _) = state.hub.join(state.build_request(&entry.repo));
    let mut seen = 0;
    loop {
        let events = build.next(seen).await;
        if events.is_empty() {
            return Err("the build ended without an image".into());
        }
        seen += events.len();
        for e in events {
            match e {
                Event::Built {
                    image_name,
                    commit,
                    data,
                    ..
                } => return Ok((image_name, commit, data)),
                Event::Failed { message, .. } => return Err(message.trim().to_string()),
                _ => {}
            }
        }
    }
}

/// Keeps the entry `i` topped up: checks its image, stops stale warm sessions, starts missing
/// ones one at a time, then waits for a take or [`REFRESH`].
async fn refill(state: Arc<AppState>, i: usize) {
    let pool = &state.pool;
    let entry = &pool.entries[i];
    pool.set_gauge(&entry.key);
    loop {
        let wake = pool.changed.notified();
        let (image, commit, declared) = match current_image(&state, entry).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(spec = %entry.key, error = %e, "warm pool: cannot build");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // Sessions of an image the spec no longer builds are replaced.
        let stale: Vec<Session> = {
            let mut warm = pool.warm.lock().unwrap_or_else(|e| e.into_inner());
            let list = warm.entry(entry.key.clone()).or_default();
            let (keep, old): (Vec<Warm>, Vec<Warm>) =
                list.drain(..).partition(|w| w.image == image);
            *list = keep;
            old.into_iter().map(|w| w.session).collect()
        };
        for s in stale {
            tracing::info!(session = %s.id, spec = %entry.key, "warm pool: stopping a stale session");
            let _ = state.backend.stop(&s.id).await;
        }
        pool.set_gauge(&entry.key);
        if pool.warm_count(&entry.key) < entry.sessions {
            match start_one(&state, entry, &image, &commit, declared).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(spec = %entry.key, error = %e, "warm pool: cannot start a session");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        tokio::select! {
            () = wake => {}
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// Starts one warm session of `entry`; `Ok(false)` when a quota leaves no room.
async fn start_one(
    state: &AppState,
    entry: &Entry,
    image: &str,
    commit: &str,
    declared: Vec<String>,
) -> Result<bool, String> {
    if crate::check_quota(state, state.backend.as_ref(), &entry.repo)
        .await
        .is_err()
    {
        return Ok(false);
    }
    // The repository's own data sets (`berth-data.txt`) are the only ones a warm session can
    // have: a launch asking for others starts its own.
    let root = state.config.data_root();
    let mounts = tokio::task::spawn_blocking(move || {
        crate::session_data::resolve_data(&root, &[], &declared)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let mut spec = state.session_spec(&entry.repo, image, commit, mounts);
    spec.labels
        .push((berth_launcher::POOL_LABEL.into(), entry.key.clone()));
    let started = Instant::now();
    let id = spec.id.clone().unwrap_or_default();
    let starting = || {
        state
            .pool
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    };
    starting().insert(id.clone());
    let result = state.start_session(&spec).await;
    starting().remove(&id);
    let session = result.map_err(|e| e.to_string())?;
    tracing::info!(
        session = %session.id,
        spec = %entry.key,
        seconds = started.elapsed().as_secs_f64(),
        "warm pool: session ready"
    );
    state
        .pool
        .warm
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(entry.key.clone())
        .or_default()
        .push(Warm {
            session,
            image: image.to_string(),
        });
    state.pool.set_gauge(&entry.key);
    Ok(true)
}
