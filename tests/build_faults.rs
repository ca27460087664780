//! End to end: builds that hang, run out of memory, fork too much or fail end with one clear
//! `error:` line and leave nothing behind: no container, no tag, no untagged (dangling) image;
//! and hostile input (a 100 KB ref) is never echoed whole.

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use common::*;

/// Untagged top-level images (`docker images -f dangling=true`).
fn dangling() -> Vec<String> {
    let mut v: Vec<String> = docker(&["images", "-q", "--no-trunc", "-f", "dangling=true"])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Tagged images other than the base image.
fn tagged() -> Vec<String> {
    all_images()
        .into_iter()
        .filter(|i| !i.starts_with("berth-base:") && i != "<none>:<none>")
        .collect()
}

/// A unique token, so each run's repository has new content and Docker's cache cannot serve
/// the steps that must run.
fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Builds once a repository with the same environment as the test repositories but no
/// `postBuild`, so that the shared layers (Python, JupyterLab) are in Docker's cache and the
/// test builds reach their `postBuild` within seconds.
fn warm() {
    static WARM: OnceLock<()> = OnceLock::new();
    WARM.get_or_init(|| {
        let r = repo_with(&[("requirements.txt", "# no packages\n")]);
        build(r.path(), &[]);
    });
}

/// A repository with an empty `requirements.txt` and this `postBuild` (made unique).
fn repo_with_post_build(script: &str) -> tempfile::TempDir {
    let text = format!("#!/bin/sh\n# {}\n{script}\n", nonce());
    repo_with(&[
        ("requirements.txt", "# no packages\n"),
        ("postBuild", &text),
    ])
}

struct Failure {
    error: String,
    stderr: String,
    seconds: f64,
}

/// Runs `berth build ARGS` expecting failure; checks the error is the one and last `error:`
/// line, and that no container, tag or dangling image was left behind.
fn fails(args: &[&str], env: &[(&str, &str)]) -> Failure {
    let _g = build_lock();
    let (containers, dangling_before, tagged_before) = (all_containers(), dangling(), tagged());
    let started = Instant::now();
    let out = berth()
        .arg("build")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("berth runs");
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "berth build {args:?} succeeded:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout must stay empty on failure");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected:\n{stderr}"
    );
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(all_containers(), containers, "no container may be left");
    let new_dangling: Vec<String> = dangling()
        .into_iter()
        .filter(|i| !dangling_before.contains(i))
        .collect();
    assert!(
        new_dangling.is_empty(),
        "the failed build left untagged images {new_dangling:?}:\n{}\n{stderr}",
        new_dangling
            .iter()
            .map(|i| docker(&["image", "inspect", "-f", "{{.Created}} parent {{.Parent}} from {{.Container}}: {{json .ContainerConfig.Cmd}}", i]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(tagged(), tagged_before, "no image may be tagged");
    Failure {
        error: errors[0].to_string(),
        stderr,
        seconds,
    }
}

fn p(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
fn a_hanging_build_times_out_and_leaves_nothing() {
    warm();
    let r = repo_with_post_build("echo started-the-endless-step; sleep infinity");
    // The kernel environment is installed after the repository's files are copied (its
    // pins win), so the step before postBuild runs in every new repository: 60 s leave room.
    let f = fails(&[p(r.path()), "--build-timeout", "60s"], &[]);
    assert!(
        f.error
            .contains("build timed out after 60 s (--build-timeout)"),
        "{}",
        f.error
    );
    assert!(
        f.stderr.contains("started-the-endless-step"),
        "the build must have reached postBuild:\n{}",
        f.stderr
    );
    assert!(
        (60.0..80.0).contains(&f.seconds),
        "took {:.1} s for a 60 s timeout",
        f.seconds
    );
    eprintln!("timed out and cleaned up in {:.1} s", f.seconds);
    // The same through the environment variable.
    let r = repo_with_post_build("sleep infinity");
    let f = fails(&[p(r.path())], &[("BERTH_BUILD_TIMEOUT", "20s")]);
    assert!(
        f.error.contains("build timed out after 20 s"),
        "{}",
        f.error
    );
}

#[test]
fn a_step_over_its_memory_limit_is_killed_with_a_clear_error() {
    warm();
    // 3 GiB of bytes, written (not just reserved), against a 512 MiB limit.
    let r = repo_with_post_build("python3 -c \"b = b'x' * (3 << 30); print(len(b))\"");
    let f = fails(&[p(r.path()), "--build-memory", "512M"], &[]);
    assert!(
        f.error
            .contains("build step ran out of memory (limit 512 MiB, --build-memory)"),
        "{}",
        f.error
    );
    eprintln!("memory kill reported after {:.1} s", f.seconds);
}

#[test]
fn a_step_over_its_process_limit_fails() {
    warm();
    let r = repo_with_post_build(
        "python3 -c \"import subprocess; ps = [subprocess.Popen(['sleep', '60']) for _ in range(300)]; print('forked', len(ps))\"",
    );
    let f = fails(&[p(r.path()), "--build-pids", "100"], &[]);
    assert!(f.error.contains("build failed:"), "{}", f.error);
    assert!(
        f.stderr.contains("Resource temporarily unavailable")
            || f.stderr.contains("BlockingIOError"),
        "the fork must have been refused:\n{}",
        f.stderr
    );
    assert!(!f.stderr.contains("forked 300"), "{}", f.stderr);
}

#[test]
fn a_failed_build_leaves_no_untagged_image() {
    warm();
    let r = repo_with_post_build("echo about-to-fail; exit 3");
    let f = fails(&[p(r.path())], &[]);
    assert!(f.error.contains("build failed:"), "{}", f.error);
    assert!(
        f.error.contains("returned a non-zero code: 3"),
        "{}",
        f.error
    );
    assert!(f.stderr.contains("about-to-fail"), "{}", f.stderr);
}

#[test]
fn a_100_kb_ref_is_never_echoed_whole() {
    let conda = fixture("conda");
    let long = "r".repeat(100_000);
    for args in [
        vec!["build", p(&conda), "--ref", long.as_str()],
        vec!["build", p(&conda), "--plan", "--ref", long.as_str()],
    ] {
        let out = run_berth(&args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.len() < 1000, "stderr has {} bytes", stderr.len());
        let line = stderr.lines().last().unwrap();
        assert!(
            line.starts_with("error:") && line.contains("invalid ref"),
            "{line}"
        );
        assert!(line.contains(&format!("\"{}\"…", "r".repeat(60))), "{line}");
    }
    // A long ref that is valid but unknown is quoted short as well.
    let unknown = "x".repeat(200);
    let out = run_berth(&["build", p(&conda), "--plan", "--ref", &unknown]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap();
    assert!(line.contains("unknown ref") && line.contains('…'), "{line}");
    assert!(!line.contains(&unknown), "{line}");
    // With BERTH_LOG=info the build span quotes it short too.
    let out = berth()
        .args(["build", p(&conda), "--ref", &long])
        .env("BERTH_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        out.stderr.len() < 2000,
        "stderr has {} bytes",
        out.stderr.len()
    );
}

#[test]
fn a_fetch_from_a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let url = format!("http://127.0.0.1:{port}/silent.git");
    let f = fails(&[&url, "--build-timeout", "3s"], &[]);
    assert!(
        f.error
            .contains("build timed out after 3 s (--build-timeout)"),
        "{}",
        f.error
    );
    // The process ends with the timeout, not when the stuck connection does.
    assert!(f.seconds < 10.0, "took {:.1} s", f.seconds);
}
