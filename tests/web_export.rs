//! End to end: `berth serve` with `export: true` offers a launched environment for download as
//! a berth bundle (`/export/<provider>/<spec>`), to holders of that session's token only; with
//! the real Docker engine and the real fixture repositories behind a loopback `git daemon`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::web::{events, WebServer};
use common::*;
use futures_util::StreamExt;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Launches `/build/<spec>` to `ready`; the ready event and a guard stopping the session.
async fn launch(
    c: &reqwest::Client,
    web: &WebServer,
    spec: &str,
) -> (serde_json::Value, StopOnDrop) {
    let ev = events(c, &format!("{}/build/{spec}", web.url)).await;
    let ready = ev.last().cloned().unwrap_or_default();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    let session = session_of_url(ready["url"].as_str().unwrap());
    (ready, StopOnDrop(session))
}

/// What a download gave.
struct Download {
    status: reqwest::StatusCode,
    headers: reqwest::header::HeaderMap,
    /// Bytes of the body read.
    bytes: u64,
    /// Whether the body equals the file `expected`, byte for byte and in length.
    same: bool,
}

/// Downloads `url` (with `auth` as an `Authorization` header), comparing the body with the
/// file `expected` as it arrives, so no copy of a large file touches the disk. The body is read
/// only on 200: once the response has started, the server's export is complete.
async fn download(c: &reqwest::Client, url: &str, auth: Option<&str>, expected: &Path) -> Download {
    let mut req = c.get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let (mut bytes, mut same) = (0u64, false);
    if status == 200 {
        let mut f = std::fs::File::open(expected).unwrap();
        let mut buf = Vec::new();
        same = true;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            buf.resize(chunk.len(), 0);
            if same && (f.read_exact(&mut buf).is_err() || buf[..] != chunk[..]) {
                same = false;
            }
            bytes += chunk.len() as u64;
        }
        same = same && f.read(&mut [0u8; 1]).unwrap() == 0;
    }
    Download {
        status,
        headers,
        bytes,
        same,
    }
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The server's cache file of `image`'s bundle.
fn cached_bundle(image: &str) -> PathBuf {
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
    let hex = id.trim().trim_start_matches("sha256:").to_string();
    cache_dir().join("bundles").join(format!("{hex}.berth.tar"))
}

/// The status of a GET of `url` with no token, a wrong one, or `token`.
async fn status(c: &reqwest::Client, url: &str) -> reqwest::StatusCode {
    c.get(url).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread")]
async fn launched_environments_download_as_bundles_for_their_token_holders() {
    let started = std::time::Instant::now();
    let web = WebServer::start("export: true\n");
    let c = client();
    let spec = "gh/binder-examples/setup.py/master";
    let other_spec = "gh/binder-examples/conda/main";
    let ((ready, stop), (other, _stop_other)) =
        tokio::join!(launch(&c, &web, spec), launch(&c, &web, other_spec));
    eprintln!("launched: {:.0} s", started.elapsed().as_secs_f64());
    let token = ready["token"].as_str().unwrap().to_string();
    let other_token = other["token"].as_str().unwrap().to_string();
    let image = ready["image"].as_str().unwrap().to_string();
    let persistent = ready["binder_persistent_request"].as_str().unwrap();
    let commit = persistent.rsplit('/').next().unwrap().to_string();
    assert_eq!(commit.len(), 40, "{persistent}");

    // The ready event offers the download, with the session's token.
    let export_url = ready["export_url"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        export_url,
        format!("{}/export/{spec}?token={token}", web.url),
        "{ready}"
    );
    let plain_url = export_url.split_once('?').unwrap().0.to_string();
    let cached = cached_bundle(&image);
    let fresh = !cached.exists();

    // Two downloads at once: one export, both complete, byte-identical to each other and to
    // the server's cache file (the second one with the token in the Authorization header).
    let auth = format!("token {token}");
    let (d1, d2) = tokio::join!(
        download(&c, &export_url, None, &cached),
        download(&c, &plain_url, Some(&auth), &cached)
    );
    assert_eq!((d1.status.as_u16(), d2.status.as_u16()), (200, 200));
    let size = std::fs::metadata(&cached).unwrap().len();
    for d in [&d1, &d2] {
        let h = &d.headers;
        assert_eq!(header(h, "content-type"), "application/x-tar");
        assert_eq!(header(h, "content-length"), size.to_string());
        assert_eq!(
            header(h, "content-disposition"),
            format!(
                "attachment; filename=\"setup.py-{}.berth.tar\"",
                &commit[..12]
            )
        );
        assert_eq!(d.bytes, size);
        assert!(d.same, "a download differs from the exported file");
    }
    eprintln!(
        "downloaded {size} bytes twice (exported: {fresh}): {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The file is a bundle of the session's image at the ready event's commit.
    let verified = berth_bundle::verify(&cached, &mut |_| {}).expect("a valid bundle");
    let m = &verified.manifest;
    assert_eq!(m.image.name, image);
    assert_eq!(
        m.repo.as_ref().map(|r| r.commit.as_str()),
        Some(commit.as_str())
    );
    assert!(
        m.parts_of("repo").next().is_some(),
        "no git bundle: unknown {:?}",
        m.unknown
    );
    drop(verified);

    // Tokens: none, another session's (of another spec), a made-up one; the other session's
    // token opens its own spec's download only.
    assert_eq!(status(&c, &plain_url).await, 403);
    assert_eq!(
        status(&c, &format!("{plain_url}?token={other_token}")).await,
        403
    );
    let wrong = c
        .get(&plain_url)
        .header("Authorization", format!("token {other_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert!(wrong.text().await.unwrap().contains("token"));
    assert_eq!(status(&c, &format!("{plain_url}?token=0000")).await, 403);
    assert_eq!(
        status(
            &c,
            &format!("{}/export/{other_spec}?token={token}", web.url)
        )
        .await,
        403
    );
    // A spec that does not resolve is refused as by /build.
    assert_eq!(
        status(&c, &format!("{}/export/gh/x?token={token}", web.url)).await,
        400
    );

    // A client that leaves midway does not hurt the server.
    let resp = c.get(&export_url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = 0;
    while got < (4 << 20) {
        got += body.next().await.unwrap().unwrap().len();
    }
    drop(body);
    let health = c.get(format!("{}/health", web.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let again = c.get(&export_url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(header(again.headers(), "content-length"), size.to_string());
    drop(again);

    // Metrics, and the token never in the log.
    let metrics = c
        .get(format!("{}/metrics", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if fresh {
        assert!(
            metrics.contains("berth_exports_total{status=\"success\"} 1"),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("berth_export_downloads_total"),
        "{metrics}"
    );
    let log = web.log_text();
    assert!(log.contains("export"), "{log}");
    assert!(!log.contains(&token), "the token is in the log:\n{log}");

    // Once the session is stopped, its token downloads nothing.
    drop(stop);
    assert_eq!(status(&c, &export_url).await, 403);
    let _ = std::fs::remove_file(&cached);
    eprintln!("export test: {:.0} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_setting_there_is_no_export() {
    let web = WebServer::start("");
    let c = client();
    let resp = c
        .get(format!(
            "{}/export/gh/binder-examples/setup.py/master?token=abc",
            web.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("export: true"));
}
