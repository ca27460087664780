//! Helpers of the end-to-end tests: the real `berth` binary, the real Docker engine and the
//! real fixture repositories in `../shared/fixtures/repos`.
#![allow(dead_code)]

pub mod kernel;
pub mod registry;
pub mod web;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// Docker builds share the engine and two cores: one at a time keeps them from redoing each
/// other's base layers.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Holds the build lock (a failed test must not poison it for the others).
pub fn build_lock() -> MutexGuard<'static, ()> {
    BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bare fixture repository `name` (`conda`, `requirements`, `apt_install`, `setup.py`).
pub fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/repos")
        .join(format!("{name}.git"));
    assert!(p.exists(), "fixture {} is missing", p.display());
    p.canonicalize().unwrap()
}

/// The clone cache shared by the tests of one run.
pub fn cache_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("berth-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The host's CA bundle, handed to builds so pip and uv work through intercepting proxies.
pub fn ca_bundle() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SSL_CERT_FILE").map(PathBuf::from),
        Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// A `berth` command with the test cache and CA bundle.
pub fn berth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.env("BERTH_CACHE_DIR", cache_dir());
    match ca_bundle() {
        Some(ca) => c.env("BERTH_CA_CERT", ca),
        None => c.env_remove("BERTH_CA_CERT"),
    };
    c
}

/// Runs `berth ARGS`, returning its output.
pub fn run_berth(args: &[&str]) -> Output {
    berth().args(args).output().expect("berth runs")
}

/// The result of `berth build --json`: the builder's own outcome type.
pub type Built = berth_builder::BuildOutcome;

/// `berth build SOURCE --json EXTRA…`, which must succeed.
pub fn build(source: &Path, extra: &[&str]) -> Built {
    let _g = build_lock();
    let mut args = vec!["build", source.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = run_berth(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth build {source:?} failed:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `docker ARGS`, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sh -c SCRIPT` in a throwaway container of `image` (through its entrypoint).
pub fn in_image(image: &str, script: &str) -> String {
    docker(&["run", "--rm", image, "sh", "-c", script])
}

/// The labels of an image.
pub fn labels(image: &str) -> serde_json::Value {
    let out = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        image,
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

/// Ids of every container, running or not.
pub fn all_containers() -> Vec<String> {
    let mut v: Vec<String> = docker(&["ps", "-aq", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// References (`repo:tag`) of every image.
pub fn all_images() -> Vec<String> {
    let mut v: Vec<String> = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Every image as `id repo:tag`, including untagged intermediate ones (`docker images -a`).
pub fn images_with_ids() -> Vec<String> {
    let mut v: Vec<String> = docker(&[
        "images",
        "-a",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ])
    .lines()
    .map(str::to_string)
    .collect();
    v.sort();
    v
}

/// What differs between two [`images_with_ids`] listings, one line per image: `+` for an
/// image only in `after`, `-` for one only in `before`, each with its creation time, parent
/// and the build step that made it. Empty when the listings are the same.
pub fn image_difference(before: &[String], after: &[String]) -> String {
    let mut out = String::new();
    for (sign, from, other) in [("+", after, before), ("-", before, after)] {
        for line in from.iter().filter(|l| !other.contains(l)) {
            let id = line.split(' ').next().unwrap_or_default();
            let detail = Command::new("docker")
                .args([
                    "image",
                    "inspect",
                    "-f",
                    "{{.Created}} parent {{.Parent}}: {{json .ContainerConfig.Cmd}}",
                    id,
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            out.push_str(&format!("{sign} {line} {detail}\n"));
        }
    }
    out
}

/// `git ARGS` in `dir`, which must succeed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=berth-test",
            "-c",
            "user.email=test@berth.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work-tree clone of a fixture in a temporary folder, to commit changes on.
pub fn clone_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(
        dir.path(),
        &["clone", "-q", fixture(name).to_str().unwrap(), "repo"],
    );
    dir
}

/// A new repository with the given files committed.
pub fn repo_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "test repository"]);
    dir
}

/// The result of `berth launch --json`.
#[derive(Debug, serde::Deserialize)]
pub struct Launched {
    pub session: String,
    pub url: String,
    pub token: String,
    pub image: String,
    pub workers: u32,
    pub dashboard_url: Option<String>,
    pub seconds: f64,
}

/// `berth launch SOURCE --json EXTRA…`, which must succeed.
pub fn launch(source: &Path, extra: &[&str]) -> Launched {
    let _g = build_lock();
    let mut args = vec!["launch", source.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = run_berth(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth launch {source:?} failed:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Containers and networks labelled with a session, as `docker` lists them.
pub fn session_leftovers(session: &str) -> (usize, usize) {
    let filter = format!("label=berth.session={session}");
    let c = docker(&["ps", "-aq", "--filter", &filter]).lines().count();
    let n = docker(&["network", "ls", "-q", "--filter", &filter])
        .lines()
        .count();
    (c, n)
}

/// `berth ls --json`, parsed.
pub fn ls() -> Vec<serde_json::Value> {
    let out = run_berth(&["ls", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entry of `berth ls --json` for one session.
pub fn ls_session(session: &str) -> serde_json::Value {
    ls().into_iter()
        .find(|s| s["id"] == session)
        .unwrap_or_else(|| panic!("session {session} is not listed"))
}

/// The session id at the end of a session's URL (`…/user/<session>/`).
pub fn session_of_url(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Stops a session when dropped, so a failing test leaves nothing running.
pub struct StopOnDrop(pub String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = run_berth(&["stop", &self.0]);
    }
}

/// A fixture NetCDF file in `../shared/fixtures/data` (never copied into the project).
pub fn fixture_data(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/data")
        .join(name);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

/// `$BERTH_TEST_PYTHON` (xarray, zarr 3, netCDF4), made by scripts/data-test-env.
pub fn test_python() -> PathBuf {
    let p = std::env::var_os("BERTH_TEST_PYTHON")
        .map(PathBuf::from)
        .expect(
            "BERTH_TEST_PYTHON is not set: run scripts/data-test-env, then \
         export BERTH_TEST_PYTHON=$PWD/target/pyenv/bin/python",
        );
    assert!(
        p.exists(),
        "BERTH_TEST_PYTHON={} does not exist",
        p.display()
    );
    p
}

/// `berth data add NAME FILE EXTRA… --json` into the library at `root`: the version id.
pub fn data_add(root: &Path, name: &str, file: &Path, extra: &[&str]) -> String {
    let out = berth()
        .env("BERTH_DATA_DIR", root)
        .args(["data", "add", name, file.to_str().unwrap(), "--json"])
        .args(extra)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    v["version"].as_str().unwrap().to_string()
}

/// The stdout of a command that must have succeeded (else the test fails showing its stderr).
pub fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Computes on an adaptive session launched with `--adapt 0:4` (and `prefix` before the
/// command, such as `--backend swarm`): it starts with no worker; a computation of a few
/// hundred tasks brings workers up (the background `berth adapt` logs scaling to 4) and
/// completes; afterwards the workers go back to 0; `stop` ends the adapter too.
pub async fn adaptive_cycle(prefix: &[&str]) {
    let conda = fixture("conda");
    let mut extra: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    extra.extend(["--adapt".into(), "0:4".into()]);
    let launched = tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        launch(&conda, &extra)
    })
    .await
    .unwrap();
    let session = launched.session.clone();
    let with_prefix = |args: &[&str]| {
        let mut all: Vec<&str> = prefix.to_vec();
        all.extend_from_slice(args);
        run_berth(&all)
    };
    struct Stop(Vec<String>);
    impl Drop for Stop {
        fn drop(&mut self) {
            let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
            let _ = run_berth(&args);
        }
    }
    let mut stop_args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    stop_args.extend(["stop".into(), session.clone()]);
    let _stop = Stop(stop_args);
    assert_eq!(
        launched.workers, 0,
        "an idle adaptive session holds MIN workers"
    );
    let entry = |out: Output| -> serde_json::Value {
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.into_iter()
            .find(|e| e["id"] == session.as_str())
            .expect("the session is listed")
    };
    let e = entry(with_prefix(&["ls", "--json"]));
    assert_eq!(e["adapt"], serde_json::json!({"min": 0, "max": 4}), "{e}");
    assert_eq!(e["workers"], 0, "{e}");

    let (base, token) = kernel::server_of(&launched.url, "lab");
    let cell = kernel::execute(
        &base,
        &token,
        r#"
from distributed import Client
import dask.array as da
c = Client()
total = int(da.ones((4000, 4000), chunks=(250, 250)).sum().compute())
print("TOTAL", total, "WORKERS", len(c.scheduler_info()["workers"]))
"#,
    )
    .await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("TOTAL 16000000"), "{}", cell.output);
    let log_path = cache_dir().join("adapt").join(format!("{session}.log"));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("adapt: scaling") && log.contains("to=4"),
        "the adapter scaled up to MAX:\n{log}"
    );

    // Idle again: back to MIN within a minute.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let e = entry(with_prefix(&["ls", "--json"]));
        if e["workers"] == 0 && e["workers_wanted"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers did not go back to 0: {e}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let out = with_prefix(&["stop", &session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("adapting ends")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the adapter did not end with its session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
