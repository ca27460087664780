//! The `data=NAME[@VERSION]` launch parameter and a repository's `berth-data.txt` on the
//! server's launch path, in process with a fake builder and backend, and a real data library
//! holding a fixture NetCDF file.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;

/// A library in a temporary folder with `sst` (the fixture's sea surface temperature).
fn library() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let lib = berth_data::Library::open(dir.path()).unwrap();
    let nc =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/data/sst_ndjfm_anom.nc");
    let v = lib
        .add("sst", &[nc], berth_data::IngestOptions::default(), &|_| {})
        .unwrap();
    (dir, v.id().to_string())
}

fn config(dir: &Path) -> berth_web::Config {
    berth_web::Config {
        data_dir: Some(dir.to_path_buf()),
        // The fake builder's repository: a closed port on loopback, which this allows.
        allow_private_hosts: vec!["127.0.0.1".into()],
        ..berth_web::Config::default()
    }
}

async fn events(server: &Server, query: &str) -> (u16, Vec<serde_json::Value>) {
    let r = client()
        .get(format!(
            "{}/build/git/http%3A%2F%2F127.0.0.1%3A9%2Frepo.git/main?{query}",
            server.url
        ))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    if status != 200 {
        return (status, vec![serde_json::json!({ "body": text })]);
    }
    (status, parse_events(&text))
}

#[tokio::test(flavor = "multi_thread")]
async fn data_parameters_mount_exact_versions_and_unknown_ones_fail_before_the_build() {
    let (dir, sst) = library();
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    *backend.jupyter.lock().unwrap() = Some(jupyter.addr);
    let builder = Arc::new(FakeBuilder::default());
    let server = Server::start(config(dir.path()), backend.clone(), builder.clone()).await;

    // Repeated and comma-separated, with a version prefix: one mount, the exact version.
    let (_, ev) = events(&server, &format!("data=sst&data=sst%40{}", &sst[..6])).await;
    assert_eq!(ev.last().unwrap()["phase"], "ready", "{ev:?}");
    let specs = backend.specs.lock().unwrap().clone();
    let data = &specs.last().unwrap().data;
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].name, "sst");
    assert_eq!(data[0].version, sst);
    let store = dir
        .path()
        .join("versions")
        .join(&sst)
        .canonicalize()
        .unwrap();
    assert_eq!(Path::new(&data[0].source), store);

    // An unknown data set: an error event before any build starts; nothing launched.
    let started = builder.started.load(Ordering::SeqCst);
    let (status, ev) = events(&server, "data=sst,nope").await;
    assert_eq!(status, 200);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["phase"], "failed");
    assert_eq!(ev[0]["status_code"], 400);
    assert_eq!(ev[0]["message"], "unknown data set \"nope\"\n");
    assert_eq!(builder.started.load(Ordering::SeqCst), started);
    let (_, ev) = events(&server, "data=sst%40ffffffff").await;
    assert!(
        ev[0]["message"]
            .as_str()
            .unwrap()
            .contains("has no version starting with \"ffffffff\""),
        "{ev:?}"
    );

    // Names that are no data set names are refused as bad requests.
    for bad in [
        "data=..%2Fetc",
        "data=.hidden",
        "data=sst%40xyz",
        &format!("data={}", "a".repeat(300)),
    ] {
        let (status, body) = events(&server, bad).await;
        assert_eq!(status, 400, "{bad}: {body:?}");
    }
    assert_eq!(backend.specs.lock().unwrap().len(), 1);
    jupyter.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_the_repository_declares_is_mounted_or_fails_the_launch() {
    let (dir, sst) = library();
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    *backend.jupyter.lock().unwrap() = Some(jupyter.addr);
    let builder = Arc::new(FakeBuilder {
        data: vec!["sst".into(), "winds".into()],
        ..FakeBuilder::default()
    });
    let server = Server::start(config(dir.path()), backend.clone(), builder.clone()).await;
    let (_, ev) = events(&server, "").await;
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "failed", "{ev:?}");
    assert_eq!(last["status_code"], 400);
    let msg = last["message"].as_str().unwrap();
    assert!(
        msg.starts_with("the repository's berth-data.txt needs data set \"winds\""),
        "{msg}"
    );
    assert!(backend.specs.lock().unwrap().is_empty());

    // Added to the library: the launch mounts both.
    let lib = berth_data::Library::open(dir.path()).unwrap();
    let nc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/data/uwnd_mean.nc");
    let winds = lib
        .add(
            "winds",
            &[nc],
            berth_data::IngestOptions::default(),
            &|_| {},
        )
        .unwrap();
    let (_, ev) = events(&server, "").await;
    assert_eq!(ev.last().unwrap()["phase"], "ready", "{ev:?}");
    let specs = backend.specs.lock().unwrap().clone();
    let got: Vec<(String, String)> = specs[0]
        .data
        .iter()
        .map(|d| (d.name.clone(), d.version.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("sst".to_string(), sst),
            ("winds".to_string(), winds.id().to_string())
        ]
    );
    jupyter.stop().await;
}
