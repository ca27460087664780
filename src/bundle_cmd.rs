//! `berth export`, `berth import`, `berth rebuild --offline`, and launching from a bundle file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use berth_builder::{labels, BuildOutcome, Engine};
use berth_bundle::import::ImportOptions;
use berth_bundle::{ExportOptions, Manifest};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{build_with_progress, image_of, print_out, BuildOpts};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// A local image (as `berth build` printed it), or a repository to build first.
    #[command(flatten)]
    opts: BuildOpts,
    /// The file to write (default: <repo>-<commit 12>.berth.tar in this folder).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also bundle what rebuilds the environment with no network: the base image, every
    /// wheel or sdist of the kernel, server and dashboard environments, every Debian package
    /// the plan installs, and uv.
    #[arg(long)]
    sources: bool,
    /// Carry a data set of berth's data library along, NAME or NAME@VERSION (repeatable):
    /// `berth run FILE` and `launch FILE` mount it at /data/NAME, wherever the file goes.
    /// Those the repository's berth-data.txt names travel along too, unless --no-data.
    #[arg(long = "data", value_name = "NAME[@VERSION]")]
    data: Vec<String>,
    /// Leave out the data sets the repository's berth-data.txt names.
    #[arg(long)]
    no_data: bool,
    /// The data library's root (default: $BERTH_DATA_DIR, else $XDG_DATA_HOME/berth/data,
    /// else ~/.local/share/berth/data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print one JSON object (the file, its size and sha256, seconds) instead of the file name.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// A bundle written by `berth export`.
    file: PathBuf,
    /// The data library the bundle's data sets are added to (default: $BERTH_DATA_DIR, else
    /// $XDG_DATA_HOME/berth/data, else ~/.local/share/berth/data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print one JSON object instead of the image name.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct RebuildArgs {
    /// A bundle written by `berth export --sources`.
    file: PathBuf,
    /// Rebuild with no network: every build step on the engine's `none` network, packages
    /// from the bundle's sources only. (Required: berth rebuilds bundles offline.)
    #[arg(long, required = true)]
    offline: bool,
    /// Take the sources from this folder (wheels/, debs/) instead of the bundle; an empty or
    /// missing folder is filled from the bundle first.
    #[arg(long, value_name = "DIR")]
    sources_dir: Option<PathBuf>,
    /// A CA bundle (PEM) for the rebuilt image, as at build time.
    #[arg(long, env = "BERTH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// A byte-count progress bar on a terminal; nothing otherwise.
fn bytes_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{elapsed}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Whether `source` names a bundle file rather than a repository or an image: an existing
/// regular file (a repository is a folder).
pub(crate) fn is_bundle(source: &str) -> bool {
    Path::new(source).is_file()
}

pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let engine = Engine::connect().await?;
    let image = image_of(&engine, &args.opts).await?;
    let info = engine
        .image(&image)
        .await?
        .with_context(|| format!("no image {image}"))?;
    let out = match &args.output {
        Some(o) => o.clone(),
        None => {
            let repo = info
                .labels
                .get(labels::REPO_URL)
                .map(|u| berth_builder::default_image_repo(u))
                .unwrap_or_else(|| image.split(':').next().unwrap_or("image").to_string());
            let name = repo.rsplit('/').next().unwrap_or("image").to_string();
            let id = info
                .labels
                .get(labels::COMMIT)
                .cloned()
                .unwrap_or_else(|| info.id.trim_start_matches("sha256:").to_string());
            PathBuf::from(format!("{name}-{}.berth.tar", &id[..12.min(id.len())]))
        }
    };
    // The data sets, resolved before anything is written: an unknown one costs nothing.
    let declared: Vec<String> = if args.no_data {
        Vec::new()
    } else {
        info.labels
            .get(labels::DATA)
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let data = bundled_data(&args.data_dir, &args.data, &declared)?;
    let cache_dir = berth_builder::default_cache_dir();
    let mut sources_dir = None;
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    if args.sources {
        let env_image = info
            .labels
            .get(labels::ENV_HASH)
            .map(|h| format!("berth-env:{h}"))
            .with_context(|| {
                format!("{image} was not built by berth: it has no sources to bundle")
            })?;
        let base = info
            .labels
            .get(labels::BASE_IMAGE)
            .cloned()
            .with_context(|| {
                format!("{image} records no base image: it has no sources to bundle")
            })?;
        eprintln!("berth: collecting sources (wheels, Debian packages)");
        let mut log = |line: &str| tracing::debug!("{line}");
        let s = berth_builder::sources::collect(&engine, &env_image, &base, tmp.path(), &mut log)
            .await
            .context("cannot collect the sources")?;
        tracing::info!(?s, "sources collected");
        sources_dir = Some(tmp.path().to_path_buf());
    }
    let bar = bytes_bar();
    let b2 = bar.clone();
    let progress = Arc::new(move |p: berth_bundle::export::Progress| {
        b2.set_prefix(p.step);
        b2.set_length(p.total.max(p.done));
        b2.set_position(p.done);
    });
    let summary = berth_bundle::export(
        &engine,
        &image,
        &out,
        &ExportOptions {
            sources: sources_dir,
            cache_dir,
            data,
        },
        progress,
    )
    .await;
    bar.finish_and_clear();
    let summary = summary.with_context(|| format!("cannot export {image}"))?;
    if !summary.unknown.is_empty() {
        eprintln!(
            "warning: the bundle does not know {} of {image} (berth.json lists them as unknown)",
            summary.unknown.join(", ")
        );
    }
    eprintln!(
        "berth: exported {} to {}: {} (image {}, sources {}, repository {}, data {}) in {:.1} s",
        summary.image,
        out.display(),
        mib(summary.bytes),
        mib(summary.image_bytes),
        mib(summary.sources_bytes),
        mib(summary.repo_bytes),
        mib(summary.data_bytes),
        started.elapsed().as_secs_f64()
    );
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["seconds"] = started.elapsed().as_secs_f64().into();
        print_out(&format!("{v}\n"))?;
    } else {
        print_out(&format!("{}\n", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Imports `file` with progress on stderr.
pub(crate) async fn import_with_progress(
    engine: &Engine,
    file: &Path,
    opts: &ImportOptions,
) -> anyhow::Result<berth_bundle::Imported> {
    let bar = bytes_bar();
    let b2 = bar.clone();
    let progress = Arc::new(move |p: berth_bundle::import::Progress| {
        b2.set_prefix(p.step);
        b2.set_length(p.total.max(p.done));
        b2.set_position(p.done);
    });
    let r = berth_bundle::import(engine, file, opts, progress).await;
    bar.finish_and_clear();
    r.with_context(|| format!("cannot import {}", file.display()))
}

pub(crate) async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::connect().await?;
    let opts = ImportOptions {
        base: false,
        skip_images: false,
        sources_to: Some(berth_builder::default_cache_dir().join("sources")),
    };
    let imported = import_with_progress(&engine, &args.file, &opts).await?;
    restore_data(&args.file, &imported, &args.data_dir)?;
    eprintln!(
        "berth: {} {} (bundle digest {}) in {:.1} s",
        if imported.loaded {
            "loaded"
        } else {
            "already had"
        },
        imported.image,
        imported.digest,
        imported.seconds
    );
    if args.json {
        print_out(&format!("{}\n", serde_json::to_string(&imported)?))?;
    } else {
        print_out(&format!("{}\n", imported.image))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The data sets `berth export` carries: `requested` (`--data`), then `declared` (the image's
/// berth-data.txt) by name unless requested, resolved in the library at `dir` to exact
/// versions.
fn bundled_data(
    dir: &Option<PathBuf>,
    requested: &[String],
    declared: &[String],
) -> anyhow::Result<Vec<berth_bundle::DataSetSource>> {
    let mounts = crate::data_cmd::session_data(dir, requested, declared)?;
    if mounts.is_empty() {
        return Ok(Vec::new());
    }
    let root = dir.clone().unwrap_or_else(berth_data::default_root);
    let lib = berth_data::Library::open(&root)?;
    mounts
        .iter()
        .map(|m| {
            let v = lib.resolve(&format!("{}@{}", m.name, m.version))?;
            Ok(berth_bundle::DataSetSource {
                name: v.name.clone(),
                version: v.id().to_string(),
                record: serde_json::to_value(&v.record)?,
                dir: v.path.clone(),
            })
        })
        .collect()
}

/// Adds the data sets of an imported bundle to the data library at `dir` (those it has
/// already are kept as they are); returns them as `NAME@VERSION`, the exact versions to
/// mount.
pub(crate) fn restore_data(
    file: &Path,
    imported: &berth_bundle::Imported,
    dir: &Option<PathBuf>,
) -> anyhow::Result<Vec<String>> {
    let sets = &imported.manifest.data;
    if sets.is_empty() {
        return Ok(Vec::new());
    }
    let root = dir.clone().unwrap_or_else(berth_data::default_root);
    let lib = berth_data::Library::open(&root)?;
    let mut out = Vec::new();
    for d in sets {
        let spec = format!("{}@{}", d.name, d.version);
        if lib.resolve(&spec).is_err() {
            let record: berth_data::VersionRecord = serde_json::from_value(d.record.clone())
                .with_context(|| format!("the bundle's record of data set {spec}"))?;
            let staging = lib.staging_dir()?;
            let copied = berth_bundle::copy_data(file, &imported.scan, d, &staging);
            if let Err(e) = copied {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e).with_context(|| format!("cannot import data set {}", d.name));
            }
            lib.adopt(&d.name, &staging, record)
                .with_context(|| format!("cannot import data set {}", d.name))?;
            eprintln!("berth: added data set {spec} to {}", root.display());
        }
        out.push(spec);
    }
    Ok(out)
}

/// What `launch FILE` and `run FILE` build from: the bundle's image, imported when the engine
/// lacks it, as a build outcome (its `data`: the bundle's data sets as `NAME@VERSION`, added
/// to the data library at `data_dir`); and the label recording the bundle's digest.
pub(crate) async fn outcome_of_bundle(
    engine: &Engine,
    file: &Path,
    data_dir: &Option<PathBuf>,
) -> anyhow::Result<(BuildOutcome, (String, String), Manifest)> {
    let started = Instant::now();
    let imported = import_with_progress(engine, file, &ImportOptions::default()).await?;
    let data = restore_data(file, &imported, data_dir)?;
    let m = imported.manifest.clone();
    let outcome = BuildOutcome {
        image: imported.image.clone(),
        env_image: imported.env_image.clone().unwrap_or_default(),
        env_hash: m.env_hash.clone().unwrap_or_default(),
        commit: m
            .repo
            .as_ref()
            .map(|r| r.commit.clone())
            .unwrap_or_default(),
        buildpack: m.buildpack.clone().unwrap_or_default(),
        cached_env: !imported.loaded,
        seconds: started.elapsed().as_secs_f64(),
        data,
        pushed: None,
    };
    Ok((
        outcome,
        (
            BUNDLE_LABEL.to_string(),
            format!("sha256:{}", imported.digest),
        ),
        m,
    ))
}

/// The session label recording the bundle a session runs (`sha256:<hex>` of the file).
pub(crate) const BUNDLE_LABEL: &str = "berth.bundle";

fn key(p: &serde_json::Value) -> Option<String> {
    Some(format!(
        "{}=={}",
        p.get("name")?.as_str()?,
        p.get("version")?.as_str()?
    ))
}

fn package_set(packages: Option<&serde_json::Value>, env: &str) -> Vec<String> {
    let mut v: Vec<String> = packages
        .and_then(|p| p.get(env))
        .and_then(|k| k.as_array())
        .map(|a| a.iter().filter_map(key).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) async fn rebuild(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let engine = Engine::connect().await?;
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let sources = args
        .sources_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("sources"));
    let fill = !sources.exists()
        || std::fs::read_dir(&sources)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
    // The base image (the environment's root file system) from the bundle; the images
    // themselves are not needed: they are what is rebuilt.
    let opts = ImportOptions {
        base: true,
        skip_images: true,
        sources_to: fill.then(|| sources.clone()),
    };
    let file = args.file.clone();
    let (v, m) = {
        let p = file.clone();
        let v =
            tokio::task::spawn_blocking(move || berth_bundle::verify(&p, &mut |_| {})).await??;
        let m = v.manifest.clone();
        (v, m)
    };
    if m.base_image.is_none()
        || !m
            .parts
            .iter()
            .any(|p| p.kind == "wheel" || p.kind == "sdist")
    {
        anyhow::bail!(
            "{} has no sources: export it with --sources to rebuild it offline",
            file.display()
        );
    }
    let imported = import_with_progress(&engine, &file, &opts).await?;
    let base_ref = imported
        .base_image
        .clone()
        .context("the bundle has no base image")?;
    // The repository at its commit, from the bundle's git bundle.
    let repo_part = m
        .parts_of("repo")
        .next()
        .context("the bundle has no repository (git bundle)")?;
    let entry = v
        .entry(&repo_part.path)
        .context("the bundle lacks its git bundle")?;
    let gb = tmp.path().join("repo.bundle");
    {
        let mut f = std::fs::File::create(&gb)?;
        berth_bundle::archive::copy_entry(&file, entry, &mut f)?;
    }
    let repo_dir = tmp.path().join("repo.git");
    let commit = berth_bundle::gitbundle::unbundle(&gb, &repo_dir)?;
    let info = m
        .repo
        .clone()
        .context("the bundle does not say where its repository came from")?;

    let mut req = berth_builder::BuildRequest::new(repo_dir.to_string_lossy().into_owned());
    req.reference = Some(commit.clone());
    req.no_cache = true;
    req.ca_cert = args.ca_cert.clone();
    req.subdir = info.subdir.clone();
    req.offline = Some(sources.clone());
    if let Some(l) = m.labels.get(labels::USER_ID).and_then(|u| u.parse().ok()) {
        req.user_id = l;
    }
    if let Some(n) = m.labels.get(labels::USER_NAME) {
        req.user_name = n.clone();
    }
    if let Some(d) = m.labels.get(labels::REPO_DIR) {
        req.repo_dir = d.clone();
    }
    // The imported base serves the Python the environment was built with.
    let python = m
        .labels
        .get(labels::PYTHON_ACTUAL)
        .cloned()
        .unwrap_or_else(|| "3.11".into());
    let suite = req
        .bases
        .iter()
        .find(|b| b.python == python)
        .map(|b| b.suite.clone())
        .unwrap_or_else(|| "bookworm".into());
    req.bases = vec![berth_builder::PythonBase::new(&python, &suite, &base_ref)];
    eprintln!(
        "berth: rebuilding {} at {} offline (no network for any build step)",
        info.url,
        &commit[..12]
    );
    let outcome = build_with_progress(&engine, &req).await?;
    let rebuilt = berth_builder::record::read_packages(&engine, &outcome.image)
        .await?
        .map(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b))
        .transpose()?;
    let before = package_set(m.packages.as_ref(), "kernel");
    let after = package_set(rebuilt.as_ref(), "kernel");
    let same_hash = m.env_hash.as_deref() == Some(outcome.env_hash.as_str());
    let removed: Vec<&String> = before.iter().filter(|p| !after.contains(p)).collect();
    let added: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    let same_packages = removed.is_empty() && added.is_empty() && !before.is_empty();
    eprintln!(
        "berth: env hash {} ({})",
        outcome.env_hash,
        if same_hash {
            "the same as the bundle's"
        } else {
            "DIFFERENT from the bundle's"
        }
    );
    eprintln!(
        "berth: kernel environment: {} packages, {}",
        after.len(),
        if same_packages {
            "identical to the bundle's"
        } else {
            "DIFFERENT from the bundle's"
        }
    );
    for p in &removed {
        eprintln!("  - {p}");
    }
    for p in &added {
        eprintln!("  + {p}");
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let v = serde_json::json!({
            "image": outcome.image,
            "env_image": outcome.env_image,
            "env_hash": outcome.env_hash,
            "bundle_env_hash": m.env_hash,
            "same_env_hash": same_hash,
            "same_kernel_packages": same_packages,
            "missing": removed,
            "extra": added,
            "seconds": seconds,
        });
        print_out(&format!("{v}\n"))?;
    } else {
        print_out(&format!("{}\n", outcome.image))?;
    }
    Ok(if same_hash && same_packages {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
