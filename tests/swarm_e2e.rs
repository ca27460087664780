//! End to end on the Swarm backend (`--backend swarm`, `backend: swarm`): a single-node swarm
//! on loopback (`docker swarm init`, left again at the end when this run made it), the real
//! fixture repositories, the session's own JupyterLab and Dask.

mod common;

use std::sync::Mutex;

use common::kernel::{execute, server_of};
use common::web::{events, phases, WebServer};
use common::*;

/// How many tests use the swarm now, and whether this run made it (then the last one leaves).
static SWARM: Mutex<(usize, bool)> = Mutex::new((0, false));

fn swarm_state() -> String {
    docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .trim()
        .to_string()
}

/// A swarm on this engine while held: made (on loopback) by the first holder when the engine
/// is in none; left by the last holder when this run made it.
struct Swarm;

impl Swarm {
    fn join() -> Self {
        let mut s = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == 0 && swarm_state() != "active" {
            // Swarm mode off: one clear line, and nothing started.
            let out = run_berth(&["--backend", "swarm", "ls"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(err.contains("not a swarm manager"), "{err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            s.1 = true;
        }
        s.0 += 1;
        Swarm
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let mut s = SWARM.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        if s.0 == 0 && s.1 {
            let _ = std::process::Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
            s.1 = false;
        }
    }
}

/// `berth --backend swarm ARGS`.
fn swarm_berth(args: &[&str]) -> std::process::Output {
    let mut all = vec!["--backend", "swarm"];
    all.extend_from_slice(args);
    run_berth(&all)
}

/// Stops a Swarm session when dropped.
struct StopSwarmSession(String);

impl Drop for StopSwarmSession {
    fn drop(&mut self) {
        let _ = swarm_berth(&["stop", &self.0]);
    }
}

/// Services, networks, secrets and containers of a session left on the engine.
fn swarm_leftovers(session: &str) -> Vec<String> {
    let filter = format!("label=berth.session={session}");
    let mut left = Vec::new();
    for what in [
        vec!["service", "ls", "-q", "--filter", &filter],
        vec!["network", "ls", "-q", "--filter", &filter],
        vec!["secret", "ls", "-q", "--filter", &filter],
        vec!["ps", "-aq", "--filter", &filter],
    ] {
        for id in docker(&what).lines() {
            left.push(format!("{} {id}", what[0]));
        }
    }
    left
}

const CLUSTER_CHECK: &str = r#"
from distributed import Client
import dask.array as da
c = Client()
n = len(c.scheduler_info()["workers"])
total = int(da.ones((2000, 2000), chunks=(250, 250)).sum().compute())
assert total == 4_000_000, total
print("WORKERS", n, "TOTAL", total)
"#;

/// Results held only in workers' memory: scattered (no task graph could compute them again)
/// and published, so they outlive this kernel's client.
const HOLD: &str = r#"
from distributed import Client
import numpy as np
c = Client()
futs = c.scatter([np.full(200_000, i, dtype="int64") for i in range(16)])
c.publish_dataset(held=futs)
holders = {w for ws in c.who_has(futs).values() for w in ws}
print("HOLDERS", len(holders))
"#;

const CHECK_HELD: &str = r#"
from distributed import Client
c = Client()
futs = c.get_dataset("held")
sums = [int(a.sum()) for a in c.gather(futs)]
assert sums == [200_000 * i for i in range(16)], sums
print("HELD OK", len(c.scheduler_info()["workers"]))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_swarm_session_launches_computes_scales_and_stops() {
    let _swarm = Swarm::join();
    let conda = fixture("conda");
    let launched = tokio::task::spawn_blocking(move || {
        launch(
            &conda,
            &["--backend", "swarm", "--workers", "2", "--memory", "3G"],
        )
    })
    .await
    .unwrap();
    let session = launched.session.clone();
    let _stop = StopSwarmSession(session.clone());
    assert_eq!(launched.workers, 2);
    assert_eq!(launched.token.len(), 32);

    // Four services, each one replica with the session's limits, non-root, every capability
    // dropped; the token is in none of their specs (nor their containers), only a secret.
    let filter = format!("label=berth.session={session}");
    let services = docker(&["service", "ls", "-q", "--filter", &filter]);
    assert_eq!(services.lines().count(), 4, "{services}");
    for id in services.lines() {
        let spec = docker(&["service", "inspect", id]);
        assert!(
            !spec.contains(&launched.token),
            "the token is in {id}'s spec"
        );
        let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
        let c = &v[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
        assert_eq!(c["User"], "1000:1000", "{c}");
        assert_eq!(c["CapabilityDrop"], serde_json::json!(["ALL"]), "{c}");
        let limits = &v[0]["Spec"]["TaskTemplate"]["Resources"]["Limits"];
        assert_eq!(limits["MemoryBytes"], 3_221_225_472u64, "{limits}");
        assert_eq!(limits["Pids"], 4096, "{limits}");
        assert_eq!(v[0]["Spec"]["Mode"]["Replicated"]["Replicas"], 1);
    }
    for id in docker(&["ps", "-q", "--filter", &filter]).lines() {
        let c = docker(&["inspect", id]);
        assert!(
            !c.contains(&launched.token),
            "the token is in container {id}"
        );
    }
    assert_eq!(
        docker(&["secret", "ls", "-q", "--filter", &filter])
            .lines()
            .count(),
        1
    );
    // The Docker backend leaves the Swarm backend's sessions alone.
    assert!(!ls().iter().any(|s| s["id"] == session.as_str()));

    let (base, token) = server_of(&launched.url, "lab");
    let anon = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = anon
        .get(format!("{base}api/kernels"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 403);
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(
        cell.output.contains("WORKERS 2 TOTAL 4000000"),
        "{}",
        cell.output
    );

    let scale = |n: &'static str| {
        let s = session.clone();
        tokio::task::spawn_blocking(move || swarm_berth(&["scale", &s, n]))
    };
    let out = scale("4").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout_of(&out).contains("now has 4 workers"));
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert!(cell.output.contains("WORKERS 4 "), "{cell:?}");
    let cell = execute(&base, &token, HOLD).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    let holders: usize = cell
        .output
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        holders >= 3,
        "results spread over the workers: {}",
        cell.output
    );

    // Down to one worker: the scheduler moves what the three others hold before they go.
    let out = scale("1").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cell = execute(&base, &token, CHECK_HELD).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("HELD OK 1"), "{}", cell.output);
    let entry = tokio::task::spawn_blocking({
        let s = session.clone();
        move || {
            let out = swarm_berth(&["ls", "--json"]);
            let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            all.into_iter().find(|e| e["id"] == s.as_str()).unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(entry["status"], "running", "{entry}");
    assert_eq!(entry["workers"], 1, "{entry}");
    assert_eq!(
        entry["url"],
        launched.url.as_str(),
        "a new process finds the same URL"
    );

    let out = scale("99").await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the maximum is 16"));
    let logs = swarm_berth(&["logs", &session]);
    let logs = stdout_of(&logs);
    assert!(logs.contains("-scheduler | "), "{logs}");
    assert!(logs.contains("-worker-1 | "), "{logs}");

    let out = swarm_berth(&["stop", &session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(swarm_leftovers(&session), Vec::<String>::new());
    let out = swarm_berth(&["stop", &session]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session"));
}

#[test]
fn swarm_run_adapts_passes_the_exit_status_and_leaves_nothing() {
    let _swarm = Swarm::join();
    let conda = fixture("conda");
    let out = {
        let _g = build_lock();
        berth()
            .args(["--backend", "swarm", "run", conda.to_str().unwrap()])
            .args(["--adapt", "0:2", "--", "python", "-c"])
            .arg(format!(
                "{CLUSTER_CHECK}\nimport sys; print('failing on purpose'); sys.exit(3)"
            ))
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    // No worker at first (--adapt 0:2): the computation brings them, run's own loop adapting.
    assert!(stdout.contains("WORKERS 0 TOTAL 4000000"), "{stdout}");
    assert!(stdout.contains("failing on purpose"), "{stdout}");
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("berth: session ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("run names its session:\n{stderr}"));
    assert_eq!(swarm_leftovers(id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_serve_launches_on_the_swarm_and_proxies_with_the_token() {
    let _swarm = Swarm::join();
    let web = WebServer::start("backend: swarm\nadapt: \"0:2\"\n");
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    // The image first, under the build lock the other tests take (the server then reuses it).
    tokio::task::spawn_blocking(|| build(&fixture("conda"), &[]))
        .await
        .unwrap();
    let ev = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/main", web.url),
    )
    .await;
    let ready = ev.last().unwrap().clone();
    assert_eq!(ready["phase"], "ready", "{:?}", phases(&ev));
    let url = ready["url"].as_str().unwrap().to_string();
    let token = ready["token"].as_str().unwrap().to_string();
    let session = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let _stop = StopSwarmSession(session.clone());
    let services = docker(&[
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("label=berth.session={session}"),
    ]);
    assert!(services.lines().count() >= 2, "{services}");
    let ok = c
        .get(format!("{url}api/status?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let anon = c.get(format!("{url}api/status")).send().await.unwrap();
    assert_eq!(anon.status(), 403);
    let lab = c
        .get(format!("{url}lab?token={token}"))
        .send()
        .await
        .unwrap();
    assert!(lab.text().await.unwrap().contains("JupyterLab"));

    // `adapt: 0:2`: the session starts with no worker, and the server's own loop brings them
    // when the notebook computes (without it, the computation would wait forever).
    let out = swarm_berth(&["ls", "--json"]);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let entry = all.iter().find(|e| e["id"] == session.as_str()).unwrap();
    assert_eq!(
        entry["adapt"],
        serde_json::json!({"min": 0, "max": 2}),
        "{entry}"
    );
    assert_eq!(entry["workers"], 0, "{entry}");
    let base = url.clone();
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("TOTAL 4000000"), "{}", cell.output);
    assert!(
        web.log_text().contains("adapt: scaling"),
        "{}",
        web.log_text()
    );

    // The culler works through the trait: an active session is kept at an hour, and stopped
    // (nothing left) when any idleness is too much.
    let out = swarm_berth(&["cull", "--max-idle", "1h", &session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_of(&out).trim(), "");
    let out = swarm_berth(&["cull", "--max-idle", "0s", &session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_of(&out).trim(), session);
    assert_eq!(swarm_leftovers(&session), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_workers_on_the_swarm_come_for_work_and_go_when_idle() {
    let _swarm = Swarm::join();
    adaptive_cycle(&["--backend", "swarm"]).await;
}
