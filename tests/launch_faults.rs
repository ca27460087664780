//! End to end, as an operator and an attacker would try it: interrupts of `run` and `launch` at
//! several moments, a launch killed outright, a scheduler that died, and what a session may
//! reach on the host. Real Docker, real fixture repositories. A test binary of its own, and its
//! tests one at a time, because they count every container and network on the engine.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bare clone of the conda fixture at a path of its own, so every container and network of
/// this test's sessions carries a `berth.repo_url` label no other test uses.
fn private_conda() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.git");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            fixture("conda").to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
    let source = path.canonicalize().unwrap().to_string_lossy().into_owned();
    (dir, source)
}

/// Containers and networks whose `berth.repo_url` label is `source`.
fn leftovers_of(source: &str) -> (usize, usize) {
    let filter = format!("label=berth.repo_url={source}");
    let c = docker(&["ps", "-aq", "--filter", &filter]).lines().count();
    let n = docker(&["network", "ls", "-q", "--filter", &filter])
        .lines()
        .count();
    (c, n)
}

fn all_networks() -> usize {
    docker(&["network", "ls", "-q"]).lines().count()
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}

/// When to interrupt a launch.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// While it builds (fetch and image checks), before anything of the session exists.
    Building,
    /// As soon as the session's network exists.
    NetworkCreated,
    /// As soon as its first container exists.
    FirstContainer,
    /// Once every container exists (Jupyter, scheduler, workers): waiting for readiness.
    AllContainers,
}

/// Waits until `moment` has come for the launch of `source` (panics after 60 s).
fn wait_for(moment: Moment, source: &str, containers: usize) {
    let started = Instant::now();
    loop {
        let (c, n) = leftovers_of(source);
        let reached = match moment {
            Moment::Building => true,
            Moment::NetworkCreated => n > 0,
            Moment::FirstContainer => c > 0,
            Moment::AllContainers => c >= containers,
        };
        if reached {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{moment:?} never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_berth(args: &[&str]) -> Child {
    berth()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) -> (Option<i32>, String) {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), err)
}

#[test]
fn interrupted_run_and_launch_remove_everything_they_started() {
    let _s = serial();
    let (_dir, source) = private_conda();
    // Build once, so every try below spends its time starting the session.
    build(Path::new(&source), &[]);
    let before = (all_containers(), all_networks());
    let moments = [
        Moment::Building,
        Moment::NetworkCreated,
        Moment::FirstContainer,
        Moment::AllContainers,
    ];
    for (i, moment) in moments.into_iter().enumerate() {
        for command in ["run", "launch"] {
            // SIGINT (Ctrl-C) and SIGTERM (what a batch system or `kill` sends), alternately.
            let (sig, code) = if i % 2 == 0 {
                ("INT", 130)
            } else {
                ("TERM", 143)
            };
            let child = {
                let _g = build_lock();
                let mut args = vec![command, source.as_str(), "--workers", "2"];
                if command == "run" {
                    args.extend(["--", "sleep", "60"]);
                }
                let child = spawn_berth(&args);
                if matches!(moment, Moment::Building) {
                    std::thread::sleep(Duration::from_millis(150));
                }
                // `run` starts the scheduler and 2 workers, then the command: 4 containers.
                wait_for(moment, &source, 4);
                signal(&child, sig);
                child
            };
            let (status, err) = finish(child);
            assert_eq!(
                status,
                Some(code),
                "{command} interrupted ({sig}) {moment:?}:\n{err}"
            );
            assert!(err.contains("interrupted"), "{err}");
            assert_eq!(
                leftovers_of(&source),
                (0, 0),
                "{command} interrupted ({sig}) {moment:?} left containers or networks:\n{err}"
            );
            assert_eq!(
                (all_containers(), all_networks()),
                before,
                "docker ps -a and docker network ls are back to their counts"
            );
        }
    }
}

#[test]
fn a_killed_launch_is_listed_and_stop_all_removes_it() {
    let _s = serial();
    let (_dir, source) = private_conda();
    build(Path::new(&source), &[]);
    let child = {
        let _g = build_lock();
        let child = spawn_berth(&["launch", &source, "--workers", "2"]);
        wait_for(Moment::FirstContainer, &source, 0);
        signal(&child, "KILL");
        child
    };
    finish(child);
    let (containers, networks) = leftovers_of(&source);
    assert!(
        containers + networks > 0,
        "SIGKILL cannot clean up: something is left"
    );
    let listed: Vec<serde_json::Value> = ls()
        .into_iter()
        .filter(|s| s["repo_url"] == source.as_str())
        .collect();
    assert_eq!(listed.len(), 1, "berth ls shows the remains: {listed:?}");
    let status = listed[0]["status"].as_str().unwrap().to_string();
    assert!(
        ["starting", "failed", "running", "degraded"].contains(&status.as_str()),
        "{status}"
    );
    let out = run_berth(&["stop", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leftovers_of(&source), (0, 0));
}

/// The Dask scheduler's count of workers, from its dashboard.
fn dashboard_workers(dashboard_url: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--noproxy", "*", "--max-time", "5"])
        .arg(dashboard_url.replace("/status", "/json/counts.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["workers"].as_u64().unwrap_or(0)
}

#[test]
fn scale_heals_a_session_whose_scheduler_died() {
    let _s = serial();
    let launched = launch(&fixture("conda"), &["--workers", "2"]);
    let _stop = StopOnDrop(launched.session.clone());
    let id = launched.session.clone();
    docker(&["kill", &format!("berth-{id}-scheduler")]);
    let entry = ls_session(&id);
    assert_eq!(entry["status"], "degraded", "{entry}");
    let dash = launched.dashboard_url.clone().unwrap();
    assert_eq!(entry["dashboard_url"], dash.as_str());

    let out = run_berth(&["scale", &id, "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = ls_session(&id);
    assert_eq!(entry["status"], "running", "{entry}");
    assert_eq!(entry["workers"], 2);
    assert_eq!(entry["workers_wanted"], 2, "exited workers are removed");
    // The new scheduler is at the same dashboard address and sees both workers.
    assert_eq!(dashboard_workers(&dash), 2);
    let states = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=berth.session={id}"),
        "--format",
        "{{.State}}",
    ]);
    assert!(
        states.lines().all(|s| s == "running"),
        "every container runs: {states}"
    );
    assert_eq!(states.lines().count(), 4);

    // Jupyter's client (DASK_SCHEDULER_ADDRESS) reaches the new scheduler.
    let out = docker(&[
        "exec",
        &format!("berth-{id}-session"),
        "python",
        "-c",
        "from distributed import Client; c = Client(timeout=30); \
         print('N', len(c.scheduler_info()['workers'])); \
         print('SUM', c.submit(sum, [1, 2, 3]).result())",
    ]);
    assert!(out.contains("N 2") && out.contains("SUM 6"), "{out}");
}

/// Tries a TCP connection from inside a session container; prints `OPEN` or `CLOSED <reason>`.
fn connect_from(container: &str, host: &str, port: u16) -> String {
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('{host}', {port}), timeout=3).close(); print('OPEN')\nexcept Exception as e:\n    print('CLOSED', type(e).__name__)"
    );
    docker(&["exec", container, "python", "-c", &code])
        .trim()
        .to_string()
}

/// A network namespace standing for "the internet": a host of its own, reached through a veth
/// pair and routed by this machine, with an HTTP server on port 8080. Removed when dropped.
struct Outside {
    name: String,
    server: Child,
}

impl Outside {
    fn new() -> Self {
        let name = format!("berth-out-{}", std::process::id());
        let veth = format!("bo{}", std::process::id() % 100000);
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .args(["-ec", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&format!(
            "ip netns add {name}
             ip link add {veth}a type veth peer name {veth}b
             ip link set {veth}b netns {name}
             ip addr add 10.251.0.1/30 dev {veth}a
             ip link set {veth}a up
             ip netns exec {name} ip addr add 10.251.0.2/30 dev {veth}b
             ip netns exec {name} ip link set {veth}b up
             ip netns exec {name} ip link set lo up
             ip netns exec {name} ip route add default via 10.251.0.1
             sysctl -qw net.ipv4.ip_forward=1
             iptables -w -C FORWARD -o {veth}a -j ACCEPT 2>/dev/null || iptables -w -I FORWARD -o {veth}a -j ACCEPT
             iptables -w -C FORWARD -i {veth}a -j ACCEPT 2>/dev/null || iptables -w -I FORWARD -i {veth}a -j ACCEPT"
        ));
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "python3",
                "-m",
                "http.server",
                "8080",
            ])
            .args(["--bind", "10.251.0.2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Listening before anyone connects (a loaded machine starts Python slowly).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let addr: std::net::SocketAddr = "10.251.0.2:8080".parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the outside host's server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { name, server }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let veth = format!("bo{}", std::process::id() % 100000);
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "iptables -w -D FORWARD -o {veth}a -j ACCEPT; iptables -w -D FORWARD -i {veth}a -j ACCEPT; ip link del {veth}a; ip netns del {}",
                    self.name
                ),
            ])
            .output();
    }
}

#[test]
fn sessions_cannot_reach_the_hosts_services_but_reach_other_hosts() {
    let _s = serial();
    // A service of the host, listening on every address, as a registry or berth's server.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let outside = Outside::new();

    let isolated = launch(&fixture("conda"), &["--workers", "0"]);
    let _stop = StopOnDrop(isolated.session.clone());
    let open = launch(
        &fixture("conda"),
        &["--workers", "0", "--allow-host-access"],
    );
    let _stop_open = StopOnDrop(open.session.clone());

    for (launched, expect) in [(&isolated, "CLOSED"), (&open, "OPEN")] {
        let id = &launched.session;
        let container = format!("berth-{id}-session");
        let gateway = docker(&[
            "network",
            "inspect",
            &format!("berth-{id}"),
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ]);
        let gateway = gateway.trim();
        assert!(!gateway.is_empty());
        let via_gateway = connect_from(&container, gateway, port);
        assert!(
            via_gateway.starts_with(expect),
            "session {id} to the host at {gateway}:{port}: {via_gateway}"
        );
        // Any other address of the host is the host too.
        let out = std::process::Command::new("hostname")
            .arg("-I")
            .output()
            .unwrap();
        let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
        let host_addr = addrs
            .split_whitespace()
            .find(|a| *a != gateway && a.contains('.'))
            .expect("the host has another IPv4 address");
        let via_other = connect_from(&container, host_addr, port);
        assert!(via_other.starts_with(expect), "{via_other}");
        // Other hosts stay reachable (what pip needs), and so does the session's own network.
        let out = connect_from(&container, "10.251.0.2", 8080);
        assert_eq!(out, "OPEN", "session {id} to another host");
        // The default memory limit (2 GiB) holds on every container.
        let mem = docker(&["inspect", "--format", "{{.HostConfig.Memory}}", &container]);
        assert_eq!(mem.trim(), (2u64 << 30).to_string());
    }
    // Jupyter still answers the host (replies to connections the host opens pass).
    let (base, token) = common::kernel::server_of(&isolated.url, "lab");
    let out = std::process::Command::new("curl")
        .args(["-sf", "--noproxy", "*", "--max-time", "5"])
        .arg(format!("{base}api/status?token={token}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    drop(outside);
}

#[test]
fn ls_into_a_closed_pipe_is_not_an_error() {
    let _s = serial();
    let mut child = berth()
        .args(["ls"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away at once, as `head` does after its lines.
    drop(child.stdout.take());
    let (status, err) = finish(child);
    assert_eq!(status, Some(0), "{err}");
    assert!(!err.contains("error"), "{err}");
}

/// Untagged top-level images (`docker images -f dangling=true`).
fn dangling() -> Vec<String> {
    let mut v: Vec<String> = docker(&["images", "-q", "--no-trunc", "-f", "dangling=true"])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn an_interrupt_during_a_build_step_removes_its_container_and_images() {
    let _s = serial();
    // The environment's shared layers first, so the build below reaches `postBuild` quickly.
    build(
        repo_with(&[("requirements.txt", "# no packages\n")]).path(),
        &[],
    );
    let nonce = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let repo = repo_with(&[
        ("requirements.txt", "# no packages\n"),
        (
            "postBuild",
            &format!("#!/bin/sh\n# {nonce}\necho postbuild-is-running\nsleep 600\n"),
        ),
    ]);
    let before = (all_containers(), all_networks(), dangling());
    let _g = build_lock();
    let mut child = spawn_berth(&[
        "run",
        repo.path().to_str().unwrap(),
        "--workers",
        "1",
        "--",
        "true",
    ]);
    // Read the build's log until the step runs, then interrupt.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while !seen.contains("postbuild-is-running") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "berth ended before postBuild ran:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(started.elapsed() < Duration::from_secs(300), "{seen}");
    }
    signal(&child, "INT");
    stderr.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert_eq!(
        (all_containers(), all_networks(), dangling()),
        before,
        "no build container, network or untagged step image is left:\n{seen}"
    );
}
