//! End to end: `berth serve` speaking BinderHub's API, with providers mapped to a loopback
//! `git daemon` that serves the real fixture repositories, and the real Docker engine.

mod common;

use common::kernel::execute;
use common::web::{events, phases, WebServer};
use common::*;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The HTTP status of a GET.
async fn status(c: &reqwest::Client, url: String) -> reqwest::StatusCode {
    c.get(url).send().await.unwrap().status()
}

/// POSTs `body` to `url` over a raw connection, announcing `announced` bytes (by default the
/// body's length); returns the response's status line. Raw, so a refused upload is read as
/// the server's answer rather than as a broken pipe while sending.
async fn post_status_line(url: &str, body: &[u8], announced: Option<u64>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let length = announced.unwrap_or(body.len() as u64);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn session_of(ready: &serde_json::Value) -> String {
    let url = ready["url"].as_str().unwrap();
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_through_the_api_and_the_proxy() {
    let web = WebServer::start("");
    let c = client();

    // gh, mapped to the git daemon by config.
    let ev = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/main", web.url),
    )
    .await;
    let ph = phases(&ev);
    assert_eq!(ph.first().map(String::as_str), Some("waiting"));
    for p in ["fetching", "built", "launching", "ready"] {
        assert!(ph.contains(&p.to_string()), "{p} missing from {ph:?}");
    }
    let ready = ev.last().unwrap().clone();
    assert_eq!(ready["phase"], "ready");
    let session = session_of(&ready);
    let _stop = StopOnDrop(session.clone());
    for key in [
        "url",
        "token",
        "image",
        "repo_url",
        "binder_ref_url",
        "binder_launch_host",
        "binder_request",
        "binder_persistent_request",
    ] {
        assert!(
            ready[key].as_str().is_some_and(|v| !v.is_empty()),
            "ready lacks {key}: {ready}"
        );
    }
    assert_eq!(ready["binder_request"], "v2/gh/binder-examples/conda/main");
    assert_eq!(
        ready["repo_url"],
        format!("{}/binder-examples/conda", web.git_url)
    );
    let url = ready["url"].as_str().unwrap().to_string();
    let token = ready["token"].as_str().unwrap().to_string();
    assert_eq!(url, format!("{}/user/{session}/", web.url));

    // The session answers through the proxy with its token, and not without.
    let ok = c
        .get(format!("{url}api/status?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().get("set-cookie").is_some_and(|v| v
        .to_str()
        .unwrap()
        .contains(&format!("Path=/user/{session}/"))));
    assert_eq!(status(&c, format!("{url}api/status")).await, 403);
    assert_eq!(status(&c, format!("{url}api/status?token=0000")).await, 403);
    let lab = c
        .get(format!("{url}lab?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lab.status(), 200);
    assert!(lab.text().await.unwrap().contains("JupyterLab"));

    // Bodies: a notebook is created through the proxy; a body over the limit gets 413 from
    // the same endpoint, and nothing is created.
    let contents = format!("{url}api/contents?token={token}");
    let before = c
        .get(&contents)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let small = post_status_line(&contents, br#"{"type": "notebook"}"#, None).await;
    assert!(small.contains(" 201 "), "{small}");
    let big = post_status_line(&contents, br#"{"type": "notebook"}"#, Some(600 << 20)).await;
    assert!(big.contains(" 413 "), "{big}");
    let after = c
        .get(&contents)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        after["content"].as_array().unwrap().len(),
        before["content"].as_array().unwrap().len() + 1,
        "exactly the small POST created a notebook"
    );

    // A kernel executes code through the proxy's WebSocket, with the cluster attached.
    let cell = execute(&url, &token, "from distributed import Client\nc = Client()\nprint('SUM', sum(c.gather(c.map(lambda x: x * x, range(10)))))").await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("SUM 285"), "{}", cell.output);

    // git, with an escaped clone URL: a second session, whose token opens nothing in the first.
    let clone_url = format!("{}/binder-examples/setup.py", web.git_url);
    let spec = format!(
        "{}/master",
        utf8_percent_encode(&clone_url, NON_ALPHANUMERIC)
    );
    let ev2 = events(&c, &format!("{}/build/git/{spec}", web.url)).await;
    let ready2 = ev2.last().unwrap().clone();
    assert_eq!(ready2["phase"], "ready", "{ev2:?}");
    let session2 = session_of(&ready2);
    let _stop2 = StopOnDrop(session2.clone());
    let token2 = ready2["token"].as_str().unwrap();
    assert_ne!(token2, token);
    assert_eq!(
        status(&c, format!("{url}api/status?token={token2}")).await,
        403
    );
    let other = c
        .get(format!("{url}api/status"))
        .header("Authorization", format!("token {token2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    assert_eq!(
        status(
            &c,
            format!(
                "{}api/status?token={token2}",
                ready2["url"].as_str().unwrap()
            )
        )
        .await,
        200
    );

    // Operations.
    let metrics = c
        .get(format!("{}/metrics", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_launches_total{status=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_build_duration_seconds"),
        "{metrics}"
    );
    // BinderHub's names, buckets and labels, for dashboards made for BinderHub: as many
    // builds and launches as berth's own counters.
    let builds = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_builds_total{status=\"success\"} "))
        .expect("berth_builds_total")
        .to_string();
    for line in [
        "binderhub_launch_time_seconds_bucket{status=\"success\",retries=\"0\",le=\"600\"} 2"
            .to_string(),
        "binderhub_launch_time_seconds_bucket{status=\"success\",retries=\"0\",le=\"+Inf\"} 2"
            .to_string(),
        "binderhub_launch_time_seconds_count{status=\"success\",retries=\"0\"} 2".to_string(),
        format!("binderhub_build_time_seconds_bucket{{status=\"success\",le=\"7200\"}} {builds}"),
        format!("binderhub_build_time_seconds_count{{status=\"success\"}} {builds}"),
        "binderhub_inprogress_builds 0".to_string(),
        "binderhub_inprogress_launches 0".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line.as_str()),
            "{line} not in\n{metrics}"
        );
    }
    let health: serde_json::Value = c
        .get(format!("{}/health", web.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_build_and_disconnects_do_not_stop_it() {
    let web = WebServer::start("");
    // A commit no image exists for yet: setup.py repos hash the whole tree.
    let dir = clone_fixture("setup.py");
    let repo = dir.path().join("repo");
    let marker = format!("{}", std::process::id());
    std::fs::write(repo.join("BUILD_MARKER.txt"), &marker).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "a new environment"]);
    web.serve_repo("fresh", &repo);
    let url = format!("{}/build/gh/local/fresh/master?build_only=true", web.url);
    let c = client();

    // A client that leaves after the first events.
    let mut leaving = c
        .get(&url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let first = leaving.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("waiting"));
    drop(leaving);

    let (a, b) = tokio::join!(events(&c, &url), events(&c, &url));
    for ev in [&a, &b] {
        let last = ev.last().unwrap();
        assert_eq!(last["phase"], "ready", "{ev:?}");
        assert!(
            last["imageName"]
                .as_str()
                .unwrap()
                .starts_with("berth/fresh:"),
            "{last}"
        );
    }
    let logs = |ev: &[serde_json::Value]| {
        ev.iter()
            .filter(|e| e["phase"] == "building")
            .map(|e| e["message"].to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        logs(&a).iter().any(|m| m.contains("Step 1/")),
        "a real build ran"
    );
    assert_eq!(
        logs(&a),
        logs(&b),
        "both clients receive the whole log of the one build"
    );
    let metrics = c
        .get(format!("{}/metrics", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_builds_total{status=\"success\"} 1"),
        "{metrics}"
    );
    let health = c.get(format!("{}/health", web.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let web = WebServer::start("deny:\n  - ^gh/binder-examples/requirements\n");
    let c = client();
    let get = |path: String, accept: bool| {
        let mut r = c.get(format!("{}{path}", web.url));
        if accept {
            r = r.header("Accept", "text/event-stream");
        }
        r.send()
    };
    let cases: Vec<(String, bool, u16, &str)> = vec![
        (
            "/build/gh/binder-examples/conda/main".into(),
            false,
            400,
            "text/event-stream",
        ),
        ("/build/svn/a/b/c".into(), true, 404, "unknown provider"),
        (
            "/build/gh/only-one-part".into(),
            true,
            400,
            "malformed spec",
        ),
        (
            "/build/gh/binder-examples/conda/-x".into(),
            true,
            400,
            "invalid ref",
        ),
        (
            format!("/build/gh/binder-examples/conda/{}", "a".repeat(600)),
            true,
            400,
            "longer than",
        ),
        (
            "/build/gh/binder-examples/conda/main?urlpath=../../etc".into(),
            true,
            400,
            "invalid path",
        ),
        (
            "/build/gh/binder-examples/conda/main?urlpath=http://evil.example/".into(),
            true,
            400,
            "invalid path",
        ),
        (
            "/build/git/file%3A%2F%2F%2Fetc/main".into(),
            true,
            403,
            "local repositories",
        ),
        (
            "/build/git/%2Ftmp%2Frepo/main".into(),
            true,
            403,
            "local repositories",
        ),
        ("/v2/svn/a/b/c".into(), false, 404, "unknown provider"),
    ];
    for (path, accept, status, text) in cases {
        let r = get(path.clone(), accept).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains(text), "{path}: {body}");
    }
    // A denied spec: BinderHub's failed event.
    let ev = events(
        &c,
        &format!("{}/build/gh/binder-examples/requirements/main", web.url),
    )
    .await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["phase"], "failed");
    assert_eq!(ev[0]["status_code"], 403);
    // An unknown ref fails inside the stream.
    let ev = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/no-such-branch", web.url),
    )
    .await;
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "failed");
    assert!(
        last["message"].as_str().unwrap().contains("unknown ref"),
        "{last}"
    );
    // Unknown sessions.
    assert_eq!(
        get("/user/nobody-00000000/api/status?token=x".into(), false)
            .await
            .unwrap()
            .status(),
        404
    );

    // Still serving, and the pages and badges are there.
    let home = get("/".into(), false).await.unwrap();
    assert_eq!(home.status(), 200);
    let html = home.text().await.unwrap();
    assert!(html.contains("id=\"repository\"") && html.contains("badge-md"));
    for svg in ["/badge.svg", "/badge_logo.svg"] {
        let r = get(svg.into(), false).await.unwrap();
        assert_eq!(r.headers()["content-type"], "image/svg+xml");
    }
    let v: serde_json::Value = get("/versions".into(), false)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["binderhub"].as_str().unwrap().starts_with("berth-web"));
    let page = get(
        "/v2/gh/binder-examples/conda/main?labpath=index.ipynb".into(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/build/gh/binder-examples/conda/main"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_an_unreachable_engine() {
    let port = common::web::free_port();
    let mut server = berth()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let url = format!("http://127.0.0.1:{port}");
    let mut health = None;
    for _ in 0..200 {
        if let Ok(r) = c.get(format!("{url}/health")).send().await {
            health = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let health = health.expect("the server answers");
    assert_eq!(health.status(), 503);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(status(&c, format!("{url}/")).await, 200);
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_and_allow_lists_answer_with_failed_events() {
    // The per-repository quota counts sessions of this server's repository URL (its own git
    // daemon's port), which no other test launches: the count starts at 0 whatever else runs.
    let web = WebServer::start(
        "per_repo_quota: 1\nallow:\n  - ^gh/binder-examples/(conda|setup\\.py)/\n",
    );
    let c = client();
    // Not on the allow list.
    let ev = events(
        &c,
        &format!("{}/build/gh/binder-examples/apt_install/master", web.url),
    )
    .await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["phase"], "failed");
    assert_eq!(ev[0]["status_code"], 403);

    // One session fits; with it running, the next is refused with BinderHub's 429.
    let first = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/main", web.url),
    )
    .await;
    let last = first.last().unwrap().clone();
    assert_eq!(
        last["phase"], "ready",
        "the first launch fits the quota: {first:?}"
    );
    let _stop = StopOnDrop(session_of(&last));
    let second = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/main", web.url),
    )
    .await;
    let refused = second.last().unwrap();
    assert_eq!(refused["phase"], "failed", "{second:?}");
    assert_eq!(refused["status_code"], 429);
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("Too many users"));
    assert!(
        phases(&second).contains(&"built".to_string()),
        "the build itself still ran: {second:?}"
    );
}

/// The `failed` event of a build of `url` (a `git` provider spec), with the URL itself replaced
/// by `<url>`, and how long the answer took.
async fn fetch_failure(
    c: &reqwest::Client,
    web: &WebServer,
    url: &str,
) -> (serde_json::Value, Vec<String>, std::time::Duration) {
    let started = std::time::Instant::now();
    let spec = format!("{}/main", utf8_percent_encode(url, NON_ALPHANUMERIC));
    let ev = events(c, &format!("{}/build/git/{spec}", web.url)).await;
    let took = started.elapsed();
    let mut last = ev.last().unwrap().clone();
    assert_eq!(last["phase"], "failed", "{url}: {ev:?}");
    let message = last["message"].as_str().unwrap().replace(url, "<url>");
    last["message"] = message.into();
    (last, phases(&ev), took)
}

#[tokio::test(flavor = "multi_thread")]
async fn private_hosts_are_refused_and_fetch_failures_read_the_same() {
    let c = client();
    // A closed port: bound, then released.
    let closed = common::web::free_port();

    // Without `allow_private_hosts`, loopback is refused: the server's own port (something
    // answers there) reads exactly as a closed port, and at once.
    let web = WebServer::start_raw("");
    let port = web.url.rsplit(':').next().unwrap().to_string();
    let own = format!("http://127.0.0.1:{port}/health");
    let (a, pa, took) = fetch_failure(&c, &web, &own).await;
    let (b, pb, _) = fetch_failure(&c, &web, &format!("http://127.0.0.1:{closed}/health")).await;
    assert_eq!(a, b, "an open and a closed port read differently");
    assert_eq!(pa, pb);
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("the repository could not be fetched"),
        "{a}"
    );
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    // Schemes other than https, http and git are refused the same way.
    let (s, _, _) = fetch_failure(&c, &web, "ssh://127.0.0.1:22/repo.git").await;
    assert_eq!(s, a);
    drop(web);

    // With loopback allowed (as the other tests run), the fetch itself fails, and still
    // reads the same whatever answers at the port.
    let web = WebServer::start("");
    let port = web.url.rsplit(':').next().unwrap().to_string();
    let (a2, pa2, _) = fetch_failure(&c, &web, &format!("http://127.0.0.1:{port}/health")).await;
    let (b2, pb2, _) = fetch_failure(&c, &web, &format!("http://127.0.0.1:{closed}/health")).await;
    assert_eq!(a2, b2, "an open and a closed port read differently");
    assert_eq!(pa2, pb2);
    assert_eq!(a2, a, "a refused host reads as a failed fetch");
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_builds_are_cancelled_after_the_grace_period() {
    let web = WebServer::start("abandoned_build_grace_seconds: 3\n");
    // A repository whose postBuild never ends.
    let dir = clone_fixture("setup.py");
    let repo = dir.path().join("repo");
    let marker = format!("POSTBUILD-STARTED-{}", std::process::id());
    // A duration no other process has, to find the build step's process on the host.
    let sleep_arg = format!("{}.{}", 86_400 * 365, std::process::id());
    let post_build = repo.join("postBuild");
    std::fs::write(
        &post_build,
        format!("#!/bin/bash\necho {marker}\nexec sleep {sleep_arg}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&post_build, std::fs::Permissions::from_mode(0o755)).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "a postBuild that sleeps forever"]);
    web.serve_repo("forever", &repo);
    let url = format!("{}/build/gh/local/forever/master?build_only=true", web.url);
    let c = client();
    let in_progress = || async {
        let h: serde_json::Value = c
            .get(format!("{}/health", web.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        h["builds_in_progress"].as_u64().unwrap()
    };

    // Follow the build until postBuild runs, then leave.
    let mut resp = c
        .get(&url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !seen.contains(&marker) {
        assert!(
            std::time::Instant::now() < deadline,
            "postBuild never ran: {seen}"
        );
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(300), resp.chunk())
            .await
            .expect("build output")
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("\"phase\":\"failed\""), "{seen}");
    assert_eq!(in_progress().await, 1);
    // The build step's process, seen from the host (the engine runs on this machine).
    let sleeping = || {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("ps runs");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.trim() == format!("sleep {sleep_arg}"))
    };
    let mut visible = false;
    for _ in 0..50 {
        visible = sleeping();
        if visible {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(visible, "postBuild's sleep is not visible on the host");
    drop(resp);

    // Cancelled after the grace period (plus the time to notice the client left).
    let start = std::time::Instant::now();
    while in_progress().await != 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the abandoned build still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(2),
        "cancelled before the grace period: {:?}",
        start.elapsed()
    );
    // Nothing of the build goes on: its step's process is gone.
    let start = std::time::Instant::now();
    while sleeping() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the cancelled build's step still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let metrics = c
        .get(format!("{}/metrics", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_builds_total{status=\"cancelled\"} 1"),
        "{metrics}"
    );

    // A later request starts a new build (the cancelled one is not joined).
    let mut again = c
        .get(&url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let first = again.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("waiting"));
    let start = std::time::Instant::now();
    while in_progress().await != 1 {
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(again);
    let start = std::time::Instant::now();
    while in_progress().await != 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_logged_one_line_each_without_tokens() {
    let web = WebServer::start("");
    let c = client();
    for _ in 0..3 {
        assert_eq!(status(&c, format!("{}/health", web.url)).await, 200);
    }
    let secret = "f00dfeedf00dfeedf00dfeedf00dfeed";
    assert_eq!(
        status(
            &c,
            format!("{}/user/nobody-00000000/api/status?token={secret}", web.url)
        )
        .await,
        404
    );
    // The log line is written when the response starts; give the writer a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = web.log_text();
    let health: Vec<&str> = log.lines().filter(|l| l.contains("path=/health")).collect();
    assert_eq!(health.len(), 3, "{log}");
    for l in &health {
        assert!(
            l.contains("INFO") && l.contains("method=GET") && l.contains("status=200"),
            "{l}"
        );
        assert!(l.contains("latency="), "{l}");
    }
    let proxied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("path=/user/nobody-00000000/api/status"))
        .collect();
    assert_eq!(proxied.len(), 1, "{log}");
    assert!(proxied[0].contains("status=404"), "{}", proxied[0]);
    assert!(!log.contains(secret), "the token was logged: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_clone_urls_never_reach_the_events() {
    let web = WebServer::start("");
    let c = client();
    let secret = "pa55w0rd-in-the-url";
    // The git daemon ignores credentials; the build goes on or fails, and either way the
    // client never sees them.
    for (url, reference) in [
        (
            format!(
                "{}/binder-examples/conda",
                web.git_url
                    .replacen("git://", &format!("git://someone:{secret}@"), 1)
            ),
            "main",
        ),
        (
            format!("http://someone:{secret}@127.0.0.1:9/nothing.git"),
            "main",
        ),
    ] {
        let spec = format!(
            "{}/{reference}",
            utf8_percent_encode(&url, NON_ALPHANUMERIC)
        );
        let resp = c
            .get(format!("{}/build/git/{spec}?build_only=true", web.url))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.contains("\"phase\""), "{text}");
        assert!(!text.contains(secret), "credentials in the events: {text}");
    }
    assert!(!web.log_text().contains(secret), "credentials in the log");
}

/// The sum of a metric's series whose labels contain every one of `labels` (`k="v"` strings).
async fn metric(c: &reqwest::Client, web: &WebServer, name: &str, labels: &[&str]) -> f64 {
    let text = c
        .get(format!("{}/metrics", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to 10 minutes: the image may be built first on a fresh machine) until the pool
/// entry whose label is `gauge` has a warm session.
async fn wait_warm(c: &reqwest::Client, web: &WebServer, gauge: &str, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while metric(c, web, "berth_pool_warm_sessions", &[gauge]).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: no warm session after 10 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Sessions of this server's repositories (its own git daemon's port) that a warm pool started.
fn pool_sessions(web: &WebServer) -> Vec<serde_json::Value> {
    ls().into_iter()
        .filter(|s| {
            s["pool"].is_string()
                && s["repo_url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(&web.git_url))
        })
        .collect()
}

/// Stops, when dropped, every session a warm pool of `web`'s repositories started.
struct StopPoolSessions(String);

impl Drop for StopPoolSessions {
    fn drop(&mut self) {
        for s in ls() {
            if s["pool"].is_string()
                && s["repo_url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(&self.0))
            {
                let _ = run_berth(&["stop", s["id"].as_str().unwrap()]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_hands_out_ready_sessions_and_refills() {
    let spec = "gh/binder-examples/conda/main";
    let mut web = WebServer::start(&format!("warm_pool:\n  - spec: {spec}\n    sessions: 1\n"));
    let _cleanup = StopPoolSessions(web.git_url.clone());
    let c = client();
    let warm_gauge = format!("spec=\"{spec}\"");
    wait_warm(&c, &web, &warm_gauge, "the pool fills").await;
    let warm = pool_sessions(&web);
    assert_eq!(warm.len(), 1, "one warm session: {warm:?}");
    let warm_id = warm[0]["id"].as_str().unwrap().to_string();
    assert_eq!(warm[0]["pool"], spec);
    assert_eq!(warm[0]["status"], "running", "{warm:?}");

    // A launch of the spec takes it: ready at once, said in the log and counted.
    let t = std::time::Instant::now();
    let ev = events(&c, &format!("{}/build/{spec}", web.url)).await;
    let took = t.elapsed();
    let ready = ev.last().unwrap().clone();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    let session = session_of(&ready);
    let _stop = StopOnDrop(session.clone());
    eprintln!(
        "warm pool hit: request to ready in {:.3} s",
        took.as_secs_f64()
    );
    assert_eq!(session, warm_id, "the warm session was handed out");
    assert!(
        ev.iter().any(|e| e["phase"] == "launching"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("from the pool")),
        "{ev:?}"
    );
    assert_eq!(
        metric(
            &c,
            &web,
            "berth_pool_launches_total",
            &[&warm_gauge, "result=\"hit\""]
        )
        .await,
        1.0
    );
    // Its token is its own: no other session on the engine has it, and it opens the session
    // through the proxy.
    let token = ready["token"].as_str().unwrap();
    let others: Vec<serde_json::Value> = ls().into_iter().filter(|s| s["id"] != session).collect();
    assert!(
        others.iter().all(|s| s["token"] != token),
        "another session has the same token"
    );
    let url = ready["url"].as_str().unwrap();
    assert_eq!(
        status(&c, format!("{url}api/status?token={token}")).await,
        200
    );
    assert_eq!(status(&c, format!("{url}api/status")).await, 403);

    // The pool refills with a new session, and a second launch gets that one, not the first.
    wait_warm(&c, &web, &warm_gauge, "the pool refills").await;
    let refilled = pool_sessions(&web);
    let fresh: Vec<&serde_json::Value> = refilled.iter().filter(|s| s["id"] != session).collect();
    assert_eq!(fresh.len(), 1, "{refilled:?}");
    let fresh_id = fresh[0]["id"].as_str().unwrap().to_string();
    assert_ne!(fresh[0]["token"], token);
    let ev2 = events(&c, &format!("{}/build/{spec}", web.url)).await;
    let ready2 = ev2.last().unwrap().clone();
    assert_eq!(ready2["phase"], "ready", "{ev2:?}");
    let second = session_of(&ready2);
    let _stop2 = StopOnDrop(second.clone());
    assert_eq!(second, fresh_id);
    assert_ne!(ready2["token"], ready["token"]);

    // On SIGTERM the server stops its warm sessions (never handed out) and keeps the others.
    wait_warm(&c, &web, &warm_gauge, "the pool refills again").await;
    let unused: Vec<String> = pool_sessions(&web)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .filter(|id| *id != session && *id != second)
        .collect();
    assert_eq!(unused.len(), 1, "{unused:?}");
    assert!(web.terminate(), "the server exits on SIGTERM");
    assert_eq!(
        session_leftovers(&unused[0]),
        (0, 0),
        "the warm session was stopped"
    );
    let ids: Vec<String> = ls()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&session) && ids.contains(&second), "{ids:?}");
}
