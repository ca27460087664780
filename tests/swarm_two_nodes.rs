//! Two swarm nodes on one machine: this engine (the manager) and a second Docker engine in a
//! network namespace of its own (`scripts/second-node`: its own data root, a veth pair),
//! joined as a worker. Images reach it through a loopback registry (`--registry`); without
//! it, the node cannot pull and the launch fails with one line. A session's workers run on
//! both nodes and one computation uses both; stopping the second engine mid-session degrades
//! the session, and `scale` heals it on the first; a node that goes during a launch leaves
//! either a session or nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::kernel::{execute, server_of};
use common::registry::TestRegistry;
use common::*;

fn second_node(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/second-node");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/second-node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The swarm (advertising this host's end of the veth, so the second node reaches it) and
/// the second node; both gone when dropped.
struct TwoNodes;

impl TwoNodes {
    fn start(registry: &str) -> Self {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        assert_eq!(
            state.trim(),
            "inactive",
            "this test makes its own swarm: leave the engine's first (docker swarm leave --force)"
        );
        second_node(&["net"]);
        docker(&["swarm", "init", "--advertise-addr", "10.231.0.1"]);
        let guard = TwoNodes;
        second_node(&["start", registry]);
        second_node(&["join"]);
        guard
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/second-node");
        let _ = Command::new(script).arg("stop").output();
        let _ = Command::new("docker")
            .args(["swarm", "leave", "--force"])
            .output();
    }
}

fn swarm_berth(args: &[&str]) -> std::process::Output {
    let mut all = vec!["--backend", "swarm"];
    all.extend_from_slice(args);
    run_berth(&all)
}

/// The node each running worker task of `session` is on, by service name.
fn worker_nodes(session: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let filter = format!("label=berth.session={session}");
    for name in docker(&[
        "service",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &filter,
    ])
    .lines()
    {
        if !name.contains("-worker-") {
            continue;
        }
        for task in docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            name,
        ])
        .lines()
        {
            let got = docker(&["inspect", "--format", "{{.Status.State}} {{.NodeID}}", task]);
            if let Some(node) = got.trim().strip_prefix("running ") {
                out.insert(name.to_string(), node.to_string());
            }
        }
    }
    out
}

fn ls_entry(session: &str) -> serde_json::Value {
    let out = swarm_berth(&["ls", "--json"]);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .find(|e| e["id"] == session)
        .expect("the session is listed")
}

const WHERE: &str = r#"
from distributed import Client, get_worker
import dask.bag as db
c = Client()
names = db.from_sequence(range(256), npartitions=64).map(lambda x: get_worker().name).distinct().compute()
print("NAMES", ",".join(sorted(names)))
"#;

const CLUSTER_CHECK: &str = r#"
from distributed import Client
import dask.array as da
c = Client()
n = len(c.scheduler_info()["workers"])
total = int(da.ones((2000, 2000), chunks=(250, 250)).sum().compute())
print("WORKERS", n, "TOTAL", total)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn workers_spread_over_two_nodes_and_heal_when_one_goes() {
    // Both block (the registry's readiness check runs a runtime of its own).
    let registry = tokio::task::spawn_blocking(|| TestRegistry::start(false))
        .await
        .unwrap();
    let addr = registry.addr.clone();
    let _nodes = tokio::task::spawn_blocking(move || TwoNodes::start(&addr))
        .await
        .unwrap();
    let conda = fixture("conda");
    // Without the registry, the second node cannot pull the image: one clear line (naming
    // the way out), and nothing of the session is left.
    let out = tokio::task::spawn_blocking({
        let conda = conda.clone();
        move || {
            let _g = build_lock();
            swarm_berth(&["launch", conda.to_str().unwrap(), "--workers", "4"])
        }
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("No such image")
            && last.contains("--registry"),
        "{err}"
    );
    assert_eq!(
        docker(&["service", "ls", "-q", "--filter", "label=berth.session"]).trim(),
        ""
    );
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", "label=berth.session"]).trim(),
        ""
    );
    let addr = registry.addr.clone();
    let launched = tokio::task::spawn_blocking(move || {
        launch(
            &conda,
            &["--backend", "swarm", "--workers", "4", "--registry", &addr],
        )
    })
    .await
    .unwrap();
    let session = launched.session.clone();
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = run_berth(&["--backend", "swarm", "stop", &self.0]);
        }
    }
    let _stop = Stop(session.clone());
    // Every node pulled the registry's image.
    assert!(
        launched.image.starts_with(&format!("{}/", registry.addr)),
        "{}",
        launched.image
    );

    let placed = worker_nodes(&session);
    assert_eq!(placed.len(), 4, "{placed:?}");
    let nodes: BTreeSet<&String> = placed.values().collect();
    assert_eq!(nodes.len(), 2, "workers on both nodes: {placed:?}");

    // One computation runs on workers of both nodes.
    let (base, token) = server_of(&launched.url, "lab");
    let cell = execute(&base, &token, WHERE).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    let names: Vec<String> = cell
        .output
        .trim()
        .strip_prefix("NAMES ")
        .unwrap_or_default()
        .split(',')
        .map(String::from)
        .collect();
    let used: BTreeSet<&String> = names.iter().filter_map(|n| placed.get(n)).collect();
    assert_eq!(
        used.len(),
        2,
        "tasks ran on both nodes: {names:?} {placed:?}"
    );

    // The second engine stops (its containers with it): the session is degraded until the
    // swarm and `scale` put everything on the first node again.
    let first = docker(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    second_node(&["kill"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let e = tokio::task::spawn_blocking({
            let s = session.clone();
            move || ls_entry(&s)
        })
        .await
        .unwrap();
        if e["status"] == "degraded" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never showed degraded: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let out = tokio::task::spawn_blocking({
        let s = session.clone();
        move || swarm_berth(&["scale", &s, "4"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placed = worker_nodes(&session);
    assert_eq!(placed.len(), 4, "{placed:?}");
    assert!(placed.values().all(|n| *n == first), "{placed:?}");
    // Jupyter answers again (on the first node now, perhaps at a new address) and computes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let entry = loop {
        let e = tokio::task::spawn_blocking({
            let s = session.clone();
            move || ls_entry(&s)
        })
        .await
        .unwrap();
        if e["status"] == "running" && e["url"].as_str().is_some_and(|u| u.contains("?token=")) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not running again: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    let (base, token) = server_of(entry["url"].as_str().unwrap(), "lab");
    // Its task runs; Jupyter in it may still be starting (the swarm placed it again).
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let answer = client
            .get(format!("{base}api/status"))
            .header("Authorization", format!("token {token}"))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Jupyter did not answer again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(
        cell.output.contains("WORKERS 4 TOTAL 4000000"),
        "{}",
        cell.output
    );
    let out = swarm_berth(&["stop", &session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The second node comes back (its engine restarts, still a member of the swarm) and goes
    // again in the middle of a launch: the launch completes on the first node, or fails with
    // one line and leaves nothing.
    let addr = registry.addr.clone();
    tokio::task::spawn_blocking(move || second_node(&["start", &addr]))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while docker(&[
        "node",
        "ls",
        "--filter",
        "role=worker",
        "--format",
        "{{.Status}}",
    ])
    .trim()
        != "Ready"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let addr = registry.addr.clone();
    let conda = fixture("conda");
    let launching = tokio::task::spawn_blocking(move || {
        swarm_berth(&[
            "launch",
            conda.to_str().unwrap(),
            "--workers",
            "4",
            "--registry",
            &addr,
            "--json",
        ])
    });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(|| second_node(&["kill"]))
        .await
        .unwrap();
    let out = launching.await.unwrap();
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = v["session"].as_str().unwrap().to_string();
        let out = swarm_berth(&["stop", &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{err}");
    }
    assert_eq!(
        docker(&["service", "ls", "-q", "--filter", "label=berth.session"]).trim(),
        "",
        "nothing of the launch is left"
    );
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", "label=berth.session"]).trim(),
        ""
    );
}
