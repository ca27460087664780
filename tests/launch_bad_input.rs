//! End to end: bad input to the session commands gets a clear one-line error and leaves no
//! container or network behind. A test binary of its own, so no other session starts meanwhile.

mod common;

use common::*;

#[test]
fn bad_launch_input_leaves_nothing() {
    let conda = fixture("conda");
    let before = all_containers();
    let out = run_berth(&[
        "launch",
        conda.to_str().unwrap(),
        "--urlpath",
        "../../etc/passwd",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid path"));

    // A port that is taken.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let out = {
        let _g = build_lock();
        run_berth(&[
            "launch",
            conda.to_str().unwrap(),
            "--workers",
            "1",
            "--port",
            &port,
        ])
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert_eq!(
        all_containers(),
        before,
        "a failed launch leaves no container"
    );
    let nets = docker(&["network", "ls", "-q", "--filter", "label=berth.session"]);
    let sessions: Vec<_> = ls()
        .into_iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for net in nets.lines() {
        let name = docker(&[
            "network",
            "inspect",
            "--format",
            "{{index .Labels \"berth.session\"}}",
            net,
        ]);
        assert!(
            sessions.contains(&name.trim().to_string()),
            "orphaned network {net}"
        );
    }

    for args in [
        vec!["scale", "no-such-session", "2"],
        vec!["stop", "no-such-session"],
        vec!["logs", "no-such-session"],
        vec!["cull", "no-such-session"],
    ] {
        let out = run_berth(&args);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no session \"no-such-session\""));
    }

    let out = berth()
        .args(["ls"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Docker engine"));
}
