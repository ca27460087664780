//! The host policy against a real `git daemon` on 127.0.0.1, and the one message every fetch
//! failure shows under a policy.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_builder::fetch::HIDDEN_FETCH_REASON;
use berth_builder::{FetchError, FetchSettings, HostPolicy, RepoCache};

/// `git-daemon` itself (not `git daemon`, which would run it as a child that outlives a kill).
fn git_daemon() -> Command {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git runs");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Command::new(Path::new(&dir).join("git-daemon"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/repos")
        .canonicalize()
        .expect("fixture repositories")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `git daemon` serving `base` on 127.0.0.1; killed when dropped.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Self {
        let port = free_port();
        let child = git_daemon()
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon { child, port }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy(allowed: &[&str], schemes: &[&str]) -> FetchSettings {
    FetchSettings {
        policy: Some(HostPolicy {
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            schemes: schemes.iter().map(|s| s.to_string()).collect(),
        }),
        cancel: None,
    }
}

fn checkout(url: &str, settings: &FetchSettings) -> Result<berth_builder::Checkout, FetchError> {
    let cache = tempfile::tempdir().unwrap();
    RepoCache::new(cache.path()).checkout_with(url, None, 1 << 30, settings, &mut |_| {})
}

#[test]
fn loopback_is_refused_unless_allowed() {
    let daemon = Daemon::start(&fixtures());
    let url = format!("git://127.0.0.1:{}/requirements.git", daemon.port);

    // No policy: anything goes (the CLI).
    let co = checkout(&url, &FetchSettings::default()).expect("fetch without a policy");
    assert!(co.files.get("requirements.txt").is_some());

    // A policy without an allow entry refuses loopback, even with the scheme allowed.
    let e = checkout(&url, &policy(&[], &["git"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot fetch {url}: {HIDDEN_FETCH_REASON}")
    );
    // The default schemes (https only) refuse git:// even when the host is allowed.
    assert!(checkout(&url, &policy(&["127.0.0.1"], &[])).is_err());
    // Allowed by address, by CIDR block, by name.
    for allowed in ["127.0.0.1", "127.0.0.0/8"] {
        let co = checkout(&url, &policy(&[allowed], &["git"])).expect(allowed);
        assert!(co.files.get("requirements.txt").is_some());
    }
    let by_name = format!("git://localhost:{}/requirements.git", daemon.port);
    assert!(checkout(&by_name, &policy(&[], &["git"])).is_err());
    assert!(checkout(&by_name, &policy(&["localhost"], &["git"])).is_ok());
    // Local paths and file:// never pass a policy.
    let local = fixtures().join("requirements.git");
    assert!(checkout(
        local.to_str().unwrap(),
        &policy(&["127.0.0.1"], &["git", "file"])
    )
    .is_err());
    assert!(checkout(
        &format!("file://{}", local.display()),
        &policy(&["127.0.0.1"], &["git", "file"])
    )
    .is_err());
}

#[test]
fn every_failure_shows_the_same_message() {
    let daemon = Daemon::start(&fixtures());
    // An open port that is no git server: it accepts, reads a little and closes.
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in open.incoming().flatten() {
            use std::io::{Read, Write};
            let mut s = s;
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    let closed_port = free_port();
    let settings = policy(&["127.0.0.1"], &["git", "http"]);
    let shown = |e: FetchError, port: u16| e.to_string().replace(&port.to_string(), "PORT");

    let mut messages = Vec::new();
    for (scheme, port, path) in [
        ("git", open_port, "r.git"),
        ("git", closed_port, "r.git"),
        ("http", open_port, "r.git"),
        ("http", closed_port, "r.git"),
        // A git server, but no such repository.
        ("git", daemon.port, "no-such-repo.git"),
    ] {
        let url = format!("{scheme}://127.0.0.1:{port}/{path}");
        let e = checkout(&url, &settings).unwrap_err();
        messages.push((scheme, shown(e, port).replace(path, "PATH")));
    }
    for (scheme, m) in &messages {
        assert_eq!(
            m,
            &format!("cannot fetch {scheme}://127.0.0.1:PORT/PATH: {HIDDEN_FETCH_REASON}"),
            "{messages:?}"
        );
    }
    // Refused by the policy itself (private address, no allow entry): the same words.
    let e = checkout(
        &format!("git://10.255.255.1:{closed_port}/r.git"),
        &policy(&[], &["git"]),
    )
    .unwrap_err();
    assert_eq!(
        shown(e, closed_port),
        format!("cannot fetch git://10.255.255.1:PORT/r.git: {HIDDEN_FETCH_REASON}")
    );
    // Without a policy the real reason shows (the CLI user may see their own network).
    let e = checkout(
        &format!("git://127.0.0.1:{closed_port}/r.git"),
        &FetchSettings::default(),
    )
    .unwrap_err();
    assert!(!e.to_string().contains(HIDDEN_FETCH_REASON), "{e}");
}

#[tokio::test]
async fn a_silent_host_under_a_policy_looks_like_any_failed_fetch() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let url = format!("http://127.0.0.1:{port}/silent.git");
    let cache = tempfile::tempdir().unwrap();
    let mut req = berth_builder::BuildRequest::new(url.clone());
    req.cache_dir = cache.path().to_path_buf();
    req.timeout = Duration::from_secs(2);
    let engine = berth_builder::Engine::connect()
        .await
        .expect("a Docker engine");
    // Without a policy: the build's own timeout.
    let e = berth_builder::build(&engine, &req, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "build timed out after 2 s (--build-timeout)");
    // Under a policy: the one fetch failure message.
    req.host_policy = Some(HostPolicy {
        allowed: vec!["127.0.0.1".into()],
        schemes: vec!["http".into()],
    });
    let started = Instant::now();
    let e = berth_builder::build(&engine, &req, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot fetch {url}: {HIDDEN_FETCH_REASON}")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn redirects_are_not_followed_under_a_policy() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // Where the redirect points, another host (libgit2 follows redirects within the same host,
    // which the policy allowed already): counts the connections it gets.
    let target = TcpListener::bind("127.0.0.2:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    std::thread::spawn(move || {
        for s in target.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    // The repository's host answers every request with a redirect to the target.
    let redirector = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = redirector.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in redirector.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{target_port}/elsewhere.git/info/refs?service=git-upload-pack\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(answer.as_bytes());
        }
    });
    let url = format!("http://127.0.0.1:{port}/r.git");

    // Without a policy libgit2 follows the first redirect (the proof that the setup works).
    assert!(checkout(&url, &FetchSettings::default()).is_err());
    let followed = reached.load(Ordering::SeqCst);
    assert!(followed > 0, "libgit2 did not follow the redirect");
    // Under a policy that allows the host, the redirect is refused, with the one message.
    let e = checkout(&url, &policy(&["127.0.0.1"], &["http"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot fetch {url}: {HIDDEN_FETCH_REASON}")
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        followed,
        "the redirect was followed"
    );
}
