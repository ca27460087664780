//! A `berth serve` with a loopback `git daemon` serving the fixture repositories, for the web
//! tests. Both stop when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A git daemon whose `binder-examples/<name>` are the fixture repositories (and any extra
/// repositories added with [`WebServer::serve_repo`]).
pub struct WebServer {
    pub url: String,
    pub git_url: String,
    pub root: tempfile::TempDir,
    /// The server's stderr, logged at `BERTH_LOG=info`.
    pub log: PathBuf,
    daemon: Child,
    server: Child,
}

impl WebServer {
    /// Starts both, with `extra_config` appended to the YAML configuration; the git daemon on
    /// loopback is listed in `allow_private_hosts`.
    pub fn start(extra_config: &str) -> Self {
        Self::start_raw(&format!(
            "allow_private_hosts: [\"127.0.0.1\"]\n{extra_config}"
        ))
    }

    /// Starts both, with `extra_config` appended to the YAML configuration and nothing else:
    /// without `allow_private_hosts`, the server may not fetch from loopback.
    pub fn start_raw(extra_config: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let repos = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/repos")
            .canonicalize()
            .unwrap();
        std::os::unix::fs::symlink(&repos, root.path().join("binder-examples")).unwrap();
        std::fs::create_dir(root.path().join("local")).unwrap();
        let git_port = free_port();
        // git-daemon itself, not the `git` wrapper: killing the wrapper would leave it running.
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={git_port}"))
            .arg(format!("--base-path={}", root.path().display()))
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_for_port(git_port);
        let port = free_port();
        let config = root.path().join("berth.yaml");
        std::fs::write(
            &config,
            format!("listen: 127.0.0.1:{port}\nproviders:\n  gh: git://127.0.0.1:{git_port}\nworkers: 1\n{extra_config}"),
        )
        .unwrap();
        let log = root.path().join("server.log");
        let server = crate::common::berth()
            .args(["serve", "--config"])
            .arg(&config)
            .env("BERTH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("berth serve starts");
        wait_for_port(port);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            git_url: format!("git://127.0.0.1:{git_port}"),
            root,
            log,
            daemon,
            server,
        }
    }

    /// What the server has logged so far, without terminal colour codes.
    pub fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Sends the server SIGTERM and waits (up to 60 s) for it to exit; true when it did.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.server.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.server.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Serves a work tree clone at `git://…/local/<name>`; returns the path in the daemon.
    pub fn serve_repo(&self, name: &str, repo: &Path) -> PathBuf {
        let link = self.root.path().join("local").join(name);
        std::os::unix::fs::symlink(repo.join(".git"), &link).unwrap();
        link
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.daemon.kill();
        let _ = self.server.wait();
        let _ = self.daemon.wait();
    }
}

/// The events of one `/build/…` request, read to the end of the stream.
pub async fn events(client: &reqwest::Client, url: &str) -> Vec<serde_json::Value> {
    let resp = client
        .get(url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("build request");
    assert_eq!(resp.status(), 200, "{url}");
    let text = resp.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The phases of a list of events, consecutive duplicates merged.
pub fn phases(events: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let p = e["phase"].as_str().unwrap_or("").to_string();
        if out.last() != Some(&p) {
            out.push(p);
        }
    }
    out
}
