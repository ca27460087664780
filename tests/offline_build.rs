//! Offline builds (`berth build --offline`) with real Docker and a real fixture: the sources
//! of an online build are collected (`berth_builder::sources`), the environment is built again
//! from them on Docker's `none` network, and a package missing from them fails the build with
//! one line naming it.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{berth, build, build_lock, docker, fixture, labels, run_berth};

/// `name==version` of every package of the kernel environment of `image` (`berth inspect`),
/// with the digest of its installed files.
fn kernel(image: &str) -> Vec<String> {
    let out = run_berth(&["inspect", image, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["packages"]["kernel"]
        .as_array()
        .expect("a kernel package list")
        .iter()
        .map(|p| {
            format!(
                "{}=={} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["sha256"]
            )
        })
        .collect()
}

/// `berth build SOURCE --offline --no-cache --json …` with `sources` as the sources folder.
fn build_offline(source: &Path, sources: &Path) -> std::process::Output {
    berth()
        .args([
            "build",
            source.to_str().unwrap(),
            "--offline",
            "--no-cache",
            "--json",
            "--python-fallback",
        ])
        .env("BERTH_SOURCES_DIR", sources)
        .output()
        .expect("berth runs")
}

#[test]
fn an_offline_build_from_collected_sources_is_the_online_environment() {
    let started = Instant::now();
    let source = fixture("requirements");
    let online = build(&source, &["--python-fallback"]);
    let online_kernel = kernel(&online.image);
    let base = labels(&online.env_image)["berth.base_image"]
        .as_str()
        .expect("the env image names its base")
        .to_string();

    // Collect into a folder of its own; downloads are cached in the tests' cache folder, so a
    // later run downloads nothing.
    let dir = tempfile::tempdir().unwrap();
    let sources = dir.path().join("sources");
    let opts = berth_builder::sources::CollectOptions {
        cache: common::cache_dir().join("sources"),
        ca_cert: common::ca_bundle(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let summary = rt
        .block_on(async {
            let engine = berth_builder::Engine::connect().await?;
            berth_builder::sources::collect_with(
                &engine,
                &online.env_image,
                &base,
                &sources,
                &opts,
                &mut |l: &str| eprintln!("{l}"),
            )
            .await
        })
        .expect("the sources are collected");
    let has = |prefix: &str| summary.files.iter().any(|f| f.path.starts_with(prefix));
    assert!(has("wheels/numpy-2.2.2-"), "{summary:?}");
    assert!(has("wheels/seaborn-0.13.2-"), "{summary:?}");
    assert!(
        has("wheels/jupyterlab-"),
        "the server environment: {summary:?}"
    );
    assert!(
        has(&format!("wheels/uv-{}-", berth_buildpacks::UV_VERSION)),
        "uv itself: {summary:?}"
    );
    assert!(has("debs/python3.11_"), "{summary:?}");
    assert_eq!(
        summary.bytes,
        summary.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    eprintln!(
        "collected {} files, {} bytes ({} downloaded) after {:.0?}",
        summary.files.len(),
        summary.bytes,
        summary.downloaded,
        started.elapsed()
    );

    // The offline build: every step again (no layer cache), from the sources only.
    let t = Instant::now();
    let out = {
        let _g = build_lock();
        build_offline(&source, &sources)
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the offline build failed:\n{stderr}");
    let offline: berth_builder::BuildOutcome = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("offline build: {:.0?}", t.elapsed());
    assert_eq!(
        offline.env_hash, online.env_hash,
        "offline mode is not in the env hash"
    );
    assert!(!offline.cached_env);
    assert_eq!(
        kernel(&offline.image),
        online_kernel,
        "the same kernel environment"
    );
    let env_config = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &offline.env_image,
    ]);
    assert!(
        !env_config.contains("UV_OFFLINE"),
        "build-time settings only: {env_config}"
    );
    let leftover = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        &offline.image,
        "-c",
        "ls /opt/berth",
    ]);
    assert!(!leftover.contains("sources"), "{leftover}");

    // A missing package, one error line naming it: tests/bundle_e2e.rs (through rebuild).
    eprintln!("total: {:.0?}", started.elapsed());
}
