//! End to end: BinderHub's own JavaScript client (`@jupyterhub/binderhub-client`, from npm, run
//! with Node.js) talks to `berth serve` unchanged.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::web::WebServer;
use common::*;

/// The client package installed (once) under the target folder.
fn client_dir() -> PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/binderhub-client");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("binderhub-client");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["package.json", "client.mjs"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    if !dir
        .join("node_modules/@jupyterhub/binderhub-client")
        .exists()
    {
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

fn run_client(
    dir: &std::path::Path,
    endpoint: &str,
    spec: &str,
    build_only: bool,
) -> serde_json::Value {
    let mut cmd = Command::new("node");
    cmd.arg("client.mjs")
        .arg(endpoint)
        .arg(spec)
        .current_dir(dir);
    if build_only {
        cmd.arg("build_only");
    }
    let out = cmd.output().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn binderhub_client_builds_and_launches() {
    let dir = client_dir();
    let web = WebServer::start("");
    let endpoint = format!("{}/build/", web.url);

    let r = run_client(&dir, &endpoint, "gh/binder-examples/conda/main", true);
    assert_eq!(r["last"]["phase"], "ready", "{r}");
    assert!(r["last"]["imageName"]
        .as_str()
        .unwrap()
        .starts_with("berth/conda:"));

    let r = run_client(&dir, &endpoint, "gh/binder-examples/conda/main", false);
    let last = &r["last"];
    assert_eq!(last["phase"], "ready", "{r}");
    let url = last["url"].as_str().unwrap();
    let session = session_of_url(url);
    let _stop = StopOnDrop(session);
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for p in ["waiting", "fetching", "built", "launching", "ready"] {
        assert!(phases.contains(&p), "{phases:?}");
    }
    // What the client would open works through the proxy.
    let token = last["token"].as_str().unwrap();
    let status = http_status(&format!("{url}api/status?token={token}"));
    assert_eq!(status, 200);

    let r = run_client(
        &dir,
        &endpoint,
        "gh/binder-examples/conda/no-such-branch",
        true,
    );
    assert_eq!(r["last"]["phase"], "failed", "{r}");
}

/// A GET on a fresh runtime (the test itself is synchronous); returns the status code.
fn http_status(url: &str) -> u16 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        c.get(url).send().await.unwrap().status().as_u16()
    })
}
