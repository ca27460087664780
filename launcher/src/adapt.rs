//! Adaptive workers: the scheduler's own estimate of the workers it needs drives each
//! adaptive session's worker count between its minimum and maximum ([`crate::Adapt`]).
//!
//! The rule is distributed's `Adaptive` (its defaults: a decision every second, and a scale
//! down only after three decisions in a row asked for fewer): the target is the scheduler's
//! `adaptive_target` (queued and processing tasks against their expected durations, and the
//! memory results hold), read over its HTTP API, clamped to the range; workers are added at
//! once, and retired through the scheduler ([`crate::Backend::scale`]), so results they hold
//! move to the others first. One loop serves every adaptive session of a backend (`berth
//! serve`) or one (`berth adapt`, which `berth launch --adapt` starts in the background); it
//! keeps no state a restart would lose but the down-count.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{probe, Adapt, Backend, LaunchError, Session, SessionStatus};

/// How often the loop decides, as distributed's `Adaptive` (`interval`, 1 s).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How often the loop looks for adaptive sessions while there are none.
const IDLE_INTERVAL: Duration = Duration::from_secs(5);

/// Decisions in a row that must ask for fewer workers before any are retired, as
/// distributed's `Adaptive` (`wait_count`, 3).
pub const WAIT_COUNT: u32 = 3;

/// The worker count to move to, if any, given the count now, the scheduler's target and how
/// many decisions in a row asked for fewer (`below`, updated).
pub fn decide(current: u32, target: u32, adapt: Adapt, below: &mut u32) -> Option<u32> {
    let want = target.clamp(adapt.min, adapt.max);
    if want > current {
        *below = 0;
        Some(want)
    } else if want < current {
        *below += 1;
        if *below >= WAIT_COUNT {
            *below = 0;
            Some(want)
        } else {
            None
        }
    } else {
        *below = 0;
        None
    }
}

/// Runs the loop over the adaptive sessions of `backend` (only session `only`, when given)
/// until that session is gone; forever without `only`. Each scale runs in its own task, one
/// at a time per session; failures are logged and retried at the next decision.
///
/// # Errors
/// [`LaunchError::UnknownSession`] when `only` names no session at the start, and
/// [`LaunchError::InvalidAdapt`] when it is not adaptive.
pub async fn run(backend: Arc<dyn Backend>, only: Option<String>) -> Result<(), LaunchError> {
    if let Some(id) = &only {
        let s = backend.get(id).await?;
        if s.adapt.is_none() {
            return Err(LaunchError::InvalidAdapt {
                spec: id.clone(),
                reason: "the session was not launched with --adapt".into(),
            });
        }
    }
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut below: HashMap<String, u32> = HashMap::new();
    let client = probe::client();
    loop {
        let sessions: Vec<Session> = match backend.list().await {
            Ok(all) => all
                .into_iter()
                .filter(|s| only.as_ref().is_none_or(|o| *o == s.id))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "adapt: cannot list sessions");
                tokio::time::sleep(INTERVAL).await;
                continue;
            }
        };
        if only.is_some() && sessions.is_empty() {
            return Ok(());
        }
        below.retain(|id, _| sessions.iter().any(|s| &s.id == id));
        // With no adaptive session, looking once every few seconds is enough.
        let pause = if sessions.iter().any(|s| s.adapt.is_some()) {
            INTERVAL
        } else {
            IDLE_INTERVAL
        };
        for s in sessions {
            let Some(adapt) = s.adapt else { continue };
            if only.is_some() && matches!(s.status, SessionStatus::Stopped | SessionStatus::Failed)
            {
                return Ok(());
            }
            if !matches!(s.status, SessionStatus::Running | SessionStatus::Degraded) {
                continue;
            }
            if busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&s.id)
            {
                continue;
            }
            let Some(dashboard) = s
                .dashboard_url
                .as_deref()
                .map(|d| d.trim_end_matches("/status").to_string())
            else {
                continue;
            };
            let target = match probe::adaptive_target(&client, &dashboard).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(session = %s.id, error = %e, "adapt: no target");
                    continue;
                }
            };
            let count = below.entry(s.id.clone()).or_insert(0);
            let Some(n) = decide(s.workers_wanted, target, adapt, count) else {
                continue;
            };
            tracing::info!(session = %s.id, from = s.workers_wanted, to = n, target, "adapt: scaling");
            busy.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.id.clone());
            let (backend, busy, id) = (backend.clone(), busy.clone(), s.id.clone());
            tokio::spawn(async move {
                if let Err(e) = backend.scale(&id, n).await {
                    tracing::warn!(session = %id, error = %e, "adapt: cannot scale");
                }
                busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_at_once_down_after_three_decisions_within_the_range() {
        let a = Adapt { min: 0, max: 4 };
        let mut below = 0;
        assert_eq!(decide(0, 3, a, &mut below), Some(3));
        assert_eq!(decide(3, 9, a, &mut below), Some(4), "clamped to MAX");
        assert_eq!(decide(4, 4, a, &mut below), None);
        assert_eq!(decide(4, 0, a, &mut below), None);
        assert_eq!(decide(4, 0, a, &mut below), None);
        assert_eq!(decide(4, 0, a, &mut below), Some(0));
        assert_eq!(below, 0);
        // A target back up in between starts the count again.
        assert_eq!(decide(4, 1, a, &mut below), None);
        assert_eq!(decide(4, 4, a, &mut below), None);
        assert_eq!(decide(4, 1, a, &mut below), None);
        assert_eq!(below, 1);
        let b = Adapt { min: 2, max: 4 };
        let mut below = 0;
        assert_eq!(decide(0, 0, b, &mut below), Some(2), "up to MIN");
        for _ in 0..5 {
            assert_eq!(decide(2, 0, b, &mut below), None, "never below MIN");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(Adapt::parse("0:4", 16).unwrap(), Adapt { min: 0, max: 4 });
        assert_eq!(Adapt::parse("2:2", 16).unwrap().label(), "2:2");
        for bad in ["4", "4:2", "0:0", "a:3", "0:17", "-1:3", ":"] {
            let e = Adapt::parse(bad, 16).unwrap_err().to_string();
            assert!(e.starts_with("invalid --adapt "), "{bad}: {e}");
        }
    }
}
