//! `berth data`: the data library (add, ls, inspect, verify, rm, show), and the data sets of
//! `berth launch/run --data`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use berth_data::{Codec, IngestOptions, IngestProgress, Library};
use clap::{Args, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::print_out;

#[derive(Args)]
pub(crate) struct DataArgs {
    /// The data library's root (default: $BERTH_DATA_DIR, else $XDG_DATA_HOME/berth/data,
    /// else ~/.local/share/berth/data).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Convert NetCDF files (or Zarr stores) into one Zarr v3 store, registered as the newest
    /// version of NAME; prints NAME@<version>.
    Add {
        /// The data set's name: 1 to 64 of letters, digits, '.', '_', '-'.
        name: String,
        /// NetCDF files or Zarr store folders, merged (or concatenated with --concat).
        #[arg(required = true, value_name = "SOURCE")]
        sources: Vec<PathBuf>,
        /// Concatenate the sources along this dimension, in the order given.
        #[arg(long, value_name = "DIM")]
        concat: Option<String>,
        /// Chunk sizes (elements) per dimension, e.g. time=10,latitude=18.
        #[arg(long, value_name = "DIM=N,…", value_delimiter = ',')]
        chunks: Vec<String>,
        /// Chunk compression: zstd[:LEVEL], gzip[:LEVEL] or none.
        #[arg(long, default_value = "zstd")]
        codec: String,
        /// Print one JSON object (no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// List the data sets with their newest version.
    Ls {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Describe a version: variables, dimensions, chunking, codecs, attributes, sizes and
    /// min/mean/max of each variable.
    Inspect {
        /// NAME (the newest version) or NAME@VERSION (a version id or a prefix of one).
        spec: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hash a version's store again and compare with its id.
    Verify {
        /// NAME or NAME@VERSION.
        spec: String,
    },
    /// Remove NAME (its whole history) or one version NAME@VERSION. Refused while a session
    /// of this machine's engine mounts it.
    Rm {
        /// NAME or NAME@VERSION.
        spec: String,
    },
    /// Draw a 2-D slice of a variable as a PNG (viridis, missing values grey, a legend).
    Show {
        /// NAME or NAME@VERSION.
        spec: String,
        /// The variable.
        var: String,
        /// Fix a dimension to an index, DIM=INDEX (repeatable, or comma-separated), so that
        /// two dimensions remain.
        #[arg(long, value_name = "DIM=INDEX", value_delimiter = ',')]
        at: Vec<String>,
        /// The PNG file to write (default: <NAME>-<VAR>.png in this folder).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Parses `DIM=N` with N a positive integer; `what` names the option in the error.
fn dim_value(s: &str, what: &str, zero_ok: bool) -> anyhow::Result<(String, u64)> {
    let bad = || {
        anyhow::anyhow!(
            "invalid {what} {s:?}: expected DIM=N with N a whole number{}",
            if zero_ok { "" } else { " above 0" }
        )
    };
    let (d, n) = s.split_once('=').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if d.trim().is_empty() || (n == 0 && !zero_ok) {
        return Err(bad());
    }
    Ok((d.trim().to_string(), n))
}

/// The sessions of this machine's engine (and of the swarm it manages) that mount one of `versions` (ids) of data set
/// `name`, from their `berth.data` label. Without a reachable engine no session can mount it:
/// none.
async fn sessions_mounting(name: &str, versions: &[String]) -> anyhow::Result<Vec<String>> {
    use berth_launcher::Backend;
    let Ok(engine) = berth_builder::Engine::connect().await else {
        return Ok(Vec::new());
    };
    let mut sessions = berth_launcher::DockerBackend::with_client(engine.docker().clone())
        .list()
        .await?;
    // The Swarm backend's sessions too, when this engine manages a swarm.
    let key = berth_launcher::session_key()?;
    match berth_launcher::SwarmBackend::with_client(engine.docker().clone(), key).await {
        Ok(swarm) => sessions.extend(swarm.list().await?),
        Err(berth_launcher::LaunchError::SwarmInactive) => {}
        Err(e) => return Err(e.into()),
    }
    let mounts = |d: &String| {
        d.split_once('@')
            .is_some_and(|(n, v)| n == name && versions.iter().any(|id| id == v))
    };
    Ok(sessions
        .into_iter()
        .filter(|s| s.data.iter().any(mounts))
        .map(|s| s.id)
        .collect())
}

fn library(dir: &Option<PathBuf>) -> anyhow::Result<Library> {
    let root = dir.clone().unwrap_or_else(berth_data::default_root);
    Ok(Library::open(&root)?)
}

pub(crate) async fn data(args: DataArgs) -> anyhow::Result<ExitCode> {
    // The library's work is blocking file I/O (and its own threads for an ingest).
    tokio::task::spawn_blocking(move || data_blocking(args))
        .await
        .context("the data command stopped")?
}

fn data_blocking(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::Add {
            name,
            sources,
            concat,
            chunks,
            codec,
            json,
        } => {
            // Everything that can be checked without reading the sources, first.
            berth_data::validate_name(&name)?;
            let codec: Codec = codec.parse()?;
            let chunks = chunks
                .iter()
                .map(|c| dim_value(c, "--chunks", false))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for s in &sources {
                if !s.exists() {
                    anyhow::bail!("{}: no such file or folder", s.display());
                }
            }
            let lib = library(&args.data_dir)?;
            let opts = IngestOptions {
                concat,
                chunks,
                codec,
            };
            let bar = if json || !std::io::stderr().is_terminal() {
                ProgressBar::hidden()
            } else {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed}] {wide_bar} {bytes}/{total_bytes} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            };
            let progress = |p: IngestProgress| {
                bar.set_length(p.bytes_total);
                bar.set_position(p.bytes_done);
                bar.set_message(format!("{}/{} chunks", p.chunks_done, p.chunks_total));
            };
            let started = Instant::now();
            let added = lib.add(&name, &sources, opts, &progress);
            bar.finish_and_clear();
            let v = added?;
            let seconds = started.elapsed().as_secs_f64();
            if json {
                let out = serde_json::json!({
                    "name": v.name,
                    "version": v.id(),
                    "path": v.path,
                    "stored_bytes": v.record.stored_bytes,
                    "logical_bytes": v.record.logical_bytes,
                    "sources": v.record.sources,
                    "seconds": seconds,
                });
                print_out(&format!("{out}\n"))?;
            } else {
                eprintln!(
                    "berth: added {} version {}: {} stored ({} uncompressed) in {seconds:.2} s",
                    v.name,
                    &v.id()[..12],
                    HumanBytes(v.record.stored_bytes),
                    HumanBytes(v.record.logical_bytes),
                );
                print_out(&format!("{}@{}\n", v.name, v.id()))?;
            }
        }
        DataCommand::Ls { json } => {
            let lib = library(&args.data_dir)?;
            let all = lib.ls()?;
            if json {
                let v: Vec<serde_json::Value> = all
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "name": n.name,
                            "version": n.newest.version,
                            "versions": n.versions,
                            "created": n.newest.created,
                            "stored_bytes": n.newest.stored_bytes,
                            "logical_bytes": n.newest.logical_bytes,
                            "sources": n.newest.sources,
                        })
                    })
                    .collect();
                print_out(&format!("{}\n", serde_json::Value::Array(v)))?;
            } else {
                let mut t = format!(
                    "{:<24} {:<12} {:>8} {:<20} {:>10} {:>10}\n",
                    "NAME", "VERSION", "VERSIONS", "CREATED", "STORED", "LOGICAL"
                );
                for n in &all {
                    t += &format!(
                        "{:<24} {:<12} {:>8} {:<20} {:>10} {:>10}\n",
                        n.name,
                        &n.newest.version[..12],
                        n.versions,
                        n.newest.created.format("%Y-%m-%d %H:%M:%S"),
                        HumanBytes(n.newest.stored_bytes).to_string(),
                        HumanBytes(n.newest.logical_bytes).to_string(),
                    );
                }
                print_out(&t)?;
            }
        }
        DataCommand::Inspect { spec, json } => {
            let lib = library(&args.data_dir)?;
            let i = lib.inspect(&spec)?;
            if json {
                print_out(&format!("{}\n", serde_json::to_string_pretty(&i)?))?;
            } else {
                print_out(&inspection_text(&i))?;
            }
        }
        DataCommand::Verify { spec } => {
            let lib = library(&args.data_dir)?;
            let v = lib.verify(&spec)?;
            print_out(&format!(
                "{}@{}: ok (the store's content hashes to its version id)\n",
                v.name,
                v.id()
            ))?;
        }
        DataCommand::Rm { spec } => {
            let lib = library(&args.data_dir)?;
            let (name, version) = berth_data::parse_spec(&spec)?;
            // The versions this removes (an unknown one fails here, before anything changes).
            let ids: Vec<String> = if version.is_some() {
                vec![lib.resolve(&spec)?.id().to_string()]
            } else {
                lib.history(name)?
                    .iter()
                    .map(|v| v.id().to_string())
                    .collect()
            };
            // On the runtime this blocking thread belongs to.
            let users =
                tokio::runtime::Handle::current().block_on(sessions_mounting(name, &ids))?;
            if !users.is_empty() {
                anyhow::bail!(
                    "data set {spec} is mounted by session {}: stop it first (berth stop)",
                    users.join(", ")
                );
            }
            let r = lib.rm(&spec)?;
            let mut t = String::new();
            for v in &r.unregistered {
                t += &format!(
                    "removed {name}@{v}{}\n",
                    if r.deleted.contains(v) {
                        " (store deleted)"
                    } else {
                        " (store kept: another name uses it)"
                    }
                );
            }
            print_out(&t)?;
        }
        DataCommand::Show {
            spec,
            var,
            at,
            output,
        } => {
            let at = at
                .iter()
                .map(|a| dim_value(a, "--at", true).map(|(d, n)| (d, n as usize)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let lib = library(&args.data_dir)?;
            let name = spec.split('@').next().unwrap_or(&spec);
            let path = output.unwrap_or_else(|| PathBuf::from(format!("{name}-{var}.png")));
            let q = lib.render_png(&spec, &var, &at, &path)?;
            eprintln!(
                "berth: {} × {} cells ({} × {}), {} .. {}{}",
                q.rows,
                q.cols,
                q.row_dim,
                q.col_dim,
                q.min,
                q.max,
                q.units
                    .as_deref()
                    .map(|u| format!(" {u}"))
                    .unwrap_or_default()
            );
            print_out(&format!("{}\n", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A value of an attribute or a statistic, short.
fn short_json(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn inspection_text(i: &berth_data::Inspection) -> String {
    let mut t = String::new();
    t += &format!("data set     {}\n", i.name);
    t += &format!("version      {}\n", i.version);
    t += &format!("store        {}\n", i.path.display());
    t += &format!(
        "size         {} stored, {} uncompressed\n",
        HumanBytes(i.stored_bytes),
        HumanBytes(i.logical_bytes)
    );
    let dims: Vec<String> = i
        .dimensions
        .iter()
        .map(|(d, n)| format!("{d}={n}"))
        .collect();
    t += &format!("dimensions   {}\n", dims.join(", "));
    if !i.attributes.is_empty() {
        t += "attributes\n";
        for (k, v) in &i.attributes {
            t += &format!("  {k}: {}\n", short_json(v));
        }
    }
    t += &format!(
        "\n{:<14} {:<28} {:<14} {:<8} {:<14} {:<12} {:>10} {:>10} {:>12} {:>12} {:>12}\n",
        "VARIABLE",
        "DIMS",
        "SHAPE",
        "DTYPE",
        "CHUNKS",
        "CODECS",
        "STORED",
        "LOGICAL",
        "MIN",
        "MEAN",
        "MAX"
    );
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join("×");
    for v in &i.variables {
        let (min, mean, max) = match &v.stats {
            Some(s) => (
                format!("{:.6}", s.min),
                format!("{:.6}", s.mean),
                format!("{:.6}", s.max),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        t += &format!(
            "{:<14} {:<28} {:<14} {:<8} {:<14} {:<12} {:>10} {:>10} {:>12} {:>12} {:>12}\n",
            v.name,
            v.dims.join(","),
            join(&v.shape),
            v.dtype,
            join(&v.chunk_shape),
            v.codecs.join("+"),
            HumanBytes(v.stored_bytes).to_string(),
            HumanBytes(v.logical_bytes).to_string(),
            min,
            mean,
            max
        );
    }
    for v in &i.variables {
        if v.attributes.is_empty() {
            continue;
        }
        t += &format!("\n{} attributes\n", v.name);
        for (k, a) in &v.attributes {
            t += &format!("  {k}: {}\n", short_json(a));
        }
    }
    t
}

/// The data sets of a session: `--data` specs and the image's `berth-data.txt` entries
/// (label [`berth_builder::labels::DATA`]), resolved in the library at `dir` (default root).
pub(crate) fn session_data(
    dir: &Option<PathBuf>,
    requested: &[String],
    declared: &[String],
) -> anyhow::Result<Vec<berth_launcher::DataMount>> {
    let root = dir.clone().unwrap_or_else(berth_data::default_root);
    Ok(berth_web::session_data::resolve_data(
        Path::new(&root),
        requested,
        declared,
    )?)
}
