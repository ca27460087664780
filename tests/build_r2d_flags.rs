//! repo2docker's command-line flags on `berth build` and `berth run`: `--user-id`,
//! `--user-name`, `--target-repo-dir`, `--subdir`, `--label`, `--build-arg`, `-e` and `-v`,
//! against the real Docker engine. Two builds in all: one of berth's template, one of a
//! repository's own Dockerfile (plus a rebuild of its one step with another build arg).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{berth, build_lock, docker, git, labels, repo_with};

/// `berth ARGS` under the build lock: (success, stdout, stderr).
fn berth_locked(args: &[&str]) -> (bool, String, String) {
    let _g = build_lock();
    let out = berth().args(args).output().expect("berth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The image repository berth names after a temporary repository (`berth/tmpXXXX`).
fn image_repo(repo: &Path) -> String {
    let name = repo
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    format!("berth/{name}")
}

/// Tags of `repo` (`berth/x`) that exist.
fn tags_of(repo: &str) -> Vec<String> {
    docker(&["images", "--format", "{{.Tag}}", repo])
        .lines()
        .map(str::to_string)
        .collect()
}

/// A folder (and file) uid 1234 can read, to mount.
fn host_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "from the host\n").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path().join("hello.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    dir
}

const IMAGE_FLAGS: [&str; 10] = [
    "--user-id",
    "1234",
    "--user-name",
    "ana",
    "--target-repo-dir",
    "/srv/repo",
    "--subdir",
    "sub",
    "--label",
    "team=x",
];

/// The command `berth run` runs: the container's user, folder, variable and mount, and what a
/// Dask worker sees of the same.
const CHECK: &str = r#"id -u; whoami; echo "HOME=$HOME"; pwd; echo "A=$A"; cat /mnt/x/hello.txt
test -f data.txt && echo "data.txt here"; test -e top.txt || echo "no top.txt"
python - <<'EOF'
import os
from distributed import Client
c = Client()
def look():
    return os.getuid(), os.environ.get("A"), open("/mnt/x/hello.txt").read().strip()
print("worker", *c.submit(look, pure=False).result())
EOF
"#;

#[test]
fn repo2docker_flags_shape_the_image_and_the_session() {
    // The root's spec would fail the build: only the folder is built.
    let repo = repo_with(&[
        ("requirements.txt", "this-package-does-not-exist-berth==0\n"),
        ("top.txt", "root\n"),
        ("sub/data.txt", "data\n"),
    ]);
    let source = repo.path().to_str().unwrap();
    let mut args = vec!["build", source, "--json", "--build-arg", "IGNORED=1"];
    args.extend(IMAGE_FLAGS);
    let (ok, stdout, stderr) = berth_locked(&args);
    assert!(ok, "berth build failed:\n{stderr}");
    assert!(
        stderr.contains("warning: --build-arg IGNORED ignored"),
        "{stderr}"
    );
    let built: common::Built = serde_json::from_str(&stdout).expect("JSON outcome");
    let l = labels(&built.image);
    assert_eq!(l["team"], "x");
    assert_eq!(l["berth.subdir"], "sub");
    assert_eq!(l["berth.user_id"], "1234");
    assert_eq!(l["berth.user_name"], "ana");
    assert_eq!(l["berth.repo_dir"], "/srv/repo");
    assert_eq!(
        l["berth.tree"],
        git(repo.path(), &["rev-parse", "HEAD:sub"])
    );

    let mount = host_dir();
    let volume = format!("{}:/mnt/x", mount.path().display());
    let mut args = vec!["run", source];
    args.extend(IMAGE_FLAGS);
    args.extend([
        "--workers",
        "1",
        "-e",
        "A=1",
        "-v",
        &volume,
        "--",
        "sh",
        "-c",
        CHECK,
    ]);
    let (ok, stdout, stderr) = berth_locked(&args);
    assert!(ok, "berth run failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("reusing"), "the run rebuilt:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "1234",
            "ana",
            "HOME=/home/ana",
            "/srv/repo",
            "A=1",
            "from the host",
            "data.txt here",
            "no top.txt",
            "worker 1234 1 from the host",
        ],
        "{stderr}"
    );
}

#[test]
fn a_dockerfile_gets_build_args_and_labels() {
    // The berth base exists once any build of berth's template ran; make sure it does.
    let base = berth_builder::DEFAULT_BASE_IMAGE;
    if docker(&["images", "-q", base]).trim().is_empty() {
        let warm = repo_with(&[("README.md", "warm-up\n")]);
        let (ok, _, stderr) = berth_locked(&["build", warm.path().to_str().unwrap()]);
        assert!(ok, "{stderr}");
    }
    let dockerfile = format!(
        "FROM {base}\nARG GREETING=unset\nARG NB_UID\nRUN echo \"$GREETING $NB_UID\" > /greeting\n"
    );
    let repo = repo_with(&[("Dockerfile", dockerfile.as_str())]);
    let source = repo.path().to_str().unwrap();
    let build = |greeting: &str| {
        let arg = format!("GREETING={greeting}");
        let (ok, stdout, stderr) = berth_locked(&[
            "build",
            source,
            "--json",
            "--build-arg",
            &arg,
            "--user-id",
            "2000",
            "--label",
            "team=y",
        ]);
        assert!(ok, "berth build failed:\n{stderr}");
        serde_json::from_str::<common::Built>(&stdout).expect("JSON outcome")
    };
    let hello = build("hello");
    assert_eq!(hello.buildpack, "dockerfile");
    let greeting = |image: &str| {
        docker(&["run", "--rm", "--entrypoint", "cat", image, "/greeting"])
            .trim()
            .to_string()
    };
    // NB_UID is --user-id, passed as repo2docker does.
    assert_eq!(greeting(&hello.image), "hello 2000");
    assert_eq!(labels(&hello.image)["team"], "y");
    let bye = build("bye");
    assert_ne!(
        bye.env_hash, hello.env_hash,
        "build args enter the env hash"
    );
    assert_eq!(greeting(&bye.image), "bye 2000");
    for image in [&hello.image, &bye.image] {
        let _ = docker(&["rmi", image]);
    }
}

#[test]
fn bad_flags_are_one_error_line_and_no_image() {
    let repo = repo_with(&[("sub/data.txt", "data\n"), ("file.txt", "x\n")]);
    let source = repo.path().to_str().unwrap();
    let mount = host_dir();
    let good_volume = format!("{}:/mnt/x", mount.path().display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["build", "--user-id", "0"],
            "invalid --user-id \"0\": root",
        ),
        (vec!["build", "--user-id", "65535"], "invalid --user-id"),
        (
            vec!["build", "--user-name", "Bad Name"],
            "invalid --user-name",
        ),
        (vec!["build", "--user-name", "root"], "invalid --user-name"),
        (
            vec!["build", "--target-repo-dir", "srv/repo"],
            "invalid --target-repo-dir \"srv/repo\": must be an absolute path",
        ),
        (
            vec!["build", "--target-repo-dir", "/srv/../etc"],
            "invalid --target-repo-dir",
        ),
        (
            vec!["build", "--target-repo-dir", "/srv/a;b"],
            "invalid --target-repo-dir",
        ),
        (
            vec!["build", "--label", "berth.commit=x"],
            "invalid --label",
        ),
        (vec!["build", "--build-arg", "A-B=1"], "invalid --build-arg"),
        (
            vec!["build", "--subdir", "missing"],
            "--subdir \"missing\": no such folder",
        ),
        (
            vec!["build", "--subdir", "file.txt"],
            "--subdir \"file.txt\": is a file",
        ),
        (vec!["build", "--subdir", "../up"], "--subdir \"../up\""),
        (
            vec!["run", "-e", "JUPYTER_TOKEN=x"],
            "invalid --env \"JUPYTER_TOKEN=x\": berth sets JUPYTER_TOKEN itself",
        ),
        (vec!["run", "-e", "A B=1"], "invalid --env"),
        (
            vec!["run", "-v", "/does/not/exist/berth:/mnt/x"],
            "the host path does not exist",
        ),
        (vec!["run", "-v", "/tmp:relative"], "must be absolute"),
        (
            vec!["run", "-v", &good_volume, "--user-id", "0"],
            "invalid --user-id",
        ),
    ];
    for (mut args, want) in cases {
        let command = args.remove(0);
        let mut full = vec![command, source];
        full.extend(args.iter());
        if command == "run" {
            full.extend(["--", "true"]);
        }
        let out = berth().args(&full).output().expect("berth runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{full:?} succeeded");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{full:?}:\n{stderr}");
        assert!(errors[0].contains(want), "{full:?}: {}", errors[0]);
        assert_eq!(
            stderr.lines().last(),
            Some(errors[0]),
            "{full:?}:\n{stderr}"
        );
    }
    assert!(tags_of(&image_repo(repo.path())).is_empty());
}
