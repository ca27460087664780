//! End to end: which Python a repository gets. A version a base image has picks that base
//! (3.13: Debian trixie, created with debootstrap on first use); `python-3` is the default;
//! a version no base has and uv cannot download fails fast with one error line, or builds with
//! the nearest version and a warning under `--python-fallback`, on the command line and
//! through `berth serve` (where the message speaks to the person in the browser).

mod common;

use std::time::{Duration, Instant};

use common::web::{events, WebServer};
use common::*;

/// A mirror URL on a loopback port nothing listens on: uv could download nothing from it, and
/// the check says so at once, whatever network the tests run on.
fn closed_mirror() -> String {
    format!("http://127.0.0.1:{}/pbs", common::web::free_port())
}

/// `berth build SOURCE --json EXTRA…` with uv's downloads pointed at `mirror`; the output.
fn build_with_mirror(
    source: &std::path::Path,
    mirror: &str,
    extra: &[&str],
) -> (std::process::Output, Duration) {
    let _g = build_lock();
    let started = Instant::now();
    let out = berth()
        .args(["build", source.to_str().unwrap(), "--json"])
        .args(extra)
        .env("BERTH_PYTHON_MIRROR", mirror)
        .output()
        .expect("berth runs");
    (out, started.elapsed())
}

fn python_version(image: &str) -> String {
    docker(&["run", "--rm", image, "python", "--version"])
        .trim()
        .to_string()
}

#[test]
fn python_3_13_builds_on_the_trixie_base() {
    let r = repo_with(&[("runtime.txt", "python-3.13\n")]);
    let b = build(r.path(), &[]);
    assert!(
        python_version(&b.image).starts_with("Python 3.13."),
        "{}",
        python_version(&b.image)
    );
    // Debian 13 (trixie) underneath.
    let debian = in_image(&b.image, "cat /etc/debian_version");
    assert!(debian.starts_with("13"), "{debian}");
    let l = labels(&b.image);
    assert_eq!(l["berth.python.requested"], "3.13");
    assert_eq!(l["berth.python.actual"], "3.13");
    assert!(docker(&[
        "image",
        "inspect",
        "berth-base:trixie",
        "--format",
        "{{.Id}}"
    ])
    .starts_with("sha256:"));
}

#[test]
fn python_3_is_the_default_python() {
    let r = repo_with(&[("runtime.txt", "# the default\npython-3\n")]);
    let b = build(r.path(), &[]);
    assert!(
        python_version(&b.image).starts_with("Python 3.11."),
        "{}",
        python_version(&b.image)
    );
    let l = labels(&b.image);
    assert_eq!(l["berth.python.actual"], "3.11");
    assert!(l.get("berth.python.requested").is_none(), "{l}");

    // Nonsense is one error line naming the file, and no build.
    let bad = repo_with(&[("binder/runtime.txt", "python-three\n")]);
    let out = run_berth(&["build", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("binder/runtime.txt: expected python-3, python-X.Y or python-X.Y.Z"),
        "{err}"
    );
}

#[test]
fn python_3_10_fails_fast_or_falls_back_with_a_warning() {
    let name = "berth-test/pythons-310:strict";
    let requirements = fixture("requirements");
    let mirror = closed_mirror();
    let (out, took) = build_with_mirror(&requirements, &mirror, &["--image-name", name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // Fails fast: the check of the mirror takes no time, no environment is built.
    assert!(took < Duration::from_secs(60), "took {took:?}:\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let e = errors[0];
    assert!(e.contains("runtime.txt asks for Python 3.10"), "{e}");
    assert!(e.contains("the base images have only 3.11, 3.13"), "{e}");
    assert!(
        e.contains(&format!("the Python mirror {mirror} is unreachable")),
        "{e}"
    );
    assert!(e.contains("pass --python-fallback"), "{e}");
    assert!(out.stdout.is_empty());
    assert!(!all_images().iter().any(|i| i == name), "{name} was tagged");

    // With --python-fallback: the nearest version, a visible warning saying why.
    let (out, _) = build_with_mirror(&requirements, &mirror, &["--python-fallback"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: runtime.txt asks for Python 3.10, which is not available; building with Python 3.11 (--python-fallback)"),
        "{err}"
    );
    assert!(
        err.contains("warning: uv cannot install Python 3.10 either: the Python mirror"),
        "{err}"
    );
    let b: Built = serde_json::from_slice(&out.stdout).unwrap();
    assert!(python_version(&b.image).starts_with("Python 3.11."));
    let l = labels(&b.image);
    assert_eq!(l["berth.python.requested"], "3.10");
    assert_eq!(l["berth.python.actual"], "3.11");
}

#[test]
fn a_reachable_mirror_plans_a_uv_managed_python() {
    // Something answers on the mirror's port: the check passes, and the Dockerfile installs the
    // version with uv from that mirror, on the default base. (Nothing here can serve a real
    // Python, so the build itself is not run.)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}/pbs", listener.local_addr().unwrap());
    let requirements = fixture("requirements");
    let out = berth()
        .args(["build", requirements.to_str().unwrap(), "--dockerfile"])
        .env("BERTH_PYTHON_MIRROR", &mirror)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let d = String::from_utf8_lossy(&out.stdout);
    assert!(d.starts_with("# Rendered by berth"), "{d}");
    assert!(d.contains("\nFROM berth-base:bookworm\n"), "{d}");
    assert!(
        d.contains(&format!(
            "UV_PYTHON_INSTALL_MIRROR={mirror} UV_PYTHON_INSTALL_DIR=/opt/berth/python uv python install 3.10 "
        )),
        "{d}"
    );
    assert!(!d.contains("python3.10-venv"), "{d}");
    let out = berth()
        .args(["build", requirements.to_str().unwrap(), "--plan"])
        .env("BERTH_PYTHON_MIRROR", &mirror)
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["python"]["version"], "3.10");
    assert_eq!(plan["python"]["managed"], true);
    assert_eq!(plan["python"]["mirror"], mirror.as_str());

    // A version a base has never asks uv: trixie's 3.13, from its own base.
    let r = repo_with(&[("runtime.txt", "python-3.13.1\n")]);
    let out = berth()
        .args(["build", r.path().to_str().unwrap(), "--dockerfile"])
        .env("BERTH_PYTHON_MIRROR", "none")
        .output()
        .unwrap();
    let d = String::from_utf8_lossy(&out.stdout);
    assert!(d.contains("\nFROM berth-base:trixie\n"), "{d}");
    assert!(d.contains("python3.13 python3.13-venv"), "{d}");
    assert!(!d.contains("uv python install"), "{d}");
}

// The build lock is held across the event stream on purpose: the server's build must not run
// beside this file's other builds. Each test has its own runtime, so nothing waits on it there.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread")]
async fn through_the_web_the_operator_decides() {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mirror = closed_mirror();

    // Fallback off (the default): the message speaks to the person in the browser.
    let web = WebServer::start(&format!("python_mirror: {mirror}\n"));
    let (ev, took) = {
        let _g = build_lock();
        let started = Instant::now();
        let ev = events(
            &client,
            &format!(
                "{}/build/gh/binder-examples/requirements/main?build_only=true",
                web.url
            ),
        )
        .await;
        (ev, started.elapsed())
    };
    // Fails fast: the fetch and the check of the mirror, no build.
    assert!(took < Duration::from_secs(60), "took {took:?}: {ev:?}");
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "failed", "{ev:?}");
    let m = last["message"].as_str().unwrap();
    assert!(
        m.starts_with("This repository asks for Python 3.10 (in runtime.txt), but this server can build only Python 3.11 or 3.13"),
        "{m}"
    );
    assert!(m.contains("The operator of this server can allow building with the nearest version (python_fallback: true"), "{m}");
    assert!(!m.contains("--python-fallback"), "{m}");
    assert_eq!(m.lines().count(), 1, "{m}");
    drop(web);

    // Fallback on: built, with the warning in the log.
    let web = WebServer::start(&format!("python_mirror: {mirror}\npython_fallback: true\n"));
    let ev = {
        let _g = build_lock();
        events(
            &client,
            &format!(
                "{}/build/gh/binder-examples/requirements/main?build_only=true",
                web.url
            ),
        )
        .await
    };
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "ready", "{ev:?}");
    let warned = ev.iter().any(|e| {
        e["phase"] == "building"
            && e["message"].as_str().is_some_and(|m| {
                m.starts_with("warning: runtime.txt asks for Python 3.10, which is not available; building with Python 3.11")
            })
    });
    assert!(warned, "{ev:?}");
    let image = last["imageName"].as_str().unwrap();
    assert_eq!(labels(image)["berth.python.actual"], "3.11");
}
