//! End to end: credentials in a repository URL are used for the fetch and appear nowhere else:
//! not on stdout or stderr (with debug logging), not in the images' labels, history or files,
//! not in the clone cache; a wrong password fails with one error line that shows none.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

const USER: &str = "berth-reader";
const PASSWORD: &str = "Xq7-pa55word-nobody-may-see-9Kp";

/// `tests/support/git-http-server.py`: `git http-backend` behind HTTP Basic authentication on
/// 127.0.0.1; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(root: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git-http-server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(root)
            .args([USER, PASSWORD])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_secret_free(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
    assert!(!text.contains(USER), "{what} shows the user name:\n{text}");
}

/// Files under `dir` (recursively) whose bytes contain the password.
fn files_with_password(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes
                    .windows(PASSWORD.len())
                    .any(|w| w == PASSWORD.as_bytes())
                {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn credentials_in_the_url_are_used_and_never_shown() {
    let root = tempfile::tempdir().unwrap();
    let work = repo_with(&[
        ("requirements.txt", "# no packages\n"),
        ("README.md", "a private repository\n"),
    ]);
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.path().to_str().unwrap(),
            "private.git",
        ],
    );
    let server = Server::start(root.path());
    let url = format!(
        "http://{USER}:{PASSWORD}@127.0.0.1:{}/private.git",
        server.port
    );
    let shown = format!("http://***@127.0.0.1:{}/private.git", server.port);
    let cache = tempfile::tempdir().unwrap();

    // The right password: the build succeeds, and nothing shows the secret.
    let out = {
        let _g = build_lock();
        berth()
            .args([
                "build",
                &url,
                "--json",
                "--image-name",
                "berth-test/private:secrets",
            ])
            .env("BERTH_LOG", "debug")
            .env("BERTH_CACHE_DIR", cache.path())
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the build with the password failed:\n{stderr}"
    );
    assert_secret_free("stdout", &stdout);
    assert_secret_free("stderr (BERTH_LOG=debug)", &stderr);
    assert!(
        stderr.contains(&shown),
        "the redacted URL is reported:\n{stderr}"
    );
    let built: Built = serde_json::from_str(&stdout).unwrap();
    for image in [&built.image, &built.env_image] {
        let inspect = docker(&["image", "inspect", image]);
        assert_secret_free(&format!("docker inspect {image}"), &inspect);
        let history = docker(&["history", "--no-trunc", image]);
        assert_secret_free(&format!("docker history {image}"), &history);
    }
    assert_eq!(labels(&built.image)["berth.repo_url"], shown.as_str());
    let files = in_image(
        &built.image,
        &format!("grep -rl -- '{PASSWORD}' /home/jovyan /etc/berth 2>/dev/null || true"),
    );
    assert_eq!(files.trim(), "", "files in the image hold the password");
    assert_eq!(files_with_password(cache.path()), Vec::<String>::new());
    docker(&["rmi", "berth-test/private:secrets"]);

    // A wrong password: one error line, without the secret (neither the wrong one nor the
    // user name).
    let wrong = format!(
        "http://{USER}:wrong-{PASSWORD}@127.0.0.1:{}/private.git",
        server.port
    );
    let out = berth()
        .args(["build", &wrong, "--json"])
        .env("BERTH_LOG", "debug")
        .env("BERTH_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_secret_free("stderr of the failed build", &stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(&format!(
            "error: cannot build {shown}: cannot fetch {shown}"
        )),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("authentication failed"), "{}", errors[0]);
    assert_eq!(files_with_password(cache.path()), Vec::<String>::new());
}
