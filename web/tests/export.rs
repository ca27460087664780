//! `/export/…` in process, with a fake exporter: the `export_url` of `ready` events, one export
//! per image however many clients ask at once (also when the first one leaves), a failed export
//! leaving nothing behind, and the setting being off.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_bundle::{BundleError, ExportOptions, ExportSummary};
use common::*;

/// Writes `BODY` after a pause, counting its exports; fails while `fail` is set.
#[derive(Default)]
struct FakeExporter {
    exports: AtomicUsize,
    fail: AtomicBool,
}

const BODY: &[u8] = b"not really a tar file, but bytes to stream";
const ID: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[async_trait::async_trait]
impl berth_web::Exporter for FakeExporter {
    async fn image_id(&self, _image: &str) -> Result<Option<String>, BundleError> {
        Ok(Some(ID.into()))
    }

    async fn export(
        &self,
        image: &str,
        out: &Path,
        _opts: &ExportOptions,
    ) -> Result<ExportSummary, BundleError> {
        self.exports.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(BundleError::Io {
                path: out.display().to_string(),
                message: "no space left on the device".into(),
            });
        }
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(out, BODY).unwrap();
        Ok(ExportSummary {
            path: out.to_path_buf(),
            bytes: BODY.len() as u64,
            digest: String::new(),
            image: image.into(),
            image_bytes: 0,
            sources_bytes: 0,
            repo_bytes: 0,
            data_bytes: 0,
            unknown: Vec::new(),
            seconds: 0.5,
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_export_per_image_for_token_holders() {
    let cache = std::env::temp_dir().join(format!("berth-web-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // The server's cache folder, as `berth serve` reads it.
    std::env::set_var("BERTH_CACHE_DIR", &cache);
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    *backend.jupyter.lock().unwrap() = Some(jupyter.addr);
    let exporter = Arc::new(FakeExporter::default());
    exporter.fail.store(true, Ordering::SeqCst);
    let cfg = berth_web::Config {
        providers: [("gh".to_string(), "http://127.0.0.1:9".to_string())].into(),
        allow_private_hosts: vec!["127.0.0.1".into()],
        export: true,
        ..berth_web::Config::default()
    };
    let server = Server::start_with_exporter(
        cfg,
        backend.clone(),
        Arc::new(FakeBuilder::default()),
        Some(exporter.clone()),
    )
    .await;
    let c = client();

    let text = c
        .get(format!("{}/build/gh/org/repo/main", server.url))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ev = parse_events(&text);
    let ready = ev.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    let url = ready["export_url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!("{}/export/gh/org/repo/main?token={TOKEN}", server.url)
    );

    // A failed export: 500 with no path in the message, no file left; the next one tries again.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let msg = r.text().await.unwrap();
    assert!(!msg.contains(cache.to_str().unwrap()), "{msg}");
    assert!(!cache
        .join("bundles")
        .join(format!("{}.berth.tar", &ID[7..]))
        .exists());
    exporter.fail.store(false, Ordering::SeqCst);
    exporter.exports.store(0, Ordering::SeqCst);

    // A client that leaves while the export runs, and four that wait for it: one export.
    let leaver = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    leaver.abort();
    let gets = (0..4).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(&url).send().await.unwrap();
            let disposition = r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .to_string();
            (r.status(), disposition, r.bytes().await.unwrap())
        }
    });
    for (status, disposition, body) in futures_util::future::join_all(gets).await {
        assert_eq!(status, 200);
        assert_eq!(body.as_ref(), BODY);
        assert_eq!(
            disposition,
            format!("attachment; filename=\"repo-{}.berth.tar\"", &COMMIT[..12])
        );
    }
    assert_eq!(exporter.exports.load(Ordering::SeqCst), 1);

    // Tokens: another spec, none, a stopped session.
    let other = format!("{}/export/gh/org/other/main?token={TOKEN}", server.url);
    assert_eq!(c.get(&other).send().await.unwrap().status(), 403);
    let plain = url.split_once('?').unwrap().0;
    assert_eq!(c.get(plain).send().await.unwrap().status(), 403);
    let id = berth_launcher::Backend::list(backend.as_ref())
        .await
        .unwrap()[0]
        .id
        .clone();
    backend.remove(&id);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 403);
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_is_off_by_default() {
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    *backend.jupyter.lock().unwrap() = Some(jupyter.addr);
    let cfg = berth_web::Config {
        providers: [("gh".to_string(), "http://127.0.0.1:9".to_string())].into(),
        allow_private_hosts: vec!["127.0.0.1".into()],
        ..berth_web::Config::default()
    };
    let exporter = Arc::new(FakeExporter::default());
    let server = Server::start_with_exporter(
        cfg,
        backend,
        Arc::new(FakeBuilder::default()),
        Some(exporter.clone()),
    )
    .await;
    let c = client();
    let text = c
        .get(format!("{}/build/gh/org/repo/main", server.url))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ev = parse_events(&text);
    let ready = ev.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{ev:?}");
    assert!(ready.get("export_url").is_none(), "{ready}");
    let r = c
        .get(format!(
            "{}/export/gh/org/repo/main?token={TOKEN}",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(exporter.exports.load(Ordering::SeqCst), 0);
}
