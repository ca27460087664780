//! End to end in a real browser: headless Chromium, driven over WebDriver (chromedriver), fills in
//! `berth serve`'s form, launches the conda fixture through the loading page, lands in JupyterLab
//! behind the proxy and runs a cell there through JupyterLab's own UI.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `scripts/ensure-docker` installs them). Screenshots are kept in
//! `target/tmp/web_browser/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::web::{free_port, WebServer};
use common::{session_leftovers, StopOnDrop};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver in its own process group; dropping it kills the group, so the browsers it
/// started go too, also when the test fails halfway.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts (apt-get install chromium chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session in headless Chromium with its profile in `profile`.
async fn browser(driver: &Chromedriver, profile: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in Chromium");
    client
        .set_window_size(1400, 1000)
        .await
        .expect("window size");
    client
}

/// The text of the first element matching `css`, if there is one.
async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// The first element matching `css`, waiting up to `timeout` for it to be shown.
async fn wait_for(
    c: &Client,
    css: &str,
    timeout: Duration,
) -> Result<fantoccini::elements::Element> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.is_displayed().await.unwrap_or(false) {
                return Ok(e);
            }
        }
        if Instant::now() > deadline {
            bail!("no visible {css} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_browser");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn screenshot(c: &Client, name: &str) -> Option<PathBuf> {
    let png = c.screenshot().await.ok()?;
    let path = shots_dir().join(name);
    std::fs::write(&path, png).ok()?;
    Some(path)
}

/// The form, the loading page and JupyterLab, in order. `session` is set as soon as the browser
/// is in a session, so the caller stops it whatever happens next.
async fn scenario(c: &Client, web: &WebServer, session: &mut Option<StopOnDrop>) -> Result<()> {
    // The form: provider, repository and ref make the launch URL and the badges.
    c.goto(&format!("{}/", web.url))
        .await
        .context("home page")?;
    c.find(Locator::Css("#provider"))
        .await?
        .select_by_value("gh")
        .await
        .context("provider gh")?;
    c.find(Locator::Css("#repository"))
        .await?
        .send_keys("binder-examples/conda")
        .await?;
    c.find(Locator::Css("#ref"))
        .await?
        .send_keys("main")
        .await?;
    let launch_url = text_of(c, "#launch-url").await.unwrap_or_default();
    let expected = format!("{}/v2/gh/binder-examples/conda/main", web.url);
    ensure!(
        launch_url == expected,
        "launch URL {launch_url:?}, expected {expected:?}"
    );
    let badge = text_of(c, "#badge-md").await.unwrap_or_default();
    ensure!(
        badge.contains("badge_logo.svg") && badge.contains(&expected),
        "Markdown badge: {badge:?}"
    );
    c.find(Locator::Css("#launch")).await?.click().await?;

    // The loading page streams the log, then sends the browser to the session: seconds with the
    // image cached, about a minute to build it; more on a fresh machine, where the base image
    // comes first and the other end-to-end tests build at the same time.
    let deadline = Instant::now() + Duration::from_secs(480);
    let mut log = String::new();
    let mut phases: Vec<String> = Vec::new();
    let landed = loop {
        ensure!(
            Instant::now() < deadline,
            "no session after 8 minutes; phases {phases:?}"
        );
        if let Ok(url) = c.current_url().await {
            if url.path().starts_with("/user/") {
                break url;
            }
            if url.path().starts_with("/v2/") {
                if let Some(text) = text_of(c, "#log").await {
                    if text.len() > log.len() {
                        log = text;
                    }
                }
                if let Some(p) = text_of(c, "#phase").await {
                    if phases.last() != Some(&p) {
                        phases.push(p.clone());
                    }
                    ensure!(
                        p != "failed",
                        "the launch failed:\n{}",
                        text_of(c, "#log").await.unwrap_or_default()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = landed
        .path_segments()
        .and_then(|mut s| s.nth(1))
        .filter(|s| !s.is_empty())
        .context("a session id in the URL")?
        .to_string();
    *session = Some(StopOnDrop(id.clone()));
    ensure!(
        log.lines().count() >= 3 && log.contains("Fetching the repository"),
        "the loading page showed no build log: {log:?} (phases {phases:?})"
    );
    ensure!(phases.iter().any(|p| p == "launching"), "phases {phases:?}");
    // The loading page opened `…/lab?token=…` (JupyterLab then takes the token out of the
    // address bar).
    ensure!(
        landed.path() == format!("/user/{id}/lab"),
        "landed on {landed}"
    );

    // JupyterLab, loaded through the proxy: a new notebook from the launcher's Python 3 card.
    let card = wait_for(
        c,
        ".jp-LauncherCard[data-category='Notebook']",
        Duration::from_secs(120),
    )
    .await
    .context("JupyterLab's launcher")?;
    card.click().await?;
    let editor = wait_for(
        c,
        ".jp-NotebookPanel .jp-Cell .jp-InputArea-editor .cm-content",
        Duration::from_secs(60),
    )
    .await
    .context("the notebook's first cell")?;
    // Run the cell once the notebook's kernel is connected and idle, as the status bar says
    // ("Python 3 (ipykernel) | Idle", from JupyterLab's `sessionContext.kernelDisplayStatus`,
    // which reads "Initializing" until the session has a kernel). Not the toolbar's execution
    // indicator: JupyterLab sets it to `idle` when the notebook opens, before any kernel
    // exists, and a Shift+Enter while the notebook's session has no kernel yet is dropped
    // without a trace (`CodeCell.execute` clears the cell and returns). That was this test's
    // lost cell, seen more often once Jupyter started faster: the notebook opened while its
    // kernel was still starting.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = c
            .execute(
                "return [...document.querySelectorAll('.jp-StatusBar-TextItem')].map(e => e.textContent.trim()).join(' / ')",
                vec![],
            )
            .await?;
        let status = status.as_str().unwrap_or_default().to_string();
        if status
            .split(" / ")
            .any(|t| t.starts_with("Python 3") && t.ends_with("| Idle"))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the notebook's kernel is not idle after 60 s (status bar: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    editor.click().await?;
    editor.send_keys("print(6*7)").await?;
    editor.send_keys(&(Key::Shift + &Key::Enter)).await?;
    let out = wait_for(
        c,
        ".jp-NotebookPanel .jp-OutputArea-output",
        Duration::from_secs(120),
    )
    .await
    .with_context(|| "no output after Shift+Enter".to_string())?;
    let text = out.text().await.unwrap_or_default();
    ensure!(text.trim() == "42", "the cell printed {text:?}");
    // Still in the session, through the proxy.
    let url = c.current_url().await?;
    ensure!(
        url.path().starts_with(&format!("/user/{id}/")),
        "left the session: {url}"
    );
    screenshot(c, "jupyterlab.png").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn form_loading_page_and_jupyterlab_in_chromium() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver (scripts/ensure-docker)"
        );
    }
    // Dropped in reverse order: the session, the browser, then the server and git daemon.
    let web = WebServer::start("");
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver, profile.path()).await;
    let mut session: Option<StopOnDrop> = None;

    let result = scenario(&client, &web, &mut session).await;
    if let Err(e) = result {
        let shot = screenshot(&client, "failure.png").await;
        let url = client.current_url().await.map(|u| u.to_string());
        let _ = client.close().await;
        // What Jupyter and the proxy saw, to tell a lost message from a slow kernel.
        let jupyter = session
            .as_ref()
            .map(|s| {
                let out = std::process::Command::new("docker")
                    .args(["logs", "--tail", "60", &format!("berth-{}-session", s.0)])
                    .output();
                out.map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default()
            })
            .unwrap_or_default();
        let server = web.log_text();
        let server_tail: Vec<&str> = server.lines().rev().take(40).collect();
        panic!(
            "{e:#}\n(page {url:?}, screenshot {shot:?})\n--- Jupyter ---\n{jupyter}\n--- berth serve (last lines, newest first) ---\n{}",
            server_tail.join("\n")
        );
    }
    let _ = client.close().await;

    let id = session.as_ref().map(|s| s.0.clone()).unwrap();
    drop(session);
    assert_eq!(
        session_leftovers(&id),
        (0, 0),
        "berth stop {id} left containers or networks"
    );
}
