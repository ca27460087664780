//! berth's web server: the launch form, BinderHub-compatible launch URLs (`/v2/…`) and
//! event-stream build API (`/build/…`), badges, health, versions, Prometheus metrics, and a proxy
//! to sessions at `/user/<session>/…` (HTTP and WebSocket); when the operator enables it,
//! downloads of a session's environment as a berth bundle at `/export/…` ([`export`]); the data
//! library, read-only, at `/data/…` (pages, a STAC catalog and the Zarr stores: [`data`]).
//!
//! Builds go through a [`Builder`] and sessions through a [`berth_launcher::Backend`], both
//! trait objects in [`AppState`]: the server uses the Docker engine ([`engine::DockerEngine`]),
//! tests can use fakes.
#![deny(missing_docs)]

pub mod builds;
pub mod config;
pub mod data;
pub mod engine;
pub mod error;
pub mod events;
pub mod export;
pub mod policy;
pub mod pool;
pub mod providers;
mod proxy;
pub mod session_data;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use berth_builder::{BuildLimits, BuildRequest, HostPolicy};
use berth_launcher::{Backend, Limits, OpenPath, SessionSpec};
use futures_util::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use builds::Builder;
pub use config::Config;
pub use error::{ApiError, WebError};
pub use events::{Event, Ready};
pub use export::Exporter;
use providers::RepoSpec;

/// What every request handler shares.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    hub: Arc<builds::BuildHub>,
    backend: Arc<dyn Backend>,
    allow: Vec<regex::Regex>,
    deny: Vec<regex::Regex>,
    policy: HostPolicy,
    /// Session id → (Jupyter server URL, token), filled from the backend on first use.
    sessions: Mutex<HashMap<String, (String, String)>>,
    http: reqwest::Client,
    exports: export::Exports,
    data: data::DataCache,
    /// The warm pool (`warm_pool`); empty when none is configured.
    pub pool: pool::WarmPool,
    /// Turns for starting sessions (`launch_concurrency`); `None`: no limit.
    starts: Option<tokio::sync::Semaphore>,
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A pattern in `allow` or `deny` is not a regular expression.
    #[error("invalid pattern {0:?} in the configuration: {1}")]
    Pattern(String, String),
    /// An `allow_private_hosts` entry is no host name, address or CIDR block.
    #[error("invalid allow_private_hosts entry in the configuration: {0}")]
    AllowedHost(String),
    /// A `warm_pool` entry names no launchable spec.
    #[error("invalid warm_pool entry {0:?} in the configuration: {1}")]
    Pool(String, String),
    /// `adapt` is not `MIN:MAX` within `max_workers`.
    #[error("invalid adapt in the configuration: {0}")]
    Adapt(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
}

/// BinderHub's histogram buckets (seconds, `binderhub/builder.py`): builds and launches take
/// very different times. Its metric names are recorded beside berth's, so that operators'
/// BinderHub dashboards work: `binderhub_build_time_seconds{status}`,
/// `binderhub_launch_time_seconds{status,retries}` (`retries` is `0` on success, `-1` on
/// failure, as BinderHub's), `binderhub_inprogress_builds`, `binderhub_inprogress_launches`.
const BINDERHUB_BUILD_BUCKETS: [f64; 7] = [60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];
const BINDERHUB_LAUNCH_BUCKETS: [f64; 9] = [2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::Matcher;
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("binderhub_build_time_seconds".into()),
                    &BINDERHUB_BUILD_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("binderhub_launch_time_seconds".into()),
                        &BINDERHUB_LAUNCH_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new())
        };
        builder()
            .install_recorder()
            .unwrap_or_else(|_| builder().build_recorder().handle())
    })
}

impl AppState {
    /// The state of a server on the Docker engine (connected on first need; a warning when it
    /// cannot be reached yet).
    ///
    /// # Errors
    /// As [`AppState::with_parts`].
    pub async fn new(config: Config) -> Result<Arc<Self>, ServeError> {
        let engine = Arc::new(engine::DockerEngine::with_backend(config.backend));
        if let Err(e) = engine.engine().await {
            tracing::warn!(error = %e, "the Docker engine is not reachable yet");
            eprintln!("warning: {e}");
        }
        Self::with_exporter(config, engine.clone(), engine.clone(), Some(engine))
    }

    /// The state of a server whose sessions run on `backend` and whose images `builder` builds.
    ///
    /// # Errors
    /// [`ServeError::Pattern`] for an `allow` or `deny` entry that is no regular expression,
    /// [`ServeError::AllowedHost`] for an `allow_private_hosts` entry that is no host.
    pub fn with_parts(
        config: Config,
        backend: Arc<dyn Backend>,
        builder: Arc<dyn Builder>,
    ) -> Result<Arc<Self>, ServeError> {
        Self::with_exporter(config, backend, builder, None)
    }

    /// As [`AppState::with_parts`], with the [`Exporter`] of `/export/…` (without one,
    /// `/export/…` answers 404 as when the configuration's `export` is off).
    ///
    /// # Errors
    /// As [`AppState::with_parts`].
    pub fn with_exporter(
        config: Config,
        backend: Arc<dyn Backend>,
        builder: Arc<dyn Builder>,
        exporter: Option<Arc<dyn Exporter>>,
    ) -> Result<Arc<Self>, ServeError> {
        let compile = |ps: &[String]| {
            ps.iter()
                .map(|p| {
                    regex::Regex::new(p).map_err(|e| ServeError::Pattern(p.clone(), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        for entry in &config.allow_private_hosts {
            berth_builder::HostPolicy::validate_entry(entry).map_err(ServeError::AllowedHost)?;
        }
        let mut warm = Vec::new();
        for e in &config.warm_pool {
            let (provider, spec) = e.spec.split_once('/').unwrap_or((e.spec.as_str(), ""));
            let repo = providers::resolve(&config, provider, spec)
                .map_err(|err| ServeError::Pool(e.spec.clone(), err.to_string()))?;
            warm.push((e.spec.clone(), repo, e.sessions));
        }
        if let Some(a) = &config.adapt {
            berth_launcher::Adapt::parse(a, config.max_workers)
                .map_err(|e| ServeError::Adapt(e.to_string()))?;
        }
        metrics_handle();
        let config_starts = config.launch_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        });
        let grace = Duration::from_secs(config.abandoned_build_grace_seconds);
        Ok(Arc::new(Self {
            allow: compile(&config.allow)?,
            deny: compile(&config.deny)?,
            policy: policy::host_policy(&config),
            config,
            hub: Arc::new(builds::BuildHub::new(builder, grace)),
            backend,
            sessions: Mutex::new(HashMap::new()),
            // The browser must see Jupyter's redirects (to its login page, to a notebook), so
            // the proxy never follows them itself.
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            exports: export::Exports::new(exporter),
            data: data::DataCache::default(),
            pool: pool::WarmPool::new(warm),
            starts: match config_starts {
                0 => None,
                n => Some(tokio::sync::Semaphore::new(n)),
            },
        }))
    }

    /// The session backend.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Starts a session on the backend, in turn with the others (`launch_concurrency`).
    async fn start_session(
        &self,
        spec: &SessionSpec,
    ) -> Result<berth_launcher::Session, berth_launcher::LaunchError> {
        let _turn = match &self.starts {
            Some(s) => s.acquire().await.ok(),
            None => None,
        };
        self.backend.start(spec).await
    }

    /// Builds under way.
    pub fn builds_in_progress(&self) -> usize {
        self.hub.in_progress()
    }

    /// The session a launch of `repo` at `commit` starts from `image`: a new id, the proxy's
    /// base URL, the configured workers and limits, the data sets `mounts`, and the labels
    /// that say where it came from.
    fn session_spec(
        &self,
        repo: &RepoSpec,
        image: &str,
        commit: &str,
        mounts: Vec<berth_launcher::DataMount>,
    ) -> SessionSpec {
        let id = berth_launcher::new_session_id(
            repo.repo_url
                .rsplit('/')
                .next()
                .unwrap_or("session")
                .trim_end_matches(".git"),
        );
        let mut spec = SessionSpec::new(image.to_string());
        spec.base_url = Some(format!("/user/{id}/"));
        spec.id = Some(id);
        spec.workers = self.config.workers;
        spec.max_workers = self.config.max_workers;
        // Checked when the server started.
        spec.adapt = self
            .config
            .adapt
            .as_deref()
            .and_then(|a| berth_launcher::Adapt::parse(a, self.config.max_workers).ok());
        spec.limits = Limits {
            memory_bytes: self.config.memory_bytes,
            millicpus: self.config.millicpus,
            ..Limits::default()
        };
        spec.host_access = self.config.allow_host_access;
        spec.data = mounts;
        spec.labels = vec![
            (
                "berth.repo_url".into(),
                berth_builder::redact_url(&repo.repo_url),
            ),
            ("berth.ref".into(), repo.reference.clone()),
            ("berth.commit".into(), commit.to_string()),
            ("berth.binder_request".into(), repo.request()),
        ];
        spec
    }

    fn build_request(&self, repo: &RepoSpec) -> BuildRequest {
        let cfg = &self.config;
        let mut req = BuildRequest::new(repo.repo_url.clone());
        req.reference = Some(repo.reference.clone());
        req.ca_cert = cfg.ca_cert.clone();
        req.python_fallback = cfg.python_fallback;
        req.python_downloads = cfg.python_mirror.clone();
        req.timeout = Duration::from_secs(cfg.build_timeout_seconds);
        req.limits = BuildLimits {
            memory_bytes: cfg.build_memory_bytes,
            pids: cfg.build_pids,
        };
        // Local repositories pass only when the operator allowed them (`allow_local`).
        req.host_policy = (!policy::is_local(repo)).then(|| self.policy.clone());
        req.registry = cfg.registry.clone();
        req
    }
}

/// The router of all pages and APIs.
pub fn router(state: Arc<AppState>) -> Router {
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    // One INFO line per request (`BERTH_LOG=info`): method and path in the span (never the
    // query, where tokens travel), status and latency when the response starts.
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            tracing::info_span!(
                "request",
                method = %req.method(),
                path = %providers::shorten(req.uri().path()),
            )
        })
        .on_request(())
        .on_response(
            DefaultOnResponse::new()
                .level(tracing::Level::INFO)
                .latency_unit(tower_http::LatencyUnit::Millis),
        )
        .on_failure(());
    Router::new()
        .route("/", get(home))
        .route("/v2/{provider}/{*spec}", get(loading_page))
        .route("/build/{provider}/{*spec}", get(build_events))
        .route("/export/{provider}/{*spec}", get(export::download))
        .route("/badge.svg", get(|| async { svg(BADGE_SVG) }))
        .route("/badge_logo.svg", get(|| async { svg(BADGE_LOGO_SVG) }))
        .route("/health", get(health))
        .route("/versions", get(versions))
        .route("/metrics", get(|| async { metrics_handle().render() }))
        .route("/user/{session}", any(proxy::redirect_slash))
        .route("/user/{session}/", any(proxy::proxy_root))
        .route("/user/{session}/{*path}", any(proxy::proxy))
        .merge(data::routes())
        // Forms and APIs take no bodies; uploads through the proxy up to 512 MiB (413 above).
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(trace)
        .with_state(state)
}

/// The largest request body accepted, in bytes (512 MiB): larger ones get 413.
pub const MAX_BODY_BYTES: usize = 512 << 20;

/// Serves until SIGINT or SIGTERM; culls idle sessions and keeps the warm pool filled in the
/// background. On the way out, the warm sessions (never handed out) are stopped.
///
/// # Errors
/// [`ServeError`] when a pattern is invalid or the address is unavailable.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let listen = config.listen.clone();
    let state = AppState::new(config).await?;
    if !state.config.allow_host_access {
        // Sessions that came back after a host reboot are kept from the host at once, not
        // only after the next launch.
        if let Err(e) = berth_launcher::egress::ensure_host_guard().await {
            tracing::warn!(error = %e, "sessions are not kept from the host's services");
            eprintln!("warning: {e}");
        }
    }
    pool::spawn(&state);
    // Adaptive sessions' workers follow their schedulers' estimates (those an earlier server
    // process launched too: the range is a label).
    tokio::spawn(berth_launcher::adapt::run(state.backend.clone(), None));
    if state.config.max_idle_seconds > 0 {
        let s = state.clone();
        tokio::spawn(async move {
            let max_idle = Duration::from_secs(s.config.max_idle_seconds);
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                // Warm sessions are not culled, nor taken ones before they could be idle.
                let only: Vec<String> = match s.backend.list().await {
                    Ok(list) => list
                        .into_iter()
                        .map(|x| x.id)
                        .filter(|id| {
                            !s.pool.is_warm(id) && s.pool.taken_within(id, max_idle).is_none()
                        })
                        .collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "culling failed");
                        continue;
                    }
                };
                match berth_launcher::cull(s.backend.as_ref(), max_idle, Some(&only)).await {
                    Ok(ids) => ids
                        .iter()
                        .for_each(|id| tracing::info!(session = %id, "culled")),
                    Err(e) => tracing::warn!(error = %e, "culling failed"),
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| ServeError::Listen(listen.clone(), e.to_string()))?;
    tracing::info!(%listen, "serving");
    // On a signal the server stops at once (open sessions' WebSockets would hold a graceful
    // shutdown forever); warm sessions were never handed out, so they go with it.
    let served = tokio::select! {
        r = axum::serve(listener, router(state.clone())) => {
            r.map_err(|e| ServeError::Listen(listen, e.to_string()))
        }
        () = shutdown_signal() => Ok(()),
    };
    state.pool.shut_down(state.backend.as_ref()).await;
    served
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

fn svg(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

const BADGE_SVG: &str = include_str!("../templates/badge.svg");
const BADGE_LOGO_SVG: &str = include_str!("../templates/badge_logo.svg");
const HOME_HTML: &str = include_str!("../templates/home.html");
const LOADING_HTML: &str = include_str!("../templates/loading.html");

fn render(template: &str, ctx: minijinja::Value) -> Response {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    match env.render_str(template, ctx) {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template error: {e}"),
        )
            .into_response(),
    }
}

async fn home(State(state): State<Arc<AppState>>) -> Response {
    let mut providers: Vec<&str> = state.config.providers.keys().map(String::as_str).collect();
    providers.push("git");
    render(
        HOME_HTML,
        minijinja::context! { public_url => state.config.public_url(), providers => providers },
    )
}

/// BinderHub's query parameters of launch URLs.
#[derive(Debug, Default, Deserialize)]
struct LaunchQuery {
    urlpath: Option<String>,
    labpath: Option<String>,
    filepath: Option<String>,
    build_only: Option<String>,
}

impl LaunchQuery {
    /// The URL path to open in the session, checked.
    fn open_path(&self) -> Result<String, WebError> {
        let open = if let Some(p) = &self.urlpath {
            OpenPath::UrlPath(p.clone())
        } else if let Some(p) = &self.labpath {
            OpenPath::LabPath(p.clone())
        } else if let Some(p) = &self.filepath {
            OpenPath::FilePath(p.clone())
        } else {
            OpenPath::UrlPath("lab".into())
        };
        open.url_path()
            .map_err(|e| WebError::BadPath(providers::shorten(&e.to_string())))
    }

    fn build_only(&self) -> bool {
        matches!(self.build_only.as_deref(), Some("true" | "1" | "yes"))
    }
}

/// The provider and the spec of `/v2/<provider>/<spec>`, `/build/<provider>/<spec>` or
/// `/export/<provider>/<spec>` as sent, still percent-encoded (axum's path extractor decodes,
/// which would lose the difference between `/` and `%2F` that BinderHub's specs rely on).
fn raw_spec(uri: &Uri) -> (String, String) {
    let path = uri.path().trim_start_matches('/');
    let rest = path.split_once('/').map_or("", |(_, r)| r);
    let (provider, spec) = rest.split_once('/').unwrap_or((rest, ""));
    (provider.to_string(), spec.to_string())
}

/// The data sets of the launch parameter `data=NAME[@VERSION]` (repeatable, or several
/// comma-separated), percent-decoded, each checked with [`session_data::check_spec`]; in
/// order, each once. (Read from the raw query: the typed query keeps one value per key.)
fn data_params(uri: &Uri) -> Result<Vec<String>, WebError> {
    let mut out: Vec<String> = Vec::new();
    for pair in uri.query().unwrap_or("").split('&') {
        let Some(v) = pair.strip_prefix("data=") else {
            continue;
        };
        let v = v.replace('+', " ");
        let v = percent_encoding::percent_decode_str(&v).decode_utf8_lossy();
        for spec in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if spec.len() > 140 {
                return Err(WebError::BadData(format!(
                    "data set {:?} is too long",
                    providers::shorten(spec)
                )));
            }
            session_data::check_spec(spec).map_err(|e| WebError::BadData(e.to_string()))?;
            if !out.iter().any(|o| o == spec) {
                out.push(spec.to_string());
            }
        }
    }
    Ok(out)
}

fn resolve_launch(
    state: &AppState,
    uri: &Uri,
    q: &LaunchQuery,
) -> Result<(RepoSpec, String, Vec<String>), WebError> {
    let (provider, spec) = raw_spec(uri);
    let repo = providers::resolve(&state.config, &provider, &spec)?;
    let open = q.open_path()?;
    let data = data_params(uri)?;
    Ok((repo, open, data))
}

async fn loading_page(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Query(q): Query<LaunchQuery>,
) -> Response {
    match resolve_launch(&state, &uri, &q) {
        Ok((repo, open, _)) => render(
            LOADING_HTML,
            minijinja::context! {
                build_path => format!("/build/{}/{}", repo.provider, repo.spec),
                provider => repo.provider,
                spec => providers::shorten(&repo.spec),
                repo_url => berth_builder::redact_url(&repo.repo_url),
                reference => providers::shorten(&repo.reference),
                open => open,
            },
        ),
        Err(e) => {
            let (provider, spec) = raw_spec(&uri);
            let mut r = render(
                LOADING_HTML,
                minijinja::context! {
                    error => e.to_string(),
                    provider => providers::shorten(&provider),
                    spec => providers::shorten(&spec),
                },
            );
            *r.status_mut() = e.status();
            r
        }
    }
}

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream =
        ReceiverStream::new(rx).map(|e| Ok::<_, Infallible>(SseEvent::default().data(e.to_json())));
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(25))
                .text("keepalive"),
        )
        .into_response()
}

async fn build_events(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Query(q): Query<LaunchQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let accepts = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts {
        return Err(WebError::NotEventStream.into());
    }
    let (repo, open, data) = resolve_launch(&state, &uri, &q)?;
    let (tx, rx) = mpsc::channel(64);
    let full = format!("{}/{}", repo.provider, repo.spec);
    let shown = providers::shorten(&full);
    let refused = if state.deny.iter().any(|r| r.is_match(&full)) {
        Some(format!("Sorry, {shown} has been temporarily disabled from launching. Please contact admins for more info!"))
    } else if !state.allow.is_empty() && !state.allow.iter().any(|r| r.is_match(&full)) {
        Some(format!(
            "Sorry, {shown} is not allowed to launch on this server."
        ))
    } else {
        None
    };
    if let Some(message) = refused {
        let _ = tx.try_send(Event::failed(403, message));
        return Ok(sse(rx));
    }
    // Data sets asked for must exist before anything is built.
    if !data.is_empty() {
        let root = state.config.data_root();
        let asked = data.clone();
        let checked =
            tokio::task::spawn_blocking(move || session_data::resolve_data(&root, &asked, &[]))
                .await;
        let problem = match checked {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(message) = problem {
            let _ = tx.try_send(Event::failed(400, message));
            return Ok(sse(rx));
        }
    }
    tokio::spawn(run_request(state, repo, open, data, q.build_only(), tx));
    Ok(sse(rx))
}

/// Sends `event` to the client; false when the client is gone.
async fn send(tx: &mpsc::Sender<Event>, event: Event) -> bool {
    tx.send(event).await.is_ok()
}

/// One client's request: follow the shared build, then launch (unless `build_only`). Runs on
/// its own task; when the client disconnects it stops following the build (which is cancelled
/// once every client has left for the grace period), and a session launched for a client that
/// is gone is stopped.
async fn run_request(
    state: Arc<AppState>,
    repo: RepoSpec,
    open: String,
    data: Vec<String>,
    build_only: bool,
    tx: mpsc::Sender<Event>,
) {
    let waiting = Event::Waiting {
        message: "Waiting for build to start...\n".into(),
    };
    if !send(&tx, waiting).await {
        return;
    }
    let req = state.build_request(&repo);
    if let Some(policy) = &req.host_policy {
        // Refused at once, with the message (and the phases) a failed fetch gives.
        if let Err(e) = policy::check(policy, &repo).await {
            let fetching = Event::Fetching {
                message: "Fetching the repository...\n".into(),
            };
            if send(&tx, fetching).await {
                let _ = tx.send(Event::failed(500, e)).await;
            }
            return;
        }
    }
    let (build, _) = state.hub.join(req);
    let mut seen = 0;
    let mut last = None;
    loop {
        let events = tokio::select! {
            events = build.next(seen) => events,
            // The client is gone: stop following (the build goes on for the others).
            () = tx.closed() => return,
        };
        if events.is_empty() {
            break;
        }
        seen += events.len();
        for e in events {
            if e.ends_build() {
                last = Some(e.clone());
            }
            if !send(&tx, e).await {
                return;
            }
        }
    }
    drop(build);
    let Some(Event::Built {
        image_name: image,
        commit,
        data: declared,
        ..
    }) = last
    else {
        return;
    };
    if build_only {
        let ready = Ready {
            message: "Done! Found built image\n".into(),
            image_name: Some(image),
            ..Ready::default()
        };
        let _ = tx.send(Event::Ready(Box::new(ready))).await;
        return;
    }
    // The exact versions, resolved before anything starts; a missing one is an error event.
    let asked_for_data = !data.is_empty();
    let root = state.config.data_root();
    let mounts = match tokio::task::spawn_blocking(move || {
        session_data::resolve_data(&root, &data, &declared)
    })
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let _ = tx.send(Event::failed(400, e)).await;
            return;
        }
        Err(e) => {
            let _ = tx.send(Event::failed(500, e.to_string())).await;
            return;
        }
    };
    // A warm session of this repository, image and data set versions, when the pool has one
    // (the launch adds no session, so no quota is checked).
    if !asked_for_data {
        let data = berth_launcher::data_label(&mounts);
        if let Some(session) = state.pool.take(&repo, &image, &data) {
            let launching = Event::Launching {
                message: "Launching server... (a warm one from the pool)\n".into(),
            };
            if send(&tx, launching).await {
                record_launch(true, 0.0);
                hand_over(&state, &repo, image, commit, open, session, tx).await;
            } else {
                let _ = state.backend.stop(&session.id).await;
            }
            return;
        }
    }
    let backend = state.backend();
    if let Err(e) = check_quota(&state, backend.as_ref(), &repo).await {
        let _ = tx.send(e).await;
        return;
    }
    let launching = Event::Launching {
        message: "Launching server...\n".into(),
    };
    if !send(&tx, launching).await {
        return;
    }
    let started = Instant::now();
    metrics::gauge!("berth_launches_in_progress").increment(1.0);
    metrics::gauge!("binderhub_inprogress_launches").increment(1.0);
    let spec = state.session_spec(&repo, &image, &commit, mounts);
    let starter = state.clone();
    // Not tied to the client: a launch either completes or cleans up after itself.
    let launched = tokio::spawn(async move { starter.start_session(&spec).await }).await;
    metrics::gauge!("berth_launches_in_progress").decrement(1.0);
    metrics::gauge!("binderhub_inprogress_launches").decrement(1.0);
    let result = match launched {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    record_launch(result.is_ok(), started.elapsed().as_secs_f64());
    let session = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Event::failed(500, e)).await;
            return;
        }
    };
    hand_over(&state, &repo, image, commit, open, session, tx).await;
}

/// Counts a launch that succeeded (`ok`) or failed after `seconds` under berth's and BinderHub's
/// names (a warm session from the pool is a launch of 0 s).
fn record_launch(ok: bool, seconds: f64) {
    let status = if ok { "success" } else { "failure" };
    metrics::counter!("berth_launches_total", "status" => status).increment(1);
    metrics::histogram!("berth_launch_duration_seconds", "status" => status).record(seconds);
    let retries = if ok { "0" } else { "-1" };
    metrics::histogram!("binderhub_launch_time_seconds", "status" => status, "retries" => retries)
        .record(seconds);
}

/// Gives a started session to the client behind `tx`: the proxy and `/export` learn it, and the
/// client gets `ready` (BinderHub's fields); a client that left meanwhile has it stopped.
async fn hand_over(
    state: &AppState,
    repo: &RepoSpec,
    image: String,
    commit: String,
    open: String,
    session: berth_launcher::Session,
    tx: mpsc::Sender<Event>,
) {
    state
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            session.id.clone(),
            (session.server_url.clone(), session.token.clone()),
        );
    state.exports.launched(
        &session.id,
        export::Launched {
            token: session.token.clone(),
            repo_url: berth_builder::redact_url(&repo.repo_url),
            reference: repo.reference.clone(),
            image: image.clone(),
            commit: commit.clone(),
        },
    );
    let public = state.config.public_url();
    let url = format!("{public}/user/{}/", session.id);
    let export_url = state
        .config
        .export
        .then(|| export::export_url(&public, repo, &session.token));
    let ready = Ready {
        message: format!("server running at {url}\n"),
        url: Some(url),
        token: Some(session.token.clone()),
        image: Some(image),
        open: Some(open),
        repo_url: Some(berth_builder::redact_url(&repo.repo_url)),
        binder_ref_url: Some(repo.ref_url(&commit)),
        binder_launch_host: Some(format!("{public}/")),
        binder_request: Some(repo.request()),
        binder_persistent_request: Some(repo.persistent_request(&commit)),
        image_name: None,
        export_url,
    };
    if tx.send(Event::Ready(Box::new(ready))).await.is_err() {
        tracing::info!(session = %session.id, "client left before the session was ready; stopping it");
        let _ = state.backend.stop(&session.id).await;
    }
}

async fn check_quota(
    state: &AppState,
    backend: &dyn Backend,
    repo: &RepoSpec,
) -> Result<(), Event> {
    let cfg = &state.config;
    if cfg.per_repo_quota == 0 && cfg.total_quota == 0 {
        return Ok(());
    }
    let sessions = backend.list().await.map_err(|e| Event::failed(503, e))?;
    if cfg.total_quota > 0 && sessions.len() >= cfg.total_quota {
        return Err(Event::failed(
            429,
            format!(
                "Too many users on this server ({}). Try again later.",
                sessions.len()
            ),
        ));
    }
    if cfg.per_repo_quota > 0 {
        let url = berth_builder::redact_url(&repo.repo_url);
        let n = sessions.iter().filter(|s| s.repo_url == url).count();
        if n >= cfg.per_repo_quota {
            return Err(Event::failed(
                429,
                format!("Too many users running {url}! Try again soon."),
            ));
        }
    }
    Ok(())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let docker_ok = state.hub.ping().await;
    let body = json!({
        "ok": docker_ok,
        "checks": [{"service": "Docker engine", "ok": docker_ok}],
        "builds_in_progress": state.hub.in_progress(),
    });
    let code = if docker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn versions() -> Json<Value> {
    Json(json!({
        "builder_info": {"berth": berth_builder::BERTH_VERSION, "buildpacks": berth_builder::BUILDPACK_VERSION},
        "binderhub": format!("berth-web {}", env!("CARGO_PKG_VERSION")),
    }))
}
