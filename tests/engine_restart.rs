//! End to end: a session launched through `berth serve` survives a restart of the Docker engine.
//! Its containers come back (restart policy), with the same session, token, URL and dashboard
//! address, its files are kept, and the proxy reaches it again. Running kernels are lost.
//! A test binary of its own: restarting the engine would break any test running beside it.

mod common;

use std::time::{Duration, Instant};

use common::web::*;
use common::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Stops the running `dockerd` (SIGTERM, as `systemctl restart docker` does) and starts it
/// again with the same command line, then waits until it answers.
fn restart_engine() {
    let pid = std::process::Command::new("pidof")
        .arg("dockerd")
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    assert!(!pid.is_empty(), "dockerd is not running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "setsid nohup {} >>/var/log/berth-dockerd.log 2>&1 < /dev/null &",
                quoted.join(" ")
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = std::process::Command::new("docker")
            .arg("info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_survives_an_engine_restart_and_answers_through_the_proxy() {
    let web = WebServer::start("");
    let c = client();
    let ev = events(
        &c,
        &format!("{}/build/gh/binder-examples/conda/main", web.url),
    )
    .await;
    let ready = ev.last().unwrap().clone();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    let url = ready["url"].as_str().unwrap().to_string();
    let token = ready["token"].as_str().unwrap().to_string();
    let session = session_of_url(&url);
    let _stop = StopOnDrop(session.clone());
    let before = ls_session(&session);

    // A file written in the session.
    let put = c
        .put(format!("{url}api/contents/kept.txt?token={token}"))
        .json(&serde_json::json!({"type": "file", "format": "text", "content": "kept across restarts"}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    tokio::task::spawn_blocking(restart_engine).await.unwrap();

    // The proxy reaches the session again, at the same URL, with the same token.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = c.get(format!("{url}api/status?token={token}")).send().await;
        if r.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session does not answer through the proxy after the restart: {:?}",
            r.map(|r| r.status())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let file: serde_json::Value = c
        .get(format!("{url}api/contents/kept.txt?token={token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(file["content"], "kept across restarts");

    // berth sees the same session, and its cluster is back.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let after = tokio::task::spawn_blocking({
            let s = session.clone();
            move || ls_session(&s)
        })
        .await
        .unwrap();
        if after["status"] == "running" && after["workers"] == before["workers"] {
            assert_eq!(after["url"], before["url"]);
            assert_eq!(after["token"], before["token"]);
            assert_eq!(after["dashboard_url"], before["dashboard_url"]);
            break;
        }
        assert!(Instant::now() < deadline, "not running again: {after}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dash = before["dashboard_url"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = c
            .get(dash.replace("/status", "/json/counts.json"))
            .send()
            .await;
        let n = match counts {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if n.as_ref()
            .is_some_and(|n| n["workers"] == before["workers"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler does not see the workers: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
