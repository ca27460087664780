//! A real registry for the tests: Debian's `docker-registry` (the CNCF Distribution registry),
//! one process per test on a free loopback port with its own storage folder, killed when
//! dropped. Its log (one `response completed` line per request, with method and URI) tells
//! what was uploaded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Docker's image manifest V2 schema 2 media type.
pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A loopback port nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running registry; killed (and its registry-prefixed local tags removed) when dropped.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl TestRegistry {
    /// Starts a registry (read-only, refusing pushes, when `readonly`) and waits until it
    /// answers `GET /v2/`.
    pub fn start(readonly: bool) -> Self {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "docker-registry is missing: apt-get install docker-registry (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let maintenance = if readonly {
            "  maintenance:\n    readonly:\n      enabled: true\n"
        } else {
            ""
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n{maintenance}\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let reg = Self { addr, dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _, _)) = reg.get("/v2/", None) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not come up:\n{}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    /// The storage folder (Distribution's filesystem driver layout:
    /// `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The path of the stored blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Every stored blob: (digest, size in bytes).
    pub fn blobs(&self) -> Vec<(String, u64)> {
        let root = self.storage().join("docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        let Ok(prefixes) = std::fs::read_dir(&root) else {
            return out;
        };
        for p in prefixes.flatten() {
            for b in std::fs::read_dir(p.path()).unwrap().flatten() {
                let data = b.path().join("data");
                if let Ok(m) = std::fs::metadata(&data) {
                    out.push((
                        format!("sha256:{}", b.file_name().to_string_lossy()),
                        m.len(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The requests the registry completed so far, as (method, URI), in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        let field = |line: &str, key: &str| -> Option<String> {
            let start = line.find(key)? + key.len();
            let rest = &line[start..];
            Some(if let Some(q) = rest.strip_prefix('"') {
                q[..q.find('"').unwrap_or(q.len())].to_string()
            } else {
                rest.split_whitespace().next().unwrap_or("").to_string()
            })
        };
        self.log()
            .lines()
            .filter(|l| l.contains("msg=\"response completed\""))
            .filter_map(|l| {
                Some((
                    field(l, "http.request.method=")?,
                    field(l, "http.request.uri=")?,
                ))
            })
            .collect()
    }

    /// Blob uploads completed so far into repository `name` (`PUT
    /// /v2/<name>/blobs/uploads/<id>?digest=…`: each is one blob whose bytes were sent; a
    /// blob mounted from another repository is a `POST …?mount=` with no `PUT`).
    pub fn uploads(&self, name: &str) -> usize {
        let prefix = format!("/v2/{name}/blobs/uploads/");
        self.requests()
            .iter()
            .filter(|(m, u)| m == "PUT" && u.starts_with(&prefix))
            .count()
    }

    /// Every blob upload (any repository) and every `PATCH` (bytes sent) so far.
    pub fn all_uploads(&self) -> (usize, usize) {
        let r = self.requests();
        let puts = r
            .iter()
            .filter(|(m, u)| m == "PUT" && u.contains("/blobs/uploads/"))
            .count();
        let patches = r
            .iter()
            .filter(|(m, u)| m == "PATCH" && u.contains("/blobs/uploads/"))
            .count();
        (puts, patches)
    }

    /// `GET http://<addr><path>` (with `Accept: accept`): status, headers, body.
    pub fn get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), reqwest::Error> {
        self.request(reqwest::Method::GET, path, accept)
    }

    /// `HEAD http://<addr><path>`: status and headers.
    pub fn head(&self, path: &str) -> (u16, reqwest::header::HeaderMap) {
        let (s, h, _) = self.request(reqwest::Method::HEAD, path, None).unwrap();
        (s, h)
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), reqwest::Error> {
        let url = format!("http://{}{path}", self.addr);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let mut req = client
                .request(method, &url)
                .timeout(Duration::from_secs(30));
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?.to_vec();
            Ok((status, headers, body))
        })
    }

    /// `GET <path>` as JSON, which must answer 200.
    pub fn json(&self, path: &str, accept: Option<&str>) -> serde_json::Value {
        let (status, _, body) = self.get(path, accept).unwrap();
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    /// Local image references under this registry (`127.0.0.1:PORT/…`).
    pub fn local_tags(&self) -> Vec<String> {
        super::all_images()
            .into_iter()
            .filter(|i| i.starts_with(&format!("{}/", self.addr)))
            .collect()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The registry-prefixed tags the test's pushes left (the images keep their own names).
        for t in self.local_tags() {
            let _ = Command::new("docker")
                .args(["rmi", "--no-prune", &t])
                .output();
        }
    }
}
