//! Submodules are fetched at their recorded commits, recursively, with URLs relative to the
//! parent resolved as git does; one that cannot be fetched is a warning naming its path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_builder::{FetchSettings, HostPolicy, RepoCache};
use berth_buildpacks::FileEntry;

/// `git-daemon` itself (not `git daemon`, which would run it as a child that outlives a kill).
fn git_daemon() -> Command {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git runs");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Command::new(Path::new(&dir).join("git-daemon"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/repos")
        .join(format!("{name}.git"))
        .canonicalize()
        .expect("fixture repository")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=berth-test",
            "-c",
            "user.email=test@berth.invalid",
            "-c",
            "protocol.file.allow=always",
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

fn text(files: &berth_buildpacks::RepoFiles, path: &str) -> String {
    match files.get(path) {
        Some(FileEntry::File { data, .. }) => String::from_utf8_lossy(data).into_owned(),
        other => panic!("{path}: {other:?}"),
    }
}

/// `top/` holds: `sub.git` (a bare clone of the requirements fixture), `inner.git` (a repository
/// with one file and the conda fixture as a submodule), and the parent work tree `parent/`
/// with `libs/req` → `../sub.git` (relative), `nested` → `inner.git` (absolute path), and
/// `gone` → a repository deleted after it was added.
struct Layout {
    _top: tempfile::TempDir,
    parent: PathBuf,
    sub_head: String,
}

fn layout() -> Layout {
    let top = tempfile::tempdir().unwrap();
    let t = top.path();
    git(
        t,
        &[
            "clone",
            "-q",
            "--bare",
            fixture("requirements").to_str().unwrap(),
            "sub.git",
        ],
    );
    let sub_head = git(&t.join("sub.git"), &["rev-parse", "HEAD"]);

    // inner: one file, and the conda fixture as its own submodule (nesting).
    git(t, &["init", "-q", "-b", "main", "inner-work"]);
    std::fs::write(t.join("inner-work/inner.txt"), "inner\n").unwrap();
    git(
        &t.join("inner-work"),
        &[
            "submodule",
            "add",
            "-q",
            fixture("conda").to_str().unwrap(),
            "deep/conda",
        ],
    );
    git(&t.join("inner-work"), &["add", "-A"]);
    git(&t.join("inner-work"), &["commit", "-qm", "inner"]);
    git(t, &["clone", "-q", "--bare", "inner-work", "inner.git"]);

    // gone: added, then deleted.
    git(
        t,
        &[
            "clone",
            "-q",
            "--bare",
            fixture("setup.py").to_str().unwrap(),
            "gone.git",
        ],
    );

    git(t, &["init", "-q", "-b", "main", "parent"]);
    let parent = t.join("parent");
    std::fs::write(parent.join("requirements.txt"), "# none\n").unwrap();
    git(
        &parent,
        &["submodule", "add", "-q", "../sub.git", "libs/req"],
    );
    let inner = t.join("inner.git");
    git(
        &parent,
        &["submodule", "add", "-q", inner.to_str().unwrap(), "nested"],
    );
    git(
        &parent,
        &[
            "submodule",
            "add",
            "-q",
            t.join("gone.git").to_str().unwrap(),
            "gone",
        ],
    );
    git(&parent, &["add", "-A"]);
    git(&parent, &["commit", "-qm", "parent with submodules"]);
    std::fs::remove_dir_all(t.join("gone.git")).unwrap();
    // A newer commit in sub.git must not be what is checked out: the recorded one is.
    git(t, &["clone", "-q", "sub.git", "sub-work"]);
    std::fs::write(t.join("sub-work/NEWER"), "newer\n").unwrap();
    git(&t.join("sub-work"), &["add", "-A"]);
    git(&t.join("sub-work"), &["commit", "-qm", "newer"]);
    git(&t.join("sub-work"), &["push", "-q", "origin", "HEAD"]);
    Layout {
        _top: top,
        parent,
        sub_head,
    }
}

#[test]
fn submodules_are_fetched_at_their_commits_and_failures_are_warnings() {
    let l = layout();
    let cache = tempfile::tempdir().unwrap();
    let co = RepoCache::new(cache.path())
        .checkout(l.parent.to_str().unwrap(), None, 1 << 30, &mut |_| {})
        .expect("checkout");
    // The relative submodule, at its recorded commit (not the newer one).
    let rev = git(&l.parent.join("libs/req"), &["rev-parse", "HEAD"]);
    assert_eq!(rev, l.sub_head);
    let fixture_files = git(
        &fixture("requirements"),
        &["ls-tree", "-r", "--name-only", "HEAD"],
    );
    for f in fixture_files.lines() {
        assert!(
            co.files.get(&format!("libs/req/{f}")).is_some(),
            "libs/req/{f} missing"
        );
    }
    assert!(co.files.get("libs/req/NEWER").is_none());
    // Nested: a submodule's own submodule.
    assert_eq!(text(&co.files, "nested/inner.txt"), "inner\n");
    assert!(co.files.get("nested/deep/conda/environment.yml").is_some());
    // The deleted one: a warning naming its path, nothing fails silently.
    assert_eq!(co.warnings.len(), 1, "{:?}", co.warnings);
    assert!(
        co.warnings[0].starts_with("submodule gone was not fetched"),
        "{:?}",
        co.warnings
    );
    assert!(co.files.iter().all(|(p, _)| !p.starts_with("gone/")));
}

#[test]
fn submodules_of_a_remote_repository_go_through_the_host_policy() {
    let l = layout();
    let parent = l.parent.to_str().unwrap();
    // A bare clone of the parent, served by git daemon: its relative submodule resolves to a
    // git:// URL on the same daemon; the absolute local ones are refused (remote parent).
    let served = tempfile::tempdir().unwrap();
    git(
        served.path(),
        &["clone", "-q", "--bare", parent, "parent.git"],
    );
    git(
        served.path(),
        &[
            "clone",
            "-q",
            "--bare",
            fixture("requirements").to_str().unwrap(),
            "sub.git",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _daemon = KillOnDrop(
        git_daemon()
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", served.path().display()))
            .arg(served.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("git://127.0.0.1:{port}/parent.git");
    let settings = |allowed: &[&str]| FetchSettings {
        policy: Some(HostPolicy {
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            schemes: vec!["git".into()],
        }),
        cancel: None,
    };
    let checkout = |s: &FetchSettings| {
        let cache = tempfile::tempdir().unwrap();
        RepoCache::new(cache.path()).checkout_with(&url, None, 1 << 30, s, &mut |_| {})
    };
    let co = checkout(&settings(&["127.0.0.1"])).expect("checkout");
    assert!(co.files.get("libs/req/requirements.txt").is_some());
    let warned: Vec<&str> = co.warnings.iter().map(String::as_str).collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned
        .iter()
        .any(|w| w.starts_with("submodule nested was not fetched")));
    assert!(warned
        .iter()
        .any(|w| w.starts_with("submodule gone was not fetched")));
    assert!(
        warned.iter().all(|w| w.contains("local path")),
        "{warned:?}"
    );
}

/// Kills the child process when dropped, also when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
