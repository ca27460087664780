//! End to end: bad input to `berth build` gets one clear error line and a non-zero exit, and
//! leaves no image tagged and no container behind.

mod common;

use std::path::Path;

use common::*;

/// Tagged images other than the base image (which a first build may create legitimately).
/// Untagged layers that Docker's build cache keeps after a failed step are not images anyone
/// can run by name, so they are not counted.
fn images() -> Vec<String> {
    all_images()
        .into_iter()
        .filter(|i| !i.starts_with("berth-base:") && i != "<none>:<none>")
        .collect()
}

/// Runs `berth build ARGS` expecting failure; returns the error line after checking it is the
/// only one and the last one on stderr, and that nothing was left behind.
fn fails(args: &[&str]) -> String {
    let _g = build_lock();
    let (images_before, containers_before) = (images(), all_containers());
    let mut full = vec!["build"];
    full.extend_from_slice(args);
    let out = run_berth(&full);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "berth {full:?} succeeded:\n{stderr}");
    assert!(out.stdout.is_empty(), "stdout must stay empty on failure");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "the error is the last line:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(images(), images_before, "no image may be tagged");
    assert_eq!(
        all_containers(),
        containers_before,
        "no container may be left"
    );
    errors[0].to_string()
}

fn p(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
fn unreachable_url() {
    let e = fails(&["git://127.0.0.1:9/nothing.git"]);
    assert!(
        e.contains("cannot fetch git://127.0.0.1:9/nothing.git"),
        "{e}"
    );
    let e = fails(&["http://127.0.0.1:9/nothing.git"]);
    assert!(e.contains("cannot fetch"), "{e}");
}

#[test]
fn path_that_is_no_repository() {
    let dir = tempfile::tempdir().unwrap();
    let e = fails(&[p(dir.path())]);
    assert!(e.contains("is not a git repository"), "{e}");
    let e = fails(&["/no/such/path/anywhere"]);
    assert!(e.contains("is not a git repository"), "{e}");
}

#[test]
fn unknown_and_malformed_refs() {
    let conda = fixture("conda");
    let e = fails(&[p(&conda), "--ref", "no-such-branch"]);
    assert!(e.contains("unknown ref \"no-such-branch\""), "{e}");
    let e = fails(&[p(&conda), "--ref=--upload-pack=touch /tmp/pwned"]);
    assert!(e.contains("invalid ref"), "{e}");
    let e = fails(&[p(&conda), "--ref", "deadbeefdeadbeef"]);
    assert!(e.contains("unknown ref"), "{e}");
}

#[test]
fn both_binder_folders() {
    let r = repo_with(&[
        ("binder/requirements.txt", "numpy\n"),
        (".binder/requirements.txt", "pandas\n"),
    ]);
    let e = fails(&[p(r.path())]);
    assert!(e.contains("both binder/ and .binder/ exist"), "{e}");
}

#[test]
fn unparseable_spec_files() {
    let r = repo_with(&[("environment.yml", "dependencies:\n  - numpy\n  pip: [\n")]);
    let e = fails(&[p(r.path())]);
    assert!(e.contains("environment.yml: not valid YAML"), "{e}");
    let r = repo_with(&[("requirements.txt", "numpy\nnot a valid requirement !!\n")]);
    let e = fails(&[p(r.path())]);
    assert!(e.contains("requirements.txt: line 2:"), "{e}");
}

#[test]
fn apt_txt_with_shell_metacharacters_is_never_executed() {
    let marker = std::env::temp_dir().join("berth-apt-injection-marker");
    let _ = std::fs::remove_file(&marker);
    let line = format!("cowsay; touch {}\n", marker.display());
    let r = repo_with(&[("apt.txt", line.as_str())]);
    let e = fails(&[p(r.path())]);
    assert!(e.contains("apt.txt: line 1:"), "{e}");
    assert!(!marker.exists());
    let r = repo_with(&[("apt.txt", "$(id)\n")]);
    assert!(fails(&[p(r.path())]).contains("apt.txt: line 1:"));
}

#[test]
fn symlink_out_of_the_repository() {
    let r = repo_with(&[("requirements.txt", "numpy\n")]);
    std::os::unix::fs::symlink("/etc/passwd", r.path().join("passwd")).unwrap();
    git(r.path(), &["add", "-A"]);
    git(r.path(), &["commit", "-qm", "link out"]);
    let e = fails(&[p(r.path())]);
    assert!(
        e.contains("symlink passwd points outside the repository"),
        "{e}"
    );
}

#[test]
fn repository_over_the_size_limit() {
    let e = fails(&[p(&fixture("conda")), "--max-repo-bytes", "1000"]);
    assert!(e.contains("larger than the limit of 1000 bytes"), "{e}");
}

#[test]
fn invalid_image_name() {
    let e = fails(&[p(&fixture("conda")), "--image-name", "Not A Name"]);
    assert!(e.contains("invalid image name"), "{e}");
}

#[test]
fn docker_not_running() {
    let out = berth()
        .args(["build", p(&fixture("conda"))])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("error: cannot reach the Docker engine"),
        "{err}"
    );
}

#[test]
fn failing_build_step_tags_nothing_and_leaves_no_container() {
    let r = repo_with(&[("requirements.txt", "berth-no-such-package-0d2f==1.0\n")]);
    let e = fails(&[p(r.path())]);
    assert!(e.contains("build failed:"), "{e}");
}
