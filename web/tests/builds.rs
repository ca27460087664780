//! BinderHub's build API in process, with a fake builder and backend: abandoned builds, the
//! `ready` event, what a build request carries, hostile specs.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_launcher::Backend;
use common::*;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// `git` specs point at a closed port on loopback, which the configuration allows.
fn config() -> berth_web::Config {
    berth_web::Config {
        allow_private_hosts: vec!["127.0.0.1".into()],
        ..berth_web::Config::default()
    }
}

fn git_spec(url: &str, reference: &str) -> String {
    format!(
        "git/{}/{}",
        utf8_percent_encode(url, NON_ALPHANUMERIC),
        utf8_percent_encode(reference, NON_ALPHANUMERIC)
    )
}

async fn in_progress(c: &reqwest::Client, server: &Server) -> u64 {
    let h: serde_json::Value = c
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    h["builds_in_progress"].as_u64().unwrap()
}

/// Opens the event stream and reads until `phase` has been seen; returns the open response.
async fn follow_until(c: &reqwest::Client, url: &str, phase: &str) -> reqwest::Response {
    let mut r = c
        .get(url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains(&format!("\"phase\":\"{phase}\"")) {
        assert!(Instant::now() < deadline, "no {phase} event: {text}");
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    r
}

/// Waits until `/health` reports `want` builds in progress; returns how long that took.
async fn wait_in_progress(
    c: &reqwest::Client,
    server: &Server,
    want: u64,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let n = in_progress(c, server).await;
        if n == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "builds_in_progress is {n}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_builds_are_cancelled_after_the_grace_period() {
    let grace = Duration::from_secs(2);
    let builder = Arc::new(FakeBuilder {
        hang: true,
        ..FakeBuilder::default()
    });
    let cfg = berth_web::Config {
        abandoned_build_grace_seconds: grace.as_secs(),
        ..config()
    };
    let server = Server::start(cfg, Arc::new(FakeBackend::default()), builder.clone()).await;
    let c = client();
    let url = format!(
        "{}/build/{}",
        server.url,
        git_spec("http://127.0.0.1:9/forever.git", "main")
    );

    // Two clients share the build; one leaves, and the build goes on for the other.
    let a = follow_until(&c, &url, "fetching").await;
    let b = follow_until(&c, &url, "fetching").await;
    assert_eq!(
        builder.started.load(Ordering::SeqCst),
        1,
        "one shared build"
    );
    assert_eq!(in_progress(&c, &server).await, 1);
    drop(a);
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    assert_eq!(
        in_progress(&c, &server).await,
        1,
        "b still follows the build"
    );
    assert_eq!(builder.dropped.load(Ordering::SeqCst), 0);

    // The last client leaves: cancelled once the grace period is over, not before.
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        in_progress(&c, &server).await,
        1,
        "cancelled before the grace period"
    );
    wait_in_progress(&c, &server, 0, grace + Duration::from_secs(5)).await;
    assert_eq!(
        builder.dropped.load(Ordering::SeqCst),
        1,
        "the builder's future was dropped"
    );

    // A later request starts afresh.
    let again = follow_until(&c, &url, "fetching").await;
    assert_eq!(builder.started.load(Ordering::SeqCst), 2);
    assert_eq!(in_progress(&c, &server).await, 1);
    drop(again);
    wait_in_progress(&c, &server, 0, grace + Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_events_join_urls_per_provider_and_carry_no_credentials() {
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    *backend.jupyter.lock().unwrap() = Some(jupyter.addr);
    let builder = Arc::new(FakeBuilder::default());
    let cfg = berth_web::Config {
        providers: [("gh".to_string(), "http://127.0.0.1:9".to_string())].into(),
        build_timeout_seconds: 120,
        build_memory_bytes: Some(1 << 30),
        build_pids: None,
        ..config()
    };
    let server = Server::start(cfg, backend.clone(), builder.clone()).await;
    let c = client();
    let events = |spec: String| {
        let c = c.clone();
        let url = format!("{}/build/{spec}", server.url);
        async move {
            let r = c
                .get(url)
                .header("Accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            (parse_events(&text), text)
        }
    };

    // GitHub: `…/tree/<commit>`, the ref (with a `/`) escaped in the request.
    let (ev, _) = events("gh/some-org/some-repo/feature%2Fx".into()).await;
    let ready = ev.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    assert_eq!(
        ready["binder_ref_url"],
        format!("http://127.0.0.1:9/some-org/some-repo/tree/{COMMIT}")
    );
    assert_eq!(
        ready["binder_request"],
        "v2/gh/some-org/some-repo/feature%2Fx"
    );
    assert_eq!(
        ready["binder_persistent_request"],
        format!("v2/gh/some-org/some-repo/{COMMIT}")
    );
    assert_eq!(ready["repo_url"], "http://127.0.0.1:9/some-org/some-repo");
    let url = ready["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/user/some-repo-", server.url)),
        "{url}"
    );
    // The session it names answers through the proxy with its token.
    let r = c
        .get(format!(
            "{url}api/status?token={}",
            ready["token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // git, with credentials in the clone URL: they reach the builder, never the client.
    let secret_url = "http://someone:s3cr3t-pw@127.0.0.1:9/private.git";
    let (ev, text) = events(git_spec(secret_url, "topic/a")).await;
    let ready = ev.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert_eq!(ready["repo_url"], "http://***@127.0.0.1:9/private.git");
    assert_eq!(
        ready["binder_ref_url"],
        "http://***@127.0.0.1:9/private.git"
    );
    assert_eq!(
        ready["binder_persistent_request"],
        format!("v2/git/http%3A%2F%2F%2A%2A%2A%40127.0.0.1%3A9%2Fprivate.git/{COMMIT}")
    );
    assert_eq!(
        ready["binder_request"],
        "v2/git/http%3A%2F%2F%2A%2A%2A%40127.0.0.1%3A9%2Fprivate.git/topic%2Fa"
    );
    let sessions = backend.list().await.unwrap();
    assert!(sessions.iter().all(|s| !s.repo_url.contains("s3cr3t")));

    // What the builder was asked: the configured timeout, limits and host policy.
    let reqs = builder.requests.lock().unwrap().clone();
    let last = reqs.last().unwrap();
    assert_eq!(last.source, secret_url);
    assert_eq!(last.reference.as_deref(), Some("topic/a"));
    assert_eq!(last.timeout, Duration::from_secs(120));
    assert_eq!(last.limits.memory_bytes, Some(1 << 30));
    assert_eq!(last.limits.pids, None);
    let policy = last
        .host_policy
        .clone()
        .expect("web builds carry a host policy");
    assert_eq!(policy.allowed, vec!["127.0.0.1".to_string()]);
    for s in ["https", "http", "git"] {
        assert!(policy.schemes.contains(&s.to_string()), "{policy:?}");
    }
    assert!(!policy.schemes.contains(&"ssh".to_string()), "{policy:?}");
    assert!(!policy.schemes.contains(&"file".to_string()), "{policy:?}");
}

#[tokio::test]
async fn hostile_specs_are_not_echoed_whole() {
    let server = Server::start(
        config(),
        Arc::new(FakeBackend::default()),
        Arc::new(FakeBuilder::default()),
    )
    .await;
    let c = client();
    // A 100 KB path: refused before any handler, and not echoed.
    let (status, response) = raw_get(
        &server,
        &format!("/build/gh/org/repo/{}", "r".repeat(100 * 1024)),
    )
    .await;
    assert!((400..500).contains(&status), "{status}");
    assert!(response.len() < 1000, "{} bytes", response.len());
    // 60 KB: as long as a URL the HTTP library takes; the handlers quote at most a few dozen
    // characters of it.
    let long_ref = "r".repeat(60 * 1024);
    for path in [
        format!("/build/gh/org/repo/{long_ref}"),
        format!("/build/git/{long_ref}"),
        format!("/build/{long_ref}/x/y"),
    ] {
        let r = c
            .get(format!("{}{path}", server.url))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
        let body = r.text().await.unwrap();
        assert!(
            body.len() < 1000,
            "{} bytes: {}",
            body.len(),
            &body[..200.min(body.len())]
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["phase"], "failed");
    }
    let page = c
        .get(format!("{}/v2/gh/org/repo/{long_ref}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    let html = page.text().await.unwrap();
    assert!(html.len() < 10_000, "{} bytes", html.len());
    assert!(!html.contains(&"r".repeat(200)));
}

/// A GET over a raw connection (the HTTP client refuses URLs this long); returns the status and
/// the whole response.
async fn raw_get(server: &Server, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_refuse_launches_after_the_build() {
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    *backend.jupyter.lock().unwrap() = Some(jupyter.addr);
    let cfg = berth_web::Config {
        total_quota: 2,
        per_repo_quota: 1,
        ..config()
    };
    let server = Server::start(cfg, backend.clone(), Arc::new(FakeBuilder::default())).await;
    let c = client();
    let last_of = |spec: String| {
        let c = c.clone();
        let url = format!("{}/build/{spec}", server.url);
        async move {
            let text = c
                .get(url)
                .header("Accept", "text/event-stream")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let ev = parse_events(&text);
            assert!(ev.iter().any(|e| e["phase"] == "built"), "{ev:?}");
            ev.last().unwrap().clone()
        }
    };
    let a = git_spec("http://127.0.0.1:9/a.git", "main");
    let b = git_spec("http://127.0.0.1:9/b.git", "main");
    let c_ = git_spec("http://127.0.0.1:9/c.git", "main");
    assert_eq!(last_of(a.clone()).await["phase"], "ready");
    // The same repository again: over the per-repository quota.
    let refused = last_of(a).await;
    assert_eq!(refused["status_code"], 429, "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("Too many users running"));
    // Another repository fits the total; a third does not.
    assert_eq!(last_of(b).await["phase"], "ready");
    let refused = last_of(c_).await;
    assert_eq!(refused["status_code"], 429, "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("Too many users on this server"));
    assert_eq!(backend.list().await.unwrap().len(), 2);
}
