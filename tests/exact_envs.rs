//! Exact environments (issue 8): the kernel environment holds the repository's packages and
//! what the preattached cluster needs, nothing else; Jupyter runs from berth's pinned server
//! environment; locks are installed exactly; every image records its packages.
//!
//! Real parts only: the Docker engine, PyPI (through the site's proxy), uv inside berth's own
//! images to make the locks, Jupyter's nbconvert to run notebooks, distributed's own version
//! check.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::web::{events, WebServer};
use common::*;

/// `docker exec -i CONTAINER sh -c SCRIPT` with `stdin`, returning (success, stdout+stderr).
fn exec(container: &str, script: &str, stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["exec", "-i", container, "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A notebook (nbformat 4) with one code cell per entry.
fn notebook(cells: &[&str]) -> String {
    let cells: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| {
            serde_json::json!({"cell_type": "code", "metadata": {}, "source": c,
                               "outputs": [], "execution_count": null})
        })
        .collect();
    serde_json::json!({
        "cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5
    })
    .to_string()
}

/// Executes a notebook in the session's Jupyter container with nbconvert (from the server
/// environment, running the `python3` kernel) and returns the text of every output.
fn run_notebook(container: &str, cells: &[&str]) -> String {
    let (ok, text) = exec(
        container,
        "cat > /tmp/nb.ipynb && jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=120 \
         --output /tmp/out.ipynb /tmp/nb.ipynb >/dev/null 2>/tmp/nbconvert.log; s=$?; \
         [ $s -eq 0 ] && cat /tmp/out.ipynb || { cat /tmp/nbconvert.log; exit $s; }",
        &notebook(cells),
    );
    assert!(ok, "the notebook failed:\n{text}");
    let nb: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = String::new();
    for cell in nb["cells"].as_array().unwrap() {
        for o in cell["outputs"].as_array().unwrap() {
            for key in ["text", "data"] {
                match &o[key] {
                    serde_json::Value::String(s) => out.push_str(s),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .for_each(|l| out.push_str(l.as_str().unwrap_or(""))),
                    serde_json::Value::Object(m) => {
                        if let Some(t) = m.get("text/plain") {
                            match t {
                                serde_json::Value::String(s) => out.push_str(s),
                                serde_json::Value::Array(a) => a
                                    .iter()
                                    .for_each(|l| out.push_str(l.as_str().unwrap_or(""))),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push('\n');
        }
    }
    out
}

fn inspect_json(image: &str) -> serde_json::Value {
    let out = run_berth(&["inspect", image, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `name version` of every package of one environment in an inspect document.
fn package_list(doc: &serde_json::Value, env: &str) -> Vec<(String, String)> {
    doc["packages"][env]
        .as_array()
        .unwrap_or_else(|| panic!("no {env} environment in {doc}"))
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn version_of(list: &[(String, String)], name: &str) -> Option<String> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

const REQUESTS_ONLY: &[(&str, &str)] = &[("requirements.txt", "requests==2.32.3\n")];

#[test]
fn a_repository_that_asks_for_requests_gets_requests_and_the_cluster_only() {
    let repo = repo_with(REQUESTS_ONLY);
    let built = build(repo.path(), &[]);
    let image = built.image.as_str();

    // The kernel environment: what the repository asked for, the cluster's packages and pip.
    let probe = in_image(
        image,
        "python -c 'import requests, distributed, ipykernel; print(requests.__version__)'; \
         for m in numpy bokeh jupyterlab jupyter_server; do python -c \"import $m\" 2>/dev/null && echo \"$m present\" || echo \"$m absent\"; done; \
         pip --version; command -v jupyter-lab",
    );
    assert!(probe.starts_with("2.32.3\n"), "{probe}");
    for m in ["numpy", "bokeh", "jupyterlab", "jupyter_server"] {
        assert!(probe.contains(&format!("{m} absent")), "{probe}");
    }
    assert!(
        probe.contains("/srv/venv/lib/python"),
        "pip is the kernel's: {probe}"
    );
    assert!(probe.contains("/srv/server/bin/jupyter-lab"), "{probe}");

    // The record: both environments, pinned by the label's digest.
    let doc = inspect_json(image);
    assert_eq!(doc["verified"], true, "{doc}");
    assert_eq!(doc["commit"], built.commit.as_str());
    assert_eq!(doc["env_hash"], built.env_hash.as_str());
    let kernel = package_list(&doc, "kernel");
    assert_eq!(version_of(&kernel, "requests").as_deref(), Some("2.32.3"));
    for absent in ["numpy", "bokeh", "jupyterlab"] {
        assert_eq!(version_of(&kernel, absent), None, "{absent} in the kernel");
    }
    let server = package_list(&doc, "server");
    for present in [
        "jupyterlab",
        "jupyter-server",
        "dask-labextension",
        "jupyter-server-proxy",
    ] {
        assert!(
            version_of(&server, present).is_some(),
            "{present} not in the server"
        );
    }
    // The server environment is the lock berth ships, exactly.
    let lock = berth_buildpacks::server_lock("3.11").unwrap();
    for (name, version) in &server {
        assert!(
            lock.contains(&format!("\n{name}=={version} "))
                || lock.starts_with(&format!("{name}=={version} ")),
            "{name} {version} is not what the server lock pins"
        );
    }
    let dashboard = package_list(&doc, "dashboard");
    assert!(version_of(&dashboard, "bokeh").is_some(), "{dashboard:?}");
    assert!(
        dashboard
            .iter()
            .all(|(n, _)| version_of(&kernel, n).is_none()),
        "the dashboard folder repeats kernel packages: {dashboard:?}"
    );

    // A session: JupyterLab runs, the cluster is the kernel's, the dashboard answers directly
    // and through Jupyter's proxy with the token.
    let s = launch(repo.path(), &[]);
    let _stop = StopOnDrop(s.session.clone());
    let jupyter = format!("berth-{}-session", s.session);
    let base = s.url.split("lab?").next().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Redirects are not followed: Jupyter sends a request without its token to the login page.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: String, token: Option<&str>| {
        rt.block_on(async {
            let url = match token {
                Some(t) => format!("{url}?token={t}"),
                None => url,
            };
            let resp = client.get(url).send().await.unwrap();
            let status = resp.status();
            (status, resp.text().await.unwrap_or_default())
        })
    };
    let (status, _) = get(s.dashboard_url.clone().unwrap(), None);
    assert_eq!(status, 200);
    let (status, plots) = get(
        format!("{base}proxy/scheduler:8787/individual-plots.json"),
        Some(&s.token),
    );
    assert_eq!(status, 200);
    assert!(plots.contains("Individual Task Stream"), "{plots}");
    let (status, _) = get(format!("{base}proxy/scheduler:8787/status"), None);
    assert!(
        status.is_redirection() || status == 403,
        "the dashboard proxy needs the token: {status}"
    );
    let (status, specs) = get(format!("{base}api/kernelspecs"), Some(&s.token));
    assert_eq!(status, 200);
    let specs: serde_json::Value = serde_json::from_str(&specs).unwrap();
    assert_eq!(
        specs["kernelspecs"]["python3"]["spec"]["argv"][0],
        "/srv/venv/bin/python"
    );

    let (ok, text) = exec(
        &jupyter,
        "python -W error -c \"from distributed import Client; c = Client(); c.get_versions(check=True); \
         print('workers', len(c.scheduler_info()['workers'])); print('sum', c.submit(sum, [1, 2]).result()); print(c.dashboard_link)\"",
        "",
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("workers 2") && text.contains("sum 3"),
        "{text}"
    );
    assert!(text.contains("proxy/scheduler:8787/status"), "{text}");

    // Notebooks written for a laptop run unchanged; Client() uses the session's cluster.
    let local = run_notebook(
        &jupyter,
        &[
            "from distributed import Client\nclient = Client(n_workers=4, threads_per_worker=1)",
            "print('local workers', len(client.scheduler_info()['workers']))\nprint('sum', client.submit(sum, [2, 3]).result())",
        ],
    );
    assert!(local.contains("local workers 4"), "{local}");
    assert!(local.contains("sum 5"), "{local}");
    assert!(
        local.contains("starts a local Dask cluster in this kernel"),
        "{local}"
    );
    let session = run_notebook(
        &jupyter,
        &[
            "from distributed import Client\nclient = Client()",
            "print('address', client.scheduler.address)\nprint('workers', len(client.scheduler_info()['workers']))\nprint('sum', client.submit(sum, [4, 5]).result())",
        ],
    );
    assert!(
        session.contains("address tcp://scheduler:8786"),
        "{session}"
    );
    assert!(
        session.contains("workers 2") && session.contains("sum 9"),
        "{session}"
    );

    // repo2docker's conventions: pip --user works and its console scripts are on PATH; the
    // working directory is $REPO_DIR.
    let (ok, text) = exec(
        &jupyter,
        "pip install --quiet --user cowsay==6.1 && command -v cowsay && cowsay -t moo && pwd",
        "",
    );
    assert!(ok, "{text}");
    assert!(text.contains("/home/jovyan/.local/bin/cowsay"), "{text}");
    assert!(
        text.contains("moo") && text.trim_end().ends_with("/home/jovyan"),
        "{text}"
    );
}

#[test]
fn the_dashboard_answers_through_berth_serve_with_the_token() {
    let repo = repo_with(REQUESTS_ONLY);
    let server = WebServer::start("");
    server.serve_repo("requests-only", repo.path());
    let spec = format!(
        "git/{}/HEAD",
        percent_encoding::utf8_percent_encode(
            &format!("{}/local/requests-only", server.git_url),
            percent_encoding::NON_ALPHANUMERIC
        )
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let events = {
        let _g = build_lock();
        rt.block_on(events(&client, &format!("{}/build/{spec}", server.url)))
    };
    let ready = events
        .iter()
        .find(|e| e["phase"] == "ready")
        .unwrap_or_else(|| panic!("no ready event: {events:?}"));
    let url = ready["url"].as_str().unwrap();
    let token = ready["token"].as_str().unwrap();
    let session = session_of_url(url);
    let _stop = StopOnDrop(session);
    let plots = rt.block_on(async {
        client
            .get(format!(
                "{url}proxy/scheduler:8787/individual-plots.json?token={token}"
            ))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(plots.status(), 200, "{}", server.log_text());
    let status = rt.block_on(async {
        client
            .get(format!("{url}proxy/scheduler:8787/status"))
            .header("Authorization", format!("token {token}"))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(status.status(), 200);
    assert!(rt.block_on(status.text()).unwrap().contains("bokeh"));
    let anonymous = rt.block_on(async {
        client
            .get(format!("{url}proxy/scheduler:8787/status"))
            .send()
            .await
            .unwrap()
    });
    assert_ne!(anonymous.status(), 200, "no token, no dashboard");
}

/// Runs `sh -c SCRIPT` as root in a container of a berth image with `dir` at /w (uv is in
/// every berth image, with the site's CA bundle).
fn uv_in(image: &str, dir: &Path, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--user",
        "0:0",
        "-v",
        &format!("{}:/w", dir.display()),
        "-w",
        "/w",
        "-e",
        "UV_CACHE_DIR=/tmp/uv",
        image,
        "sh",
        "-c",
        script,
    ])
}

fn commit_all(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

/// `berth build SOURCE --json`, which must succeed: its outcome and its stderr (warnings).
fn build_with_log(source: &Path) -> (Built, String) {
    let _g = build_lock();
    let out = run_berth(&["build", source.to_str().unwrap(), "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

fn build_fails(source: &Path) -> String {
    let _g = build_lock();
    let out = run_berth(&["build", source.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build passed:\n{stderr}");
    stderr
}

fn error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    errors[0].to_string()
}

#[test]
fn locks_are_installed_exactly_and_bad_locks_fail_with_one_line() {
    // Any berth image carries uv: make the locks with it, from PyPI.
    let tool = build(repo_with(REQUESTS_ONLY).path(), &[]).image;

    // uv.lock with its pyproject.toml.
    let uv = repo_with(&[(
        "pyproject.toml",
        "[project]\nname = \"demo\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\ndependencies = [\"six==1.16.0\", \"idna==3.7\"]\n",
    )]);
    uv_in(&tool, uv.path(), "uv lock --quiet");
    commit_all(uv.path(), "lock");
    let (built, stderr) = build_with_log(uv.path());
    assert!(
        stderr.contains("uv.lock does not lock ipykernel, dask, distributed, pip"),
        "{stderr}"
    );
    assert_eq!(built.buildpack, "uv-lock");
    let kernel = package_list(&inspect_json(&built.image), "kernel");
    assert_eq!(version_of(&kernel, "six").as_deref(), Some("1.16.0"));
    assert_eq!(version_of(&kernel, "idna").as_deref(), Some("3.7"));
    assert!(version_of(&kernel, "distributed").is_some());

    // An out-of-date uv.lock is refused, naming the file.
    std::fs::write(
        uv.path().join("pyproject.toml"),
        "[project]\nname = \"demo\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\ndependencies = [\"six==1.16.0\", \"idna==3.6\"]\n",
    )
    .unwrap();
    commit_all(uv.path(), "stale");
    let line = error_line(&build_fails(uv.path()));
    assert!(
        line.contains("uv.lock") && line.contains("needs to be updated"),
        "{line}"
    );

    // pylock.toml (PEP 751), every package at its locked version.
    let pl = repo_with(&[("requirements.in", "six==1.16.0\nattrs==23.2.0\n")]);
    uv_in(
        &tool,
        pl.path(),
        "uv pip compile --quiet --format pylock.toml --python /srv/venv/bin/python requirements.in -o pylock.toml && rm requirements.in",
    );
    commit_all(pl.path(), "pylock");
    let built = build(pl.path(), &[]);
    assert_eq!(built.buildpack, "pylock");
    let kernel = package_list(&inspect_json(&built.image), "kernel");
    assert_eq!(version_of(&kernel, "six").as_deref(), Some("1.16.0"));
    assert_eq!(version_of(&kernel, "attrs").as_deref(), Some("23.2.0"));

    // A hash that does not match: one line naming the lock and the package, no image.
    let text = std::fs::read_to_string(pl.path().join("pylock.toml")).unwrap();
    // Every hash of six (its wheel's and its sdist's) wrong, so no file of it can match.
    let six_at = text.find("name = \"six\"").unwrap();
    let six_end = text[six_at..]
        .find("[[packages]]")
        .map(|i| six_at + i)
        .unwrap_or(text.len());
    let mut bad = text[..six_at].to_string();
    let mut block = &text[six_at..six_end];
    while let Some(i) = block.find("sha256 = \"") {
        let start = i + "sha256 = \"".len();
        bad.push_str(&block[..start]);
        bad.push_str(&"0".repeat(64));
        block = &block[start + 64..];
    }
    bad.push_str(block);
    bad.push_str(&text[six_end..]);
    assert_ne!(bad, text);
    std::fs::write(pl.path().join("pylock.toml"), bad).unwrap();
    commit_all(pl.path(), "bad hash");
    let tree = git(pl.path(), &["rev-parse", "HEAD^{tree}"]);
    // The build lock is held throughout, so no other build of this run adds images meanwhile.
    let guard = build_lock();
    let images_before = images_with_ids();
    let out = run_berth(&["build", pl.path().to_str().unwrap()]);
    assert!(!out.status.success(), "the build passed");
    let line = error_line(&String::from_utf8_lossy(&out.stderr));
    assert!(
        line.contains("pylock.toml") && line.contains("six"),
        "{line}"
    );
    assert!(line.to_lowercase().contains("hash"), "{line}");
    let left = image_difference(&images_before, &images_with_ids());
    assert!(
        left.is_empty(),
        "the failed build changed the images:\n{left}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(guard);
    assert!(
        !docker(&["images", "-q", &format!("berth/*:{}", &tree.trim()[..12])])
            .contains(char::is_alphanumeric)
    );

    // A locked package that is not on the index.
    let missing = text
        .replace("name = \"six\"", "name = \"six-not-on-any-index\"")
        .replace(
            "six-1.16.0-py2.py3-none-any.whl",
            "six_not_on_any_index-1.16.0-py2.py3-none-any.whl",
        );
    std::fs::write(pl.path().join("pylock.toml"), missing).unwrap();
    commit_all(pl.path(), "missing package");
    let line = error_line(&build_fails(pl.path()));
    assert!(
        line.contains("pylock.toml") && line.contains("six-not-on-any-index"),
        "{line}"
    );

    // A lock for another platform only: refused before any build step.
    std::fs::write(
        pl.path().join("pylock.toml"),
        "lock-version = \"1.0\"\ncreated-by = \"test\"\n[[packages]]\nname = \"numpy\"\nversion = \"2.2.2\"\nwheels = [{ name = \"numpy-2.2.2-cp311-cp311-win_amd64.whl\", url = \"https://files.pythonhosted.org/packages/x/numpy-2.2.2-cp311-cp311-win_amd64.whl\", hashes = { sha256 = \"00\" } }]\n",
    )
    .unwrap();
    commit_all(pl.path(), "windows lock");
    let line = error_line(&build_fails(pl.path()));
    assert!(
        line.contains("pylock.toml: numpy 2.2.2 has no wheel for Linux x86_64"),
        "{line}"
    );
}

#[test]
fn hashed_requirements_are_installed_with_hashes_required() {
    let tool = build(repo_with(REQUESTS_ONLY).path(), &[]).image;
    let r = repo_with(&[("requirements.in", "six==1.16.0\n")]);
    uv_in(
        &tool,
        r.path(),
        "uv pip compile --quiet --generate-hashes --python /srv/venv/bin/python requirements.in -o requirements.txt && rm requirements.in",
    );
    let text = std::fs::read_to_string(r.path().join("requirements.txt")).unwrap();
    assert!(text.contains("--hash=sha256:"), "{text}");
    let at = text.find("--hash=sha256:").unwrap() + "--hash=sha256:".len();
    let mut bad = text.clone();
    bad.replace_range(at..at + 64, &"f".repeat(64));
    // Every hash of six wrong: no wheel can match.
    let bad = bad
        .lines()
        .map(|l| match l.trim_start().strip_prefix("--hash=sha256:") {
            Some(_) => {
                "    --hash=sha256:".to_string()
                    + &"f".repeat(64)
                    + if l.ends_with('\\') { " \\" } else { "" }
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(r.path().join("requirements.txt"), &bad).unwrap();
    commit_all(r.path(), "bad hashes");
    let line = error_line(&build_fails(r.path()));
    assert!(
        line.contains("requirements.txt") && line.contains("six"),
        "{line}"
    );

    std::fs::write(r.path().join("requirements.txt"), &text).unwrap();
    commit_all(r.path(), "hashes");
    let (built, stderr) = build_with_log(r.path());
    assert!(
        stderr.contains("requirements.txt does not lock ipykernel"),
        "{stderr}"
    );
    let kernel = package_list(&inspect_json(&built.image), "kernel");
    assert_eq!(version_of(&kernel, "six").as_deref(), Some("1.16.0"));
}

#[test]
fn the_conda_fixture_is_inspected_and_locked_into_an_identical_kernel() {
    let fixture = fixture("conda");
    let built = build(&fixture, &[]);
    let doc = inspect_json(&built.image);
    assert_eq!(doc["buildpack"], "conda");
    assert_eq!(doc["python_requested"], "3.11");
    assert!(
        doc["python_actual"].as_str().unwrap().starts_with("3.11."),
        "{doc}"
    );
    let kernel = package_list(&doc, "kernel");
    let imported = in_image(
        &built.image,
        "python -c 'import numpy; print(numpy.__version__)'",
    );
    assert_eq!(
        version_of(&kernel, "numpy").as_deref(),
        Some(imported.trim())
    );

    // berth lock, committed, builds the same kernel environment from the lock.
    let clone = clone_fixture("conda");
    let work = clone.path().join("repo");
    // `berth lock SOURCE` builds the clone's image first: it holds the build lock as every
    // build of this run does, or the failed-build test would see its image appear.
    let out = {
        let _g = build_lock();
        run_berth(&[
            "lock",
            work.to_str().unwrap(),
            "-o",
            work.join("pylock.toml").to_str().unwrap(),
        ])
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    commit_all(&work, "lock the environment");
    let (locked, stderr) = build_with_log(&work);
    assert!(
        !stderr.contains("does not lock"),
        "the lock has everything: {stderr}"
    );
    assert_eq!(locked.buildpack, "pylock");
    assert_eq!(package_list(&inspect_json(&locked.image), "kernel"), kernel);
}

#[test]
fn a_repository_that_pins_jupyterlab_3_gets_it_as_its_server() {
    // As tutorial repositories do: an old JupyterLab with the Dask extension of its time.
    let repo = repo_with(&[(
        "environment.yml",
        "channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - jupyterlab=3\n  - dask-labextension=6\n",
    )]);
    let (built, stderr) = build_with_log(repo.path());
    assert!(
        stderr.contains("asks for Jupyter server packages itself (dask-labextension, jupyterlab)"),
        "{stderr}"
    );
    let probe = in_image(
        &built.image,
        "jupyter lab --version; command -v jupyter-lab; test -d /srv/server && echo 'berth server' || echo 'no berth server'",
    );
    assert!(probe.starts_with("3."), "{probe}");
    assert!(
        probe.contains("/srv/venv/bin/jupyter-lab") && probe.contains("no berth server"),
        "{probe}"
    );
    let doc = inspect_json(&built.image);
    assert!(doc["packages"]["server"].is_null(), "{doc}");
    let kernel = package_list(&doc, "kernel");
    assert!(version_of(&kernel, "jupyterlab").unwrap().starts_with("3."));
    assert!(version_of(&kernel, "dask-labextension")
        .unwrap()
        .starts_with("6."));

    // The session runs that JupyterLab, and its dashboard opens through it.
    let s = launch(repo.path(), &["--workers", "1"]);
    let _stop = StopOnDrop(s.session.clone());
    let base = s.url.split("lab?").next().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::get(format!(
            "{base}proxy/scheduler:8787/individual-plots.json?token={}",
            s.token
        ))
        .await
        .unwrap()
        .status()
    });
    assert_eq!(status, 200);
}
