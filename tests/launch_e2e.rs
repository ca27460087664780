//! End to end: sessions with a Dask cluster (`berth launch`, `run`, `ls`, `scale`, `stop`,
//! `logs`, `cull`) on the real Docker engine and the real fixture repositories.

mod common;

use common::kernel::{execute, server_of};
use common::*;

const CLUSTER_CHECK: &str = r#"
from distributed import Client
import dask.array as da
c = Client()
n = len(c.scheduler_info()["workers"])
total = int(da.ones((2000, 2000), chunks=(250, 250)).sum().compute())
assert total == 4_000_000, total
print("WORKERS", n, "TOTAL", total)
"#;

#[test]
fn run_attaches_the_cluster_and_passes_the_exit_status() {
    let conda = fixture("conda");
    let out = {
        let _g = build_lock();
        berth()
            .args(["run", conda.to_str().unwrap(), "--workers", "2", "--", "python", "-c"])
            .arg(format!(
                "{CLUSTER_CHECK}\nassert n == 2, n\nimport os\nprint('TOKEN_SET', bool(os.environ.get('JUPYTER_TOKEN')))"
            ))
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("WORKERS 2 TOTAL 4000000"), "{stdout}");

    let out = {
        let _g = build_lock();
        berth()
            .args([
                "run",
                conda.to_str().unwrap(),
                "--workers",
                "1",
                "--",
                "python",
                "-c",
            ])
            .arg("import sys; print('failing on purpose'); sys.exit(3)")
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("failing on purpose"));
    // Everything `run` started is gone.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("berth: session ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("run names its session:\n{stderr}"));
    assert_eq!(session_leftovers(id), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_execute_scale_kill_and_stop() {
    let conda = fixture("conda");
    let launched = tokio::task::spawn_blocking(move || {
        launch(
            &conda,
            &["--workers", "2", "--memory", "3G", "--cpus", "1.5"],
        )
    })
    .await
    .unwrap();
    let _stop = StopOnDrop(launched.session.clone());
    assert_eq!(launched.workers, 2);

    // Every container: non-root, no capabilities, no new privileges, limits.
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.session={}", launched.session),
    ]);
    assert_eq!(ids.lines().count(), 4, "session, scheduler and 2 workers");
    for id in ids.lines() {
        let fmt = "{{.Config.User}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} \
                   {{.HostConfig.PidsLimit}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}";
        let got = docker(&["inspect", "--format", fmt, id]);
        assert_eq!(
            got.split_whitespace().collect::<Vec<_>>(),
            [
                "1000:1000",
                "[\"ALL\"]",
                "[\"no-new-privileges\"]",
                "4096",
                "3221225472",
                "1500000000"
            ],
            "{got}"
        );
    }
    assert_eq!(launched.token.len(), 32);
    assert!(
        launched.url.starts_with("http://127.0.0.1:"),
        "{}",
        launched.url
    );
    let (base, token) = server_of(&launched.url, "lab");
    assert_eq!(token, launched.token);

    // Jupyter refuses requests without the token.
    let anon = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = anon
        .get(format!("{base}api/kernels"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 403);

    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(
        cell.output.contains("WORKERS 2 TOTAL 4000000"),
        "{}",
        cell.output
    );

    // The dashboard is reachable from the host.
    let dash = launched.dashboard_url.clone().expect("a dashboard");
    let counts: serde_json::Value = anon
        .get(dash.replace("/status", "/json/counts.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["workers"], 2);

    let session = launched.session.clone();
    let scale = |n: &'static str| {
        let s = session.clone();
        tokio::task::spawn_blocking(move || run_berth(&["scale", &s, n]))
    };
    let out = scale("3").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert!(cell.output.contains("WORKERS 3 "), "{cell:?}");

    // A worker killed from outside: the session keeps working, and ls says so.
    let worker = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.session={session}"),
        "--filter",
        "label=berth.role=worker",
    ]);
    let victim = worker.lines().next().unwrap().to_string();
    docker(&["kill", &victim]);
    let entry = tokio::task::spawn_blocking({
        let s = session.clone();
        move || ls_session(&s)
    })
    .await
    .unwrap();
    assert_eq!(entry["status"], "degraded");
    assert_eq!(entry["workers"], 2);
    assert_eq!(entry["workers_wanted"], 3);
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("TOTAL 4000000"), "{}", cell.output);

    let out = scale("1").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cell = execute(&base, &token, CLUSTER_CHECK).await;
    assert!(cell.output.contains("WORKERS 1 "), "{cell:?}");
    let entry = tokio::task::spawn_blocking({
        let s = session.clone();
        move || ls_session(&s)
    })
    .await
    .unwrap();
    assert_eq!(entry["status"], "running");

    // Bad scale requests change nothing.
    let out = scale("99").await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the maximum is 16"));
    let out = scale("-1").await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be 0 or more"));

    let logs = run_berth(&["logs", &session]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("-scheduler | "));

    let out = run_berth(&["stop", &session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(session_leftovers(&session), (0, 0));
    let out = run_berth(&["stop", &session]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session"));
}

#[tokio::test(flavor = "multi_thread")]
async fn new_commit_launches_without_environment_build() {
    let dir = clone_fixture("conda");
    let repo = dir.path().join("repo");
    let nb = std::fs::read_to_string(repo.join("index.ipynb")).unwrap();
    let marker = "berth-launch-notebook-only-5c1e";
    std::fs::write(
        repo.join("index.ipynb"),
        nb.replacen(
            "## Setup plotting",
            &format!("## Setup plotting {marker}"),
            1,
        ),
    )
    .unwrap();
    std::fs::write(repo.join("berthmod.py"), "def answer():\n    return 42\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "notebook edit and a module"]);

    let base_env = build(&fixture("conda"), &[]).env_hash;
    let built = build(&repo, &[]);
    assert_eq!(built.env_hash, base_env);
    assert!(
        built.cached_env,
        "a content-only commit must not build the environment"
    );

    let launched = tokio::task::spawn_blocking({
        let repo = repo.clone();
        move || launch(&repo, &["--workers", "1", "--labpath", "index.ipynb"])
    })
    .await
    .unwrap();
    let _stop = StopOnDrop(launched.session.clone());
    assert!(
        launched.url.contains("/lab/tree/index.ipynb?token="),
        "{}",
        launched.url
    );
    let (base, token) = server_of(&launched.url, "lab/tree/index.ipynb");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let nb: serde_json::Value = client
        .get(format!("{base}api/contents/index.ipynb"))
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(nb["content"].to_string().contains(marker));
    // Workers run the same image, so they import the repository's own modules.
    let cell = execute(
        &base,
        &token,
        "from distributed import Client\nimport berthmod\nprint('ANSWER', Client().submit(berthmod.answer).result())",
    )
    .await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("ANSWER 42"), "{}", cell.output);
}

#[test]
fn cull_stops_idle_sessions_only() {
    let launched = launch(&fixture("conda"), &["--workers", "0"]);
    let _stop = StopOnDrop(launched.session.clone());
    let out = run_berth(&["cull", "--max-idle", "1h", &launched.session]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&launched.session));
    assert_eq!(ls_session(&launched.session)["status"], "running");
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Only this test's session: the other tests' sessions run in parallel.
    let out = run_berth(&["cull", "--max-idle", "1s", &launched.session]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&launched.session));
    assert_eq!(session_leftovers(&launched.session), (0, 0));
}

#[test]
fn scale_fails_clearly_when_the_image_vanished() {
    // A private copy of the image, so removing it disturbs no other test.
    let built = build(&fixture("setup.py"), &[]);
    let private = format!("berth-test/vanishing:{}", std::process::id());
    docker(&["tag", &built.image, &private]);
    let out = {
        let _g = build_lock();
        run_berth(&[
            "launch",
            fixture("setup.py").to_str().unwrap(),
            "--image-name",
            &private,
            "--workers",
            "1",
            "--json",
        ])
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launched: Launched = serde_json::from_slice(&out.stdout).unwrap();
    let _stop = StopOnDrop(launched.session.clone());
    docker(&["rmi", "-f", &private]);
    let out = run_berth(&["scale", &launched.session, "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("image {private} does not exist")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_workers_come_for_work_and_go_when_idle() {
    adaptive_cycle(&[]).await;
}
