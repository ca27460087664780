//! `berth`: turn a Git repository into a running, reproducible analysis environment.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use berth_builder::{BuildEvent, BuildRequest, Engine, Phase};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "berth", version, about = "Turn a Git repository into a reproducible analysis environment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build (or reuse) the image of a repository at a ref; prints the image on stdout.
    Build(BuildArgs),
}

/// Options shared by every command that builds.
#[derive(Args, Clone)]
struct BuildOpts {
    /// A Git URL (https, http, git, ssh) or a local path (work tree or bare repository).
    source: String,
    /// Branch, tag, full or short commit (default: HEAD).
    #[arg(long = "ref", value_name = "REF")]
    reference: Option<String>,
    /// Name[:tag] of the repository image (default berth/<repo>:<tree>).
    #[arg(long)]
    image_name: Option<String>,
    /// Build everything again, ignoring cached images and Docker's layer cache.
    #[arg(long)]
    no_cache: bool,
    /// Build with the nearest available Python when the requested one is missing; the
    /// requested and actual versions are recorded in image labels.
    #[arg(long)]
    python_fallback: bool,
    /// A CA bundle (PEM) handed to build steps, for networks that intercept TLS.
    #[arg(long, env = "BERTH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The base image; berth-base:* images are created locally with debootstrap.
    #[arg(long, env = "BERTH_BASE_IMAGE", default_value = berth_builder::DEFAULT_BASE_IMAGE)]
    base_image: String,
    /// Python versions (X.Y) the base image provides, default first.
    #[arg(long, env = "BERTH_PYTHON_VERSIONS", value_delimiter = ',', default_value = "3.11")]
    python_versions: Vec<String>,
    /// Debian mirror used to create a missing base image.
    #[arg(long, env = "BERTH_DEBIAN_MIRROR", default_value = "http://deb.debian.org/debian")]
    debian_mirror: String,
    /// Refuse repositories whose files add up to more than this many bytes.
    #[arg(long, env = "BERTH_MAX_REPO_BYTES", default_value_t = berth_builder::DEFAULT_MAX_REPO_BYTES)]
    max_repo_bytes: u64,
}

impl BuildOpts {
    fn request(&self) -> BuildRequest {
        let mut req = BuildRequest::new(self.source.clone());
        req.reference = self.reference.clone();
        req.image_name = self.image_name.clone();
        req.no_cache = self.no_cache;
        req.python_fallback = self.python_fallback;
        req.ca_cert = self.ca_cert.clone();
        req.base_image = self.base_image.clone();
        req.available_pythons = self.python_versions.clone();
        req.debian_mirror = self.debian_mirror.clone();
        req.max_repo_bytes = self.max_repo_bytes;
        req
    }
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    opts: BuildOpts,
    /// Print the build plan (JSON) and stop; needs no Docker engine.
    #[arg(long, conflicts_with = "dockerfile")]
    plan: bool,
    /// Print the environment's Dockerfile and stop; needs no Docker engine.
    #[arg(long)]
    dockerfile: bool,
    /// Print one JSON object instead of the image name.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build(args).await,
    }
}

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
struct Progress {
    bar: ProgressBar,
    tty: bool,
    phase: Mutex<&'static str>,
}

impl Progress {
    fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {prefix:.bold} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            tty,
            phase: Mutex::new(""),
        }
    }

    fn event(&self, ev: BuildEvent) {
        match ev {
            BuildEvent::Phase(p) => {
                let name = match p {
                    Phase::Fetching => "fetching",
                    Phase::Detecting => "detecting",
                    Phase::Base => "base image",
                    Phase::BuildingEnv => "building environment",
                    Phase::BuildingRepo => "adding repository",
                    Phase::Built => "built",
                };
                if let Ok(mut ph) = self.phase.lock() {
                    *ph = name;
                }
                if self.tty {
                    self.bar.set_prefix(name);
                } else {
                    eprintln!("berth: {name}");
                }
            }
            BuildEvent::Log(line) => {
                if self.tty {
                    self.bar.set_message(line);
                } else {
                    eprintln!("  {line}");
                }
            }
            BuildEvent::Warning(w) => self.bar.suspend(|| eprintln!("warning: {w}")),
            BuildEvent::Fetch(p) => {
                if self.tty && p.total_objects > 0 {
                    self.bar.set_message(format!(
                        "{}/{} objects, {} KiB",
                        p.received_objects,
                        p.total_objects,
                        p.received_bytes / 1024
                    ));
                }
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let req = args.opts.request();
    if args.plan || args.dockerfile {
        let quiet = |_ev: BuildEvent| {};
        let co = berth_builder::checkout(&req, &quiet).await?;
        let plan = berth_builder::plan(&req, &co)?;
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        if args.plan {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", berth_builder::dockerfile(&req, &co, &plan));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let engine = Engine::connect().await?;
    let progress = Progress::new();
    let report = |ev: BuildEvent| progress.event(ev);
    let outcome = berth_builder::build(&engine, &req, &report).await;
    progress.finish();
    let outcome = outcome.context(format!("cannot build {}", req.source))?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", outcome.image);
    }
    Ok(ExitCode::SUCCESS)
}
