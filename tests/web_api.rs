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
    // Unknown sessions and oversized bodies.
    assert_eq!(
        get("/user/nobody-00000000/api/status?token=x".into(), false)
            .await
            .unwrap()
            .status(),
        404
    );
    let big = c
        .post(format!("{}/user/nobody-00000000/api/contents", web.url))
        .body(vec![b'x'; 600 << 20])
        .send()
        .await;
    assert!(big.map(|r| r.status().as_u16() >= 400).unwrap_or(true));

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
    let web =
        WebServer::start("total_quota: 1\nallow:\n  - ^gh/binder-examples/(conda|setup\\.py)/\n");
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

    // One session fits; with it running, the next is refused with BinderHub's 429 ... unless
    // other tests' sessions already fill the quota, in which case the first is refused.
    let first = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/main", web.url),
    )
    .await;
    let last = first.last().unwrap().clone();
    let _stop = (last["phase"] == "ready").then(|| {
        StopOnDrop(
            last["url"]
                .as_str()
                .unwrap()
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap()
                .to_string(),
        )
    });
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
