//! `berth`: turn a Git repository into a running, reproducible analysis environment.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

mod bundle_cmd;
mod data_cmd;
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
    /// Where sessions run: `docker` (this engine's containers) or `swarm` (services of the
    /// swarm this engine manages; `docker swarm init` makes one).
    #[arg(long, global = true, env = "BERTH_BACKEND", value_enum, default_value_t = BackendKind::Docker)]
    backend: BackendKind,
    #[command(subcommand)]
    command: Command,
}

/// The session backends berth has.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    /// Containers of this Docker engine, one bridge network per session.
    Docker,
    /// Services of Docker's swarm mode, one overlay network per session.
    Swarm,
}

/// The backend `--backend` chose, set once at start.
static BACKEND: std::sync::OnceLock<BackendKind> = std::sync::OnceLock::new();

/// The session backend chosen with `--backend`, connected.
async fn session_backend() -> anyhow::Result<std::sync::Arc<dyn Backend>> {
    Ok(
        match BACKEND.get().copied().unwrap_or(BackendKind::Docker) {
            BackendKind::Docker => std::sync::Arc::new(DockerBackend::connect().await?),
            BackendKind::Swarm => {
                std::sync::Arc::new(berth_launcher::SwarmBackend::connect().await?)
            }
        },
    )
}

/// Starts `berth adapt SESSION` as a process of its own (its own process group, so it
/// outlives this one and a Ctrl-C here), logging to `<cache dir>/adapt/SESSION.log`; returns
/// the log's path.
fn spawn_adapter(session: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::process::CommandExt;
    let dir = berth_builder::default_cache_dir().join("adapt");
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join(format!("{session}.log"));
    let log = std::fs::File::create(&log_path)?;
    let backend = match BACKEND.get().copied().unwrap_or(BackendKind::Docker) {
        BackendKind::Docker => "docker",
        BackendKind::Swarm => "swarm",
    };
    std::process::Command::new(std::env::current_exe()?)
        .args(["--backend", backend, "adapt", session])
        .env(
            "BERTH_LOG",
            std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    Ok(log_path)
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
    /// Keep an adaptive session's workers between its MIN and MAX (from the scheduler's own
    /// estimate) until the session stops; `berth launch --adapt` starts this in the background.
    Adapt {
        /// The session id (see berth ls).
        session: String,
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
    /// Print an image's provenance and exact packages (kernel and server environments).
    Inspect(InspectArgs),
    /// Write a PEP 751 pylock.toml of the packages a repository's image holds, so committing
    /// it makes the next build exact.
    Lock(LockArgs),
    /// Write an image (built from SOURCE first when needed) as one bundle file that runs, and
    /// with --sources rebuilds, with no network: OCI image layout, berth's manifest, the
    /// repository as a git bundle.
    Export(bundle_cmd::ExportArgs),
    /// Check every digest of a bundle, then load its images; prints the image.
    Import(bundle_cmd::ImportArgs),
    /// Rebuild a bundle's environment from its sources with no network, and report whether
    /// the env hash and the kernel's packages are the same.
    Rebuild(bundle_cmd::RebuildArgs),
    /// The data library: add NetCDF/Zarr as versioned Zarr v3 data sets, list, inspect,
    /// verify, remove, and draw them.
    Data(data_cmd::DataArgs),
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
    /// Adaptive workers: the scheduler's own estimate moves the count between MIN and MAX
    /// (workers come when tasks queue and go when idle; MIN may be 0). Instead of --workers.
    #[arg(long, value_name = "MIN:MAX", conflicts_with = "workers")]
    adapt: Option<String>,
    /// A registry every node of the backend pulls from (host:port or host:port/prefix, as
    /// berth build --push): the images are pushed there after the build (no layer twice) and
    /// the session runs the pushed reference. For --backend swarm with more than one node.
    #[arg(long, env = "BERTH_REGISTRY", value_name = "HOST:PORT[/PREFIX]")]
    registry: Option<String>,
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
    /// An environment variable of the Jupyter (or command) container, the scheduler and the
    /// workers, as repo2docker's -e: KEY=VALUE, or KEY to pass this shell's value on.
    /// Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Bind-mount a host path into the Jupyter (or command) container and the workers, as
    /// repo2docker's -v: SRC:DEST, read-write, or SRC:DEST:ro. SRC may be relative and must
    /// exist; DEST is absolute. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DEST")]
    volume: Vec<String>,
    /// A data set of berth's data library (see berth data), NAME or NAME@VERSION, mounted
    /// read-only at /data/NAME in the Jupyter (or command) container and on every worker.
    /// Repeatable; added to those the repository's berth-data.txt names.
    #[arg(long = "data", value_name = "NAME[@VERSION]")]
    data: Vec<String>,
    /// The data library's root (default: $BERTH_DATA_DIR, else $XDG_DATA_HOME/berth/data,
    /// else ~/.local/share/berth/data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// The `-e`, `-v` and `--data` of a session, parsed and checked.
struct SessionExtras {
    env: Vec<(String, String)>,
    volumes: Vec<berth_launcher::Volume>,
    adapt: Option<berth_launcher::Adapt>,
    registry: Option<berth_builder::Registry>,
}

impl SessionOpts {
    /// Parses `-e` and `-v` (before anything is built, so a bad one costs nothing).
    fn extras(&self) -> anyhow::Result<SessionExtras> {
        let mut env = Vec::new();
        for e in &self.env {
            if let Some(kv) = berth_launcher::parse_env(e, |k| std::env::var(k).ok())? {
                env.push(kv);
            }
        }
        let cwd = std::env::current_dir().context("cannot read the current folder")?;
        let volumes = self
            .volume
            .iter()
            .map(|v| berth_launcher::Volume::parse(v, &cwd))
            .collect::<Result<Vec<_>, _>>()?;
        // Resolved now, so an unknown data set costs no build and starts nothing.
        self.data_mounts(&[])?;
        let adapt = self
            .adapt
            .as_deref()
            .map(|a| berth_launcher::Adapt::parse(a, self.max_workers))
            .transpose()?;
        let registry = self
            .registry
            .as_deref()
            .map(berth_builder::Registry::parse)
            .transpose()?;
        Ok(SessionExtras {
            env,
            volumes,
            adapt,
            registry,
        })
    }

    /// The data sets to mount: `--data`, then those `image` declares (its
    /// `berth.data.requires` label, from the repository's berth-data.txt), exact versions.
    fn data_mounts(&self, declared: &[String]) -> anyhow::Result<Vec<berth_launcher::DataMount>> {
        data_cmd::session_data(&self.data_dir, &self.data, declared)
    }

    /// The data sets of a session of `image`: `--data`, then `bundled` (a bundle's data sets,
    /// `NAME@VERSION`), then those its label declares.
    async fn data_for(
        &self,
        engine: &Engine,
        image: &str,
        bundled: &[String],
    ) -> anyhow::Result<Vec<berth_launcher::DataMount>> {
        let declared: Vec<String> = engine
            .image(image)
            .await?
            .and_then(|i| i.labels.get(berth_builder::labels::DATA).cloned())
            .map(|l| {
                l.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let requested: Vec<String> = self.data.iter().chain(bundled).cloned().collect();
        data_cmd::session_data(&self.data_dir, &requested, &declared)
    }

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

/// repo2docker's options of the image: where the repository goes, its user, its labels, a
/// Dockerfile's build args, and the folder to build.
#[derive(Args, Clone)]
struct ImageOpts {
    /// Where the repository lives in the image ($REPO_DIR), an absolute path (default: the
    /// user's home, /home/<user-name>).
    #[arg(long, value_name = "DIR")]
    target_repo_dir: Option<String>,
    /// The uid of the user the image runs as (1 to 65534).
    #[arg(long, value_name = "UID", default_value_t = berth_builder::DEFAULT_USER_ID)]
    user_id: u32,
    /// The name of the user the image runs as (a login name); its home is /home/<NAME>.
    #[arg(long, value_name = "NAME", default_value = berth_builder::DEFAULT_USER_NAME)]
    user_name: String,
    /// A label of the image, KEY=VALUE (keys starting with berth. are berth's). Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A build arg for a repository's own Dockerfile, KEY=VALUE, or KEY to pass this shell's
    /// value on; ignored with a warning by the other buildpacks. Repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Build this folder of the repository as if it were the repository.
    #[arg(long, value_name = "DIR")]
    subdir: Option<String>,
}

impl ImageOpts {
    /// Sets the request's image options (checked later by the builder, with one error line).
    fn apply(&self, req: &mut BuildRequest) {
        req.user_id = self.user_id;
        req.user_name = self.user_name.clone();
        req.repo_dir = self
            .target_repo_dir
            .clone()
            .unwrap_or_else(|| format!("/home/{}", self.user_name));
        // `--label KEY` is an empty label, as `docker build --label KEY`.
        for l in &self.labels {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            req.labels.insert(k.to_string(), v.to_string());
        }
        // `--build-arg KEY` takes this shell's value, as `docker build`; none, none passed.
        for a in &self.build_args {
            match a.split_once('=') {
                Some((k, v)) => {
                    req.build_args.insert(k.to_string(), v.to_string());
                }
                None => {
                    if let Ok(v) = std::env::var(a) {
                        req.build_args.insert(a.clone(), v);
                    }
                }
            }
        }
        req.subdir = self.subdir.clone();
    }
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
    /// Build with the nearest available Python when no base image has the requested one and
    /// uv cannot install it; the requested and actual versions are recorded in image labels.
    #[arg(long)]
    python_fallback: bool,
    /// A CA bundle (PEM) handed to build steps, for networks that intercept TLS.
    #[arg(long, env = "BERTH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The image of the default base (the first of --bases) in place of its own; its Python
    /// and suite stay. berth-base:* images are created locally with debootstrap.
    #[arg(long, env = "BERTH_BASE_IMAGE", value_name = "IMAGE")]
    base_image: Option<String>,
    /// The base images, one per Python, as PYTHON=SUITE=IMAGE, comma-separated, the default
    /// Python's first.
    #[arg(
        long,
        env = "BERTH_BASES",
        value_delimiter = ',',
        value_name = "X.Y=SUITE=IMAGE,...",
        default_value = "3.11=bookworm=berth-base:bookworm,3.13=trixie=berth-base:trixie"
    )]
    bases: Vec<berth_builder::PythonBase>,
    /// Where uv downloads a Python that no base has: uv (its own source), a mirror's URL
    /// (uv's UV_PYTHON_INSTALL_MIRROR), or none.
    #[arg(
        long,
        env = "BERTH_PYTHON_MIRROR",
        value_name = "URL",
        default_value = "uv"
    )]
    python_mirror: berth_builder::PythonDownloads,
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
    #[command(flatten)]
    image: ImageOpts,
}

impl BuildOpts {
    fn request(&self) -> BuildRequest {
        let mut req = BuildRequest::new(self.source.clone());
        req.reference = self.reference.clone();
        req.image_name = self.image_name.clone();
        req.no_cache = self.no_cache;
        req.python_fallback = self.python_fallback;
        req.ca_cert = self.ca_cert.clone();
        req.bases = self.bases.clone();
        if let (Some(image), Some(default)) = (&self.base_image, req.bases.first_mut()) {
            default.image = image.clone();
        }
        req.python_downloads = self.python_mirror.clone();
        req.debian_mirror = self.debian_mirror.clone();
        req.max_repo_bytes = self.max_repo_bytes;
        req.timeout = self.build_timeout;
        req.limits = berth_builder::BuildLimits {
            memory_bytes: Some(self.build_memory),
            pids: Some(self.build_pids),
        };
        self.image.apply(&mut req);
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
    /// Build with no network: every build step on Docker's `none` network, Debian packages and
    /// Python distributions only from the sources folder ($BERTH_SOURCES_DIR, else sources/
    /// in the cache folder), a URL only from berth's repository cache.
    #[arg(long)]
    offline: bool,
    /// Push the environment image and the repository image to the registry (--registry) after
    /// the build, as <registry>/<name>:<tag>; stdout then has the pushed references, the
    /// runnable image's first.
    #[arg(long)]
    push: bool,
    /// The registry --push pushes to: host:port (e.g. 127.0.0.1:5000) or host:port/prefix.
    #[arg(long, env = "BERTH_REGISTRY", value_name = "HOST:PORT[/PREFIX]")]
    registry: Option<String>,
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
    let _ = BACKEND.set(cli.backend);
    match cli.command {
        Command::Build(args) => build(args).await,
        Command::Launch(args) => launch(args).await,
        Command::Run(args) => run_command(args).await,
        Command::Ls { json } => ls(json).await,
        Command::Scale { session, workers } => {
            let workers = u32::try_from(workers)
                .map_err(|_| anyhow::anyhow!("cannot scale session {session} to {workers} workers: the count must be 0 or more"))?;
            let backend = session_backend().await?;
            let s = backend.scale(&session, workers).await?;
            println!("{} now has {} workers", s.id, s.workers);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { session, all } => {
            let backend = session_backend().await?;
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
        Command::Adapt { session } => {
            let backend = session_backend().await?;
            berth_launcher::adapt::run(backend, Some(session.clone())).await?;
            eprintln!("berth: session {session} is gone; adapting ends");
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { session } => {
            let backend = session_backend().await?;
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
        Command::Inspect(args) => inspect(args).await,
        Command::Lock(args) => lock(args).await,
        Command::Export(args) => bundle_cmd::export(args).await,
        Command::Import(args) => bundle_cmd::import(args).await,
        Command::Rebuild(args) => bundle_cmd::rebuild(args).await,
        Command::Data(args) => data_cmd::data(args).await,
        Command::Cull { max_idle, sessions } => {
            let backend = session_backend().await?;
            for id in &sessions {
                backend.get(id).await?;
            }
            let only = (!sessions.is_empty()).then_some(sessions.as_slice());
            for id in berth_launcher::cull(backend.as_ref(), max_idle, only).await? {
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
                    Phase::Pushing => "pushing",
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
    let mut req = args.opts.request();
    if args.offline {
        req.offline = Some(berth_builder::sources::default_sources_dir());
    }
    if args.push {
        let Some(r) = &args.registry else {
            anyhow::bail!("--push needs a registry: --registry HOST:PORT or BERTH_REGISTRY");
        };
        req.registry = Some(berth_builder::Registry::parse(r)?);
    }
    req.validate()?;
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
    } else if let Some(p) = &outcome.pushed {
        // The references nodes pull, the runnable image's first; the figures go to stderr.
        for i in &p.images {
            eprintln!(
                "berth: pushed {} ({}) in {:.1} s: {}",
                i.reference,
                i.digest.as_deref().unwrap_or("no digest reported"),
                i.seconds,
                i.stats
            );
        }
        println!("{}", p.image);
        if p.env_image != p.image {
            println!("{}", p.env_image);
        }
    } else {
        println!("{}", outcome.image);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
struct InspectArgs {
    /// A local image (as `berth build` printed it), or a repository to build first.
    #[command(flatten)]
    opts: BuildOpts,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LockArgs {
    #[command(flatten)]
    opts: BuildOpts,
    /// Write the lock to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The image named by SOURCE when it is a local image; else the image a build of SOURCE gives.
async fn image_of(engine: &Engine, opts: &BuildOpts) -> anyhow::Result<String> {
    let looks_like_image = !opts.source.contains("://")
        && !std::path::Path::new(&opts.source).exists()
        && berth_builder::validate_image_name(&opts.source).is_ok();
    if looks_like_image && engine.image(&opts.source).await?.is_some() {
        return Ok(opts.source.clone());
    }
    let req = opts.request();
    req.validate()?;
    Ok(build_with_progress(engine, &req).await?.image)
}

async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::connect().await?;
    let image = image_of(&engine, &args.opts).await?;
    let p = berth_builder::record::provenance(&engine, &image).await?;
    if args.json {
        print_out(&format!("{}\n", serde_json::to_string_pretty(&p)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = String::new();
    out.push_str(&format!("image        {} ({})\n", p.image, p.id));
    out.push_str(&format!("repository   {}\n", dash(&p.repo_url)));
    out.push_str(&format!("ref          {}\n", dash(&p.r#ref)));
    out.push_str(&format!("commit       {}\n", dash(&p.commit)));
    out.push_str(&format!("env hash     {}\n", dash(&p.env_hash)));
    out.push_str(&format!("buildpack    {}\n", dash(&p.buildpack)));
    out.push_str(&format!(
        "python       {} (requested {})\n",
        dash(&p.python_actual),
        p.python_requested.as_deref().unwrap_or("nothing")
    ));
    out.push_str(&format!("base image   {}\n", dash(&p.base_image_id)));
    out.push_str(&format!("berth        {}\n", dash(&p.berth_version)));
    match (&p.packages, &p.packages_sha256) {
        (Some(pk), digest) => {
            out.push_str(&format!(
                "packages     sha256:{} ({})\n",
                digest.as_deref().unwrap_or("-"),
                if p.verified {
                    "verified"
                } else {
                    "not verified: no label or a different digest"
                }
            ));
            let mut list = |title: &str, list: &Option<Vec<berth_builder::record::Package>>| {
                if let Some(l) = list {
                    out.push_str(&format!("\n{title} ({} packages)\n", l.len()));
                    for pkg in l {
                        let extra = if pkg.editable { "  (editable)" } else { "" };
                        out.push_str(&format!("  {:<32} {}{extra}\n", pkg.name, pkg.version));
                    }
                }
            };
            list("kernel environment", &Some(pk.kernel.clone()));
            list("server environment", &pk.server);
            list("dashboard (scheduler only)", &pk.dashboard);
        }
        (None, _) => out.push_str("packages     none recorded (not built by berth's buildpacks)\n"),
    }
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

async fn lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::connect().await?;
    let image = image_of(&engine, &args.opts).await?;
    let Some((packages, _)) = berth_builder::record::read_packages(&engine, &image).await? else {
        anyhow::bail!(
            "{image} has no package record: only images built by berth's buildpacks can be locked"
        );
    };
    let pins = berth_builder::record::pinned_requirements(&packages.kernel);
    // uv resolves the pinned set against the index for the image's own interpreter, which
    // gives every wheel's URL and hash; the versions cannot move (every package is pinned).
    let script = "printf '%s' \"$BERTH_PINS\" > /tmp/berth-pins.txt && uv pip compile --quiet --no-header --format pylock.toml --python /srv/venv/bin/python /tmp/berth-pins.txt";
    let (code, out, err) = berth_builder::record::run_in_image(
        &engine,
        &image,
        script,
        vec![format!("BERTH_PINS={pins}"), "NO_COLOR=1".into()],
    )
    .await?;
    if code != 0 {
        let reason = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("uv failed");
        anyhow::bail!("cannot lock {image}: {}", reason.trim());
    }
    let text = format!(
        "# Written by `berth lock` from {image}: the kernel environment's {} packages.\n{out}",
        packages.kernel.len()
    );
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "berth: wrote {} ({} packages)",
                path.display(),
                packages.kernel.len()
            );
        }
        None => print_out(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds (or reuses) with progress on stderr.
async fn build_with_progress(engine: &Engine, req: &BuildRequest) -> anyhow::Result<BuildOutcome> {
    let progress = Progress::new();
    let report = |ev: BuildEvent| progress.event(ev);
    let outcome = berth_builder::build(engine, req, &report).await;
    progress.finish();
    let verb = match &outcome {
        // The images were built; the push is what failed.
        Err(berth_builder::BuildError::Registry(_)) => "cannot push the images of",
        _ => "cannot build",
    };
    outcome.with_context(|| {
        format!(
            "{verb} {}",
            berth_builder::shorten(&berth_builder::redact_url(&req.source))
        )
    })
}

/// The image a session runs: a bundle file's (imported when the engine lacks it, its data sets
/// added to the library at `data_dir`), with the label recording the bundle's digest; else
/// the build's.
async fn outcome_for(
    engine: &Engine,
    req: &BuildRequest,
    data_dir: &Option<PathBuf>,
) -> anyhow::Result<(BuildOutcome, Vec<(String, String)>)> {
    if bundle_cmd::is_bundle(&req.source) {
        let (outcome, label, m) =
            bundle_cmd::outcome_of_bundle(engine, std::path::Path::new(&req.source), data_dir)
                .await?;
        let mut labels = vec![label];
        if let Some(r) = m.repo {
            labels.push(("berth.repo_url".into(), r.url));
            labels.push(("berth.ref".into(), r.r#ref));
        }
        return Ok((outcome, labels));
    }
    Ok((build_with_progress(engine, req).await?, Vec::new()))
}

/// The image a session runs: the registry's reference when the build pushed one (every node
/// pulls it), else the local image.
fn session_image(outcome: &BuildOutcome) -> &str {
    outcome
        .pushed
        .as_ref()
        .map_or(outcome.image.as_str(), |p| p.image.as_str())
}

/// A bundle's data sets (exact versions) for a session of `outcome`; none for a build, whose
/// declared data sets come from its image's label.
fn bundled_data<'a>(req: &BuildRequest, outcome: &'a BuildOutcome) -> &'a [String] {
    if bundle_cmd::is_bundle(&req.source) {
        &outcome.data
    } else {
        &[]
    }
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
    let mut req = args.opts.request();
    // Check what can be checked before anything is built or started.
    if let Some(open) = args.open.open() {
        open.url_path()?;
    }
    let extras = args.session.extras()?;
    req.registry = extras.registry.clone();
    req.validate()?;
    // One connection (and API version negotiation) serves the build and the session.
    let engine = Engine::connect().await?;
    let backend = session_backend().await?;
    let id = berth_launcher::new_session_id(&name_hint(&req.source));
    let work = async {
        let (outcome, bundle) = outcome_for(&engine, &req, &args.session.data_dir).await?;
        let mut spec = args.session.spec(session_image(&outcome), &req.source);
        spec.id = Some(id.clone());
        spec.repo_dir = req.repo_dir.clone();
        spec.env = extras.env;
        spec.volumes = extras.volumes;
        spec.data = args
            .session
            .data_for(&engine, &outcome.image, bundled_data(&req, &outcome))
            .await?;
        spec.open = args.open.open();
        spec.port = args.port;
        spec.adapt = extras.adapt;
        spec.labels = session_labels(&outcome, &req);
        spec.labels.extend(bundle);
        match spec.adapt {
            Some(a) => eprintln!(
                "berth: starting session (adaptive: {} to {} workers)",
                a.min, a.max
            ),
            None => eprintln!("berth: starting session ({} workers)", spec.workers),
        }
        Ok::<_, anyhow::Error>(backend.start(&spec).await?)
    };
    let session = tokio::select! {
        r = work => r?,
        code = signals.recv() => {
            eprintln!("berth: interrupted; removing session {id}");
            berth_builder::finish_cleanups().await;
            remove_session(backend.as_ref(), &id).await?;
            return Ok(ExitCode::from(128 + code));
        }
    };
    if session.adapt.is_some() {
        match spawn_adapter(&session.id) {
            Ok(log) => eprintln!(
                "berth: adapting the workers of {} in the background (log: {})",
                session.id,
                log.display()
            ),
            Err(e) => eprintln!(
                "berth: warning: cannot start adapting ({e}); run berth adapt {}",
                session.id
            ),
        }
    }
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
    let mut req = args.opts.request();
    // Check what can be checked before anything is built or started.
    let extras = args.session.extras()?;
    req.registry = extras.registry.clone();
    req.validate()?;
    // One connection (and API version negotiation) serves the build and the session.
    let engine = Engine::connect().await?;
    let backend = session_backend().await?;
    // The session id is chosen before anything starts, so an interrupt at any moment knows
    // what to remove.
    let id = berth_launcher::new_session_id(&name_hint(&req.source));
    let work = async {
        let (outcome, bundle) = outcome_for(&engine, &req, &args.session.data_dir).await?;
        let mut spec = args.session.spec(session_image(&outcome), &req.source);
        spec.id = Some(id.clone());
        spec.repo_dir = req.repo_dir.clone();
        spec.env = extras.env;
        spec.volumes = extras.volumes;
        spec.data = args
            .session
            .data_for(&engine, &outcome.image, bundled_data(&req, &outcome))
            .await?;
        spec.command = Some(args.command.clone());
        spec.adapt = extras.adapt;
        spec.labels = session_labels(&outcome, &req);
        spec.labels.extend(bundle);
        let session = backend.start(&spec).await?;
        eprintln!("berth: session {} running the command", session.id);
        let attached = backend.attach(&session.id).await?;
        // This process adapts the workers while the command runs.
        let adapter = spec.adapt.map(|_| {
            tokio::spawn(berth_launcher::adapt::run(
                backend.clone(),
                Some(session.id.clone()),
            ))
        });
        let code = follow(attached).await;
        if let Some(a) = adapter {
            a.abort();
        }
        Ok::<_, anyhow::Error>(code?)
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
    let removed = remove_session(backend.as_ref(), &id).await;
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
/// Writes a command's output to this process's stdout and stderr as it comes, then returns
/// its exit status. A closed pipe (`berth run … | head`) drops the rest of the output, and the
/// command still runs to its end.
async fn follow(attached: berth_launcher::Attached) -> Result<i64, berth_launcher::LaunchError> {
    use futures_util::StreamExt;
    use std::io::Write;
    let mut output = attached.output;
    while let Some(piece) = output.next().await {
        let _ = match piece? {
            berth_launcher::Output::Stdout(b) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&b).and_then(|()| out.flush())
            }
            berth_launcher::Output::Stderr(b) => std::io::stderr().write_all(&b),
        };
    }
    attached.exit.await
}

async fn remove_session(backend: &dyn Backend, id: &str) -> anyhow::Result<()> {
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
    let backend = session_backend().await?;
    let sessions = backend.list().await?;
    if json {
        print_out(&format!("{}\n", serde_json::to_string(&sessions)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono_now();
    let mut text = format!(
        "{:<28} {:<8} {:<9} {:<9} {:<40} {:<6} URL\n",
        "SESSION", "AGE", "WORKERS", "STATUS", "IMAGE", "POOL"
    );
    for s in sessions {
        let age = Duration::from_secs(now.saturating_sub(s.created).max(0) as u64);
        let status = s.status.as_str();
        text += &format!(
            "{:<28} {:<8} {:<9} {:<9} {:<40} {:<6} {}\n",
            s.id,
            humantime::format_duration(Duration::from_secs(age.as_secs() / 60 * 60))
                .to_string()
                .replace(' ', ""),
            format!("{}/{}", s.workers, s.workers_wanted),
            status,
            s.image,
            // Started ahead of demand by a server's warm pool (`warm_pool`).
            if s.pool.is_some() { "warm" } else { "-" },
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
