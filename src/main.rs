//! `berth`: turn a Git repository into a running, reproducible analysis environment.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_builder::{BuildEvent, BuildOutcome, BuildRequest, Engine, Phase};
use berth_launcher::{Backend, DockerBackend, Limits, OpenPath, SessionSpec};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Turn a Git repository into a reproducible analysis environment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build (or reuse) the image of a repository at a ref; prints the image on stdout.
    Build(BuildArgs),
    /// Build if needed, then start JupyterLab with a Dask cluster; prints the URL.
    Launch(LaunchArgs),
    /// Build if needed, run a command in the session container with the cluster attached,
    /// stream its output, remove everything, and exit with the command's status.
    Run(RunArgs),
    /// List sessions.
    Ls {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Set a session's number of Dask workers (retiring workers moves their results first).
    Scale {
        /// The session id (see berth ls).
        session: String,
        /// The number of workers wanted.
        #[arg(allow_negative_numbers = true)]
        workers: i64,
    },
    /// Stop sessions: remove their containers and network.
    Stop {
        /// The session id (see berth ls).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        session: Option<String>,
        /// Stop every session.
        #[arg(long)]
        all: bool,
    },
    /// Print the logs of a session's containers.
    Logs {
        /// The session id (see berth ls).
        session: String,
    },
    /// Serve the web form, BinderHub-compatible launch URLs and build API, and the session proxy.
    Serve {
        /// Address to listen on (default 127.0.0.1:8585, or the config file's `listen`).
        #[arg(long, env = "BERTH_LISTEN")]
        listen: Option<String>,
        /// YAML configuration (providers, allow/deny lists, quotas, workers, culling).
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Stop sessions whose Jupyter server has been idle for longer than --max-idle.
    Cull {
        /// Idle time after which a session is stopped (e.g. 30m, 2h).
        #[arg(long, env = "BERTH_MAX_IDLE", default_value = "1h", value_parser = humantime::parse_duration)]
        max_idle: Duration,
        /// Only consider these sessions (default: all).
        sessions: Vec<String>,
    },
}

/// Options of the session's containers.
#[derive(Args, Clone)]
struct SessionOpts {
    /// Dask workers to start (0: no cluster).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// The most workers `berth scale` may reach.
    #[arg(long, env = "BERTH_MAX_WORKERS", default_value_t = 16)]
    max_workers: u32,
    /// Memory limit per container, in bytes or with a K, M, G or T suffix (powers of 1024);
    /// 0 for none.
    #[arg(long, env = "BERTH_MEMORY", value_parser = parse_bytes, default_value = "2G")]
    memory: u64,
    /// CPU limit per container (e.g. 1.5).
    #[arg(long, env = "BERTH_CPUS")]
    cpus: Option<f64>,
    /// Process limit per container.
    #[arg(long, env = "BERTH_PIDS", default_value_t = 4096)]
    pids: u64,
    /// Host address Jupyter and the dashboard are published on.
    #[arg(long, env = "BERTH_BIND", default_value = "127.0.0.1")]
    bind: String,
    /// Seconds to wait for the session to be ready.
    #[arg(long, default_value_t = 180)]
    ready_timeout: u64,
    /// Let the session's containers reach services of this host (through the bridge gateway);
    /// by default a firewall rule keeps them out (needs root and iptables).
    #[arg(long, env = "BERTH_ALLOW_HOST_ACCESS")]
    allow_host_access: bool,
}

impl SessionOpts {
    fn spec(&self, image: &str, source: &str) -> SessionSpec {
        let mut spec = SessionSpec::new(image);
        spec.name_hint = name_hint(source);
        spec.workers = self.workers;
        spec.max_workers = self.max_workers;
        spec.limits = Limits {
            memory_bytes: (self.memory > 0).then_some(self.memory),
            millicpus: self.cpus.map(|c| (c * 1000.0).round().max(1.0) as u64),
            pids: self.pids,
        };
        spec.bind_ip = self.bind.clone();
        spec.ready_timeout = Duration::from_secs(self.ready_timeout);
        spec.host_access = self.allow_host_access;
        spec
    }
}

/// The name a session id starts with: the repository's, as in its image name.
fn name_hint(source: &str) -> String {
    berth_builder::default_image_repo(source)
        .trim_start_matches("berth/")
        .to_string()
}

/// Parses a byte count: `1073741824`, `512M`, `2G`, `1.5GiB`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    Ok((n * mult as f64) as u64)
}

#[derive(Args)]
#[group(id = "open", multiple = false)]
struct OpenOpts {
    /// URL path to open, as BinderHub's urlpath (e.g. lab/tree/index.ipynb).
    #[arg(long, group = "open")]
    urlpath: Option<String>,
    /// Path to open in JupyterLab, as BinderHub's labpath.
    #[arg(long, group = "open")]
    labpath: Option<String>,
    /// File of the repository to open, as BinderHub's filepath.
    #[arg(long, group = "open")]
    filepath: Option<String>,
}

impl OpenOpts {
    fn open(&self) -> Option<OpenPath> {
        if let Some(p) = &self.urlpath {
            Some(OpenPath::UrlPath(p.clone()))
        } else if let Some(p) = &self.labpath {
            Some(OpenPath::LabPath(p.clone()))
        } else {
            self.filepath
                .as_ref()
                .map(|p| OpenPath::FilePath(p.clone()))
        }
    }
}

#[derive(Args)]
struct LaunchArgs {
    #[command(flatten)]
    opts: BuildOpts,
    #[command(flatten)]
    session: SessionOpts,
    #[command(flatten)]
    open: OpenOpts,
    /// Host port for Jupyter (default: a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Print one JSON object instead of the URL.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    opts: BuildOpts,
    #[command(flatten)]
    session: SessionOpts,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
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
    #[arg(
        long,
        env = "BERTH_PYTHON_VERSIONS",
        value_delimiter = ',',
        default_value = "3.11"
    )]
    python_versions: Vec<String>,
    /// Debian mirror used to create a missing base image.
    #[arg(
        long,
        env = "BERTH_DEBIAN_MIRROR",
        default_value = "http://deb.debian.org/debian"
    )]
    debian_mirror: String,
    /// Refuse repositories whose files add up to more than this many bytes.
    #[arg(long, env = "BERTH_MAX_REPO_BYTES", default_value_t = berth_builder::DEFAULT_MAX_REPO_BYTES)]
    max_repo_bytes: u64,
    /// The longest a whole build may take, fetch included (e.g. 30s, 20m, 1h).
    #[arg(long, env = "BERTH_BUILD_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    build_timeout: Duration,
    /// Memory limit of each build step, in bytes or with a K, M, G or T suffix (powers of
    /// 1024); swap is not allowed beyond it.
    #[arg(long, env = "BERTH_BUILD_MEMORY", default_value = "4G", value_parser = parse_bytes)]
    build_memory: u64,
    /// Most processes of the user a build step runs as (RLIMIT_NPROC).
    #[arg(long, env = "BERTH_BUILD_PIDS", default_value_t = 4096)]
    build_pids: u64,
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
        req.timeout = self.build_timeout;
        req.limits = berth_builder::BuildLimits {
            memory_bytes: Some(self.build_memory),
            pids: Some(self.build_pids),
        };
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
        .with_ansi(std::io::stderr().is_terminal())
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
        Command::Launch(args) => launch(args).await,
        Command::Run(args) => run_command(args).await,
        Command::Ls { json } => ls(json).await,
        Command::Scale { session, workers } => {
            let workers = u32::try_from(workers)
                .map_err(|_| anyhow::anyhow!("cannot scale session {session} to {workers} workers: the count must be 0 or more"))?;
            let backend = DockerBackend::connect().await?;
            let s = backend.scale(&session, workers).await?;
            println!("{} now has {} workers", s.id, s.workers);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { session, all } => {
            let backend = DockerBackend::connect().await?;
            let ids = match session {
                Some(s) if !all => vec![s],
                _ => backend.list().await?.into_iter().map(|s| s.id).collect(),
            };
            for id in ids {
                match backend.stop(&id).await {
                    Ok(()) => eprintln!("stopped {id}"),
                    // Gone meanwhile (another stop, a launch cleaning up after itself).
                    Err(berth_launcher::LaunchError::UnknownSession(_)) if all => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { session } => {
            let backend = DockerBackend::connect().await?;
            print_out(&backend.logs(&session).await?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen, config } => {
            let mut cfg = match config {
                Some(path) => berth_web::Config::load(&path).map_err(anyhow::Error::msg)?,
                None => berth_web::Config::default(),
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            eprintln!("berth: serving on http://{}", cfg.listen);
            berth_web::serve(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cull { max_idle, sessions } => {
            let backend = DockerBackend::connect().await?;
            for id in &sessions {
                backend.get(id).await?;
            }
            let only = (!sessions.is_empty()).then_some(sessions.as_slice());
            for id in berth_launcher::cull(&backend, max_idle, only).await? {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
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
        for w in co.warnings.iter().chain(&plan.warnings) {
            eprintln!("warning: {w}");
        }
        if args.plan {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", berth_builder::dockerfile(&req, &co, &plan));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = build_with_progress(&Engine::connect().await?, &req).await?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", outcome.image);
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds (or reuses) with progress on stderr.
async fn build_with_progress(engine: &Engine, req: &BuildRequest) -> anyhow::Result<BuildOutcome> {
    let progress = Progress::new();
    let report = |ev: BuildEvent| progress.event(ev);
    let outcome = berth_builder::build(engine, req, &report).await;
    progress.finish();
    outcome.with_context(|| {
        format!(
            "cannot build {}",
            berth_builder::shorten(&berth_builder::redact_url(&req.source))
        )
    })
}

fn session_labels(outcome: &BuildOutcome, req: &BuildRequest) -> Vec<(String, String)> {
    vec![
        (
            "berth.repo_url".into(),
            berth_builder::redact_url(&req.source),
        ),
        (
            "berth.ref".into(),
            req.reference.clone().unwrap_or_else(|| "HEAD".into()),
        ),
        ("berth.commit".into(), outcome.commit.clone()),
    ]
}

async fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    // Until the URL is printed, SIGINT and SIGTERM remove whatever the launch started.
    let mut signals = Signals::install()?;
    let started = Instant::now();
    let req = args.opts.request();
    // Check what can be checked before anything is built or started.
    if let Some(open) = args.open.open() {
        open.url_path()?;
    }
    // One connection (and API version negotiation) serves the build and the session.
    let engine = Engine::connect().await?;
    let backend = DockerBackend::with_client(engine.docker().clone());
    let id = berth_launcher::new_session_id(&name_hint(&req.source));
    let work = async {
        let outcome = build_with_progress(&engine, &req).await?;
        let mut spec = args.session.spec(&outcome.image, &req.source);
        spec.id = Some(id.clone());
        spec.open = args.open.open();
        spec.port = args.port;
        spec.labels = session_labels(&outcome, &req);
        eprintln!("berth: starting session ({} workers)", spec.workers);
        Ok::<_, anyhow::Error>(backend.start(&spec).await?)
    };
    let session = tokio::select! {
        r = work => r?,
        code = signals.recv() => {
            eprintln!("berth: interrupted; removing session {id}");
            berth_builder::finish_cleanups().await;
            remove_session(&backend, &id).await?;
            return Ok(ExitCode::from(128 + code));
        }
    };
    if args.json {
        let v = serde_json::json!({
            "session": session.id,
            "url": session.url,
            "token": session.token,
            "image": session.image,
            "workers": session.workers,
            "dashboard_url": session.dashboard_url,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{v}");
    } else {
        if let Some(d) = &session.dashboard_url {
            eprintln!("berth: session {} ready; Dask dashboard at {d}", session.id);
        }
        println!("{}", session.url);
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Handlers first: from here on SIGINT and SIGTERM end the work below, not the process, so
    // whatever it started is removed.
    let mut signals = Signals::install()?;
    let req = args.opts.request();
    // One connection (and API version negotiation) serves the build and the session.
    let engine = Engine::connect().await?;
    let backend = DockerBackend::with_client(engine.docker().clone());
    // The session id is chosen before anything starts, so an interrupt at any moment knows
    // what to remove.
    let id = berth_launcher::new_session_id(&name_hint(&req.source));
    let work = async {
        let outcome = build_with_progress(&engine, &req).await?;
        let mut spec = args.session.spec(&outcome.image, &req.source);
        spec.id = Some(id.clone());
        spec.command = Some(args.command.clone());
        spec.labels = session_labels(&outcome, &req);
        let session = backend.start(&spec).await?;
        eprintln!("berth: session {} running the command", session.id);
        Ok::<_, anyhow::Error>(backend.attach(&session.id).await?)
    };
    let result = tokio::select! {
        r = work => r,
        sig = signals.recv() => {
            eprintln!("berth: interrupted; removing session {id}");
            berth_builder::finish_cleanups().await;
            // 128 + the signal's number, as a shell reports it.
            Ok(128 + i64::from(sig))
        }
    };
    let removed = remove_session(&backend, &id).await;
    let code = result?;
    removed?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// The number of the first signal received (2 or 15).
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
        }
    }
}

/// Removes everything of session `id` (nothing there is fine). Twice, half a second apart: a
/// container the engine was still creating when the launch was interrupted appears only after
/// the request that created it was dropped.
async fn remove_session(backend: &DockerBackend, id: &str) -> anyhow::Result<()> {
    for pass in 0..2 {
        match backend.stop(id).await {
            Ok(()) | Err(berth_launcher::LaunchError::UnknownSession(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if pass == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

async fn ls(json: bool) -> anyhow::Result<ExitCode> {
    let backend = DockerBackend::connect().await?;
    let sessions = backend.list().await?;
    if json {
        print_out(&format!("{}\n", serde_json::to_string(&sessions)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono_now();
    let mut text = format!(
        "{:<28} {:<8} {:<9} {:<9} {:<40} URL\n",
        "SESSION", "AGE", "WORKERS", "STATUS", "IMAGE"
    );
    for s in sessions {
        let age = Duration::from_secs(now.saturating_sub(s.created).max(0) as u64);
        let status = s.status.as_str();
        text += &format!(
            "{:<28} {:<8} {:<9} {:<9} {:<40} {}\n",
            s.id,
            humantime::format_duration(Duration::from_secs(age.as_secs() / 60 * 60))
                .to_string()
                .replace(' ', ""),
            format!("{}/{}", s.workers, s.workers_wanted),
            status,
            s.image,
            s.url
        );
    }
    print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout; a reader that went away (`berth ls | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
