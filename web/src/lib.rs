//! berth's web server: the launch form, BinderHub-compatible launch URLs (`/v2/…`) and
//! event-stream build API (`/build/…`), badges, health, versions, Prometheus metrics, and a proxy
//! to sessions at `/user/<session>/…` (HTTP and WebSocket).

pub mod builds;
pub mod config;
pub mod providers;
mod proxy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use berth_builder::{BuildRequest, Engine};
use berth_launcher::{Backend, DockerBackend, Limits, OpenPath, SessionSpec};
use futures_util::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

pub use config::Config;
use providers::RepoSpec;

/// What every request handler shares.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// The engine connection, made on first need and kept (so the server starts, and reports
    /// it in `/health`, while the engine is down).
    engine: tokio::sync::Mutex<Option<Engine>>,
    hub: Arc<builds::BuildHub>,
    allow: Vec<regex::Regex>,
    deny: Vec<regex::Regex>,
    /// Session id → (Jupyter server URL, token), filled from the backend on first use.
    sessions: Mutex<HashMap<String, (String, String)>>,
    http: reqwest::Client,
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A pattern in `allow` or `deny` is not a regular expression.
    #[error("invalid pattern {0:?} in the configuration: {1}")]
    Pattern(String, String),
    /// The Docker engine cannot be reached.
    #[error("{0}")]
    Engine(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
}

fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
    })
}

impl AppState {
    /// Connects to the Docker engine and compiles the configuration's patterns.
    ///
    /// # Errors
    /// [`ServeError`].
    pub async fn new(config: Config) -> Result<Arc<Self>, ServeError> {
        let compile = |ps: &[String]| {
            ps.iter()
                .map(|p| {
                    regex::Regex::new(p).map_err(|e| ServeError::Pattern(p.clone(), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let engine = match Engine::connect().await {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "the Docker engine is not reachable yet");
                eprintln!("warning: {e}");
                None
            }
        };
        metrics_handle();
        Ok(Arc::new(Self {
            allow: compile(&config.allow)?,
            deny: compile(&config.deny)?,
            config,
            engine: tokio::sync::Mutex::new(engine),
            hub: Arc::new(builds::BuildHub::default()),
            sessions: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }))
    }

    /// The engine, connecting when there is no connection yet.
    ///
    /// # Errors
    /// The engine's one-line error when it cannot be reached.
    pub async fn engine(&self) -> Result<Engine, String> {
        let mut guard = self.engine.lock().await;
        if let Some(e) = guard.as_ref() {
            return Ok(e.clone());
        }
        let e = Engine::connect().await.map_err(|e| e.to_string())?;
        *guard = Some(e.clone());
        Ok(e)
    }

    /// The session backend on the engine.
    ///
    /// # Errors
    /// As [`AppState::engine`].
    pub async fn backend(&self) -> Result<Arc<dyn Backend>, String> {
        let e = self.engine().await?;
        Ok(Arc::new(DockerBackend::with_client(e.docker().clone())))
    }

    fn build_request(&self, repo: &RepoSpec) -> BuildRequest {
        let mut req = BuildRequest::new(repo.repo_url.clone());
        req.reference = Some(repo.reference.clone());
        req.ca_cert = self.config.ca_cert.clone();
        req.python_fallback = self.config.python_fallback;
        req
    }
}

/// The router of all pages and APIs.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/v2/{provider}/{*spec}", get(loading_page))
        .route("/build/{provider}/{*spec}", get(build_events))
        .route("/badge.svg", get(|| async { svg(BADGE_SVG) }))
        .route("/badge_logo.svg", get(|| async { svg(BADGE_LOGO_SVG) }))
        .route("/health", get(health))
        .route("/versions", get(versions))
        .route("/metrics", get(|| async { metrics_handle().render() }))
        .route("/user/{session}", any(proxy::redirect_slash))
        .route("/user/{session}/", any(proxy::proxy_root))
        .route("/user/{session}/{*path}", any(proxy::proxy))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Forms and APIs take no large bodies; uploads through the proxy up to 512 MiB.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(512 << 20))
        .with_state(state)
}

/// Serves until the process ends; culls idle sessions in the background.
///
/// # Errors
/// [`ServeError`] when the engine or the address is unavailable.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let listen = config.listen.clone();
    let state = AppState::new(config).await?;
    if state.config.max_idle_seconds > 0 {
        let s = state.clone();
        tokio::spawn(async move {
            let max_idle = Duration::from_secs(s.config.max_idle_seconds);
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let backend = match s.backend().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "culling skipped");
                        continue;
                    }
                };
                match berth_launcher::cull(backend.as_ref(), max_idle, None).await {
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
    axum::serve(listener, router(state))
        .await
        .map_err(|e| ServeError::Listen(listen, e.to_string()))
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
    fn open_path(&self) -> Result<String, String> {
        let open = if let Some(p) = &self.urlpath {
            OpenPath::UrlPath(p.clone())
        } else if let Some(p) = &self.labpath {
            OpenPath::LabPath(p.clone())
        } else if let Some(p) = &self.filepath {
            OpenPath::FilePath(p.clone())
        } else {
            OpenPath::UrlPath("lab".into())
        };
        open.url_path().map_err(|e| e.to_string())
    }

    fn build_only(&self) -> bool {
        matches!(self.build_only.as_deref(), Some("true" | "1" | "yes"))
    }
}

async fn loading_page(
    State(state): State<Arc<AppState>>,
    Path((provider, spec)): Path<(String, String)>,
    Query(q): Query<LaunchQuery>,
) -> Response {
    let checked = providers::resolve(&state.config, &provider, &spec)
        .map_err(|e| (e.status(), e.to_string()))
        .and_then(|r| q.open_path().map(|p| (r, p)).map_err(|e| (400, e)));
    match checked {
        Ok((repo, open)) => render(
            LOADING_HTML,
            minijinja::context! {
                build_path => format!("/build/{provider}/{}", repo.spec), provider => provider, spec => repo.spec, repo_url => repo.repo_url,
                reference => repo.reference, open => open,
            },
        ),
        Err((status, message)) => {
            let mut r = render(
                LOADING_HTML,
                minijinja::context! { error => message, provider => provider, spec => spec },
            );
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            r
        }
    }
}

fn error_json(status: u16, message: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        code,
        Json(json!({"phase": "failed", "message": message, "status_code": status})),
    )
        .into_response()
}

fn sse(rx: tokio::sync::mpsc::Receiver<Value>) -> Response {
    let stream =
        ReceiverStream::new(rx).map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string())));
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
    Path((provider, spec)): Path<(String, String)>,
    Query(q): Query<LaunchQuery>,
    headers: HeaderMap,
) -> Response {
    let accepts = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts {
        return error_json(
            400,
            "this API speaks text/event-stream: send Accept: text/event-stream".into(),
        );
    }
    let repo = match providers::resolve(&state.config, &provider, &spec) {
        Ok(r) => r,
        Err(e) => return error_json(e.status(), e.to_string()),
    };
    let open = match q.open_path() {
        Ok(o) => o,
        Err(e) => return error_json(400, e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let full = format!("{}/{}", repo.provider, repo.spec);
    let refused = if state.deny.iter().any(|r| r.is_match(&full)) {
        Some(format!("Sorry, {full} has been temporarily disabled from launching. Please contact admins for more info!"))
    } else if !state.allow.is_empty() && !state.allow.iter().any(|r| r.is_match(&full)) {
        Some(format!(
            "Sorry, {full} is not allowed to launch on this server."
        ))
    } else {
        None
    };
    if let Some(message) = refused {
        let _ = tx.try_send(json!({"phase": "failed", "message": message, "status_code": 403}));
        return sse(rx);
    }
    tokio::spawn(run_request(state, repo, open, q.build_only(), tx));
    sse(rx)
}

/// One client's request: follow the shared build, then launch (unless `build_only`). Runs on
/// its own task, so a client that disconnects stops nothing halfway; a session launched for a
/// client that is gone is stopped.
async fn run_request(
    state: Arc<AppState>,
    repo: RepoSpec,
    open: String,
    build_only: bool,
    tx: tokio::sync::mpsc::Sender<Value>,
) {
    let _ = tx
        .send(json!({"phase": "waiting", "message": "Waiting for build to start...\n"}))
        .await;
    let (engine, backend) = match (state.engine().await, state.backend().await) {
        (Ok(e), Ok(b)) => (e, b),
        (Err(e), _) | (_, Err(e)) => {
            let _ = tx
                .send(json!({"phase": "failed", "message": format!("{e}\n"), "status_code": 503}))
                .await;
            return;
        }
    };
    let (build, _) = state.hub.join(engine, state.build_request(&repo));
    let mut seen = 0;
    let mut last = Value::Null;
    loop {
        let events = build.next(seen).await;
        if events.is_empty() {
            break;
        }
        seen += events.len();
        for e in events {
            if builds::is_terminal(&e) {
                last = e.clone();
            }
            if tx.send(e).await.is_err() && !build_only {
                // The client is gone: nothing to launch for it.
                return;
            }
        }
    }
    if last["phase"] != "built" {
        return;
    }
    let image = last["imageName"].as_str().unwrap_or_default().to_string();
    let commit = last["commit"].as_str().unwrap_or_default().to_string();
    if build_only {
        let _ = tx
            .send(json!({"phase": "ready", "message": "Done! Found built image\n", "imageName": image}))
            .await;
        return;
    }
    if let Err((status, message)) = check_quota(&state, backend.as_ref(), &repo).await {
        let _ = tx
            .send(json!({"phase": "failed", "message": message, "status_code": status}))
            .await;
        return;
    }
    let _ = tx
        .send(json!({"phase": "launching", "message": "Launching server...\n"}))
        .await;
    let started = Instant::now();
    metrics::gauge!("berth_launches_in_progress").increment(1.0);
    let id = berth_launcher::new_session_id(
        repo.repo_url
            .rsplit('/')
            .next()
            .unwrap_or("session")
            .trim_end_matches(".git"),
    );
    let mut spec = SessionSpec::new(image.clone());
    spec.id = Some(id.clone());
    spec.base_url = Some(format!("/user/{id}/"));
    spec.workers = state.config.workers;
    spec.max_workers = state.config.max_workers;
    spec.limits = Limits {
        memory_bytes: state.config.memory_bytes,
        millicpus: state.config.millicpus,
        ..Limits::default()
    };
    spec.labels = vec![
        ("berth.repo_url".into(), repo.repo_url.clone()),
        ("berth.ref".into(), repo.reference.clone()),
        ("berth.commit".into(), commit.clone()),
        (
            "berth.binder_request".into(),
            format!("v2/{}/{}", repo.provider, repo.spec),
        ),
    ];
    let starter = backend.clone();
    // Not tied to the client: a launch either completes or cleans up after itself.
    let launched = tokio::spawn(async move { starter.start(&spec).await }).await;
    metrics::gauge!("berth_launches_in_progress").decrement(1.0);
    let result = match launched {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let status = if result.is_ok() { "success" } else { "failure" };
    metrics::counter!("berth_launches_total", "status" => status).increment(1);
    metrics::histogram!("berth_launch_duration_seconds", "status" => status)
        .record(started.elapsed().as_secs_f64());
    let session = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(json!({"phase": "failed", "message": format!("{e}\n"), "status_code": 500}))
                .await;
            return;
        }
    };
    state
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            session.id.clone(),
            (session.server_url.clone(), session.token.clone()),
        );
    let public = state.config.public_url();
    let url = format!("{public}/user/{}/", session.id);
    let ready = json!({
        "phase": "ready",
        "message": format!("server running at {url}\n"),
        "url": url,
        "token": session.token,
        "image": image,
        "open": open,
        "repo_url": repo.repo_url,
        "binder_ref_url": format!("{}{}", repo.web_url, commit),
        "binder_launch_host": format!("{public}/"),
        "binder_request": format!("v2/{}/{}", repo.provider, repo.spec),
        "binder_persistent_request": format!("v2/{}/{}", repo.provider, persistent_spec(&repo, &commit)),
    });
    if tx.send(ready).await.is_err() {
        tracing::info!(session = %session.id, "client left before the session was ready; stopping it");
        let _ = backend.stop(&session.id).await;
    }
}

/// The spec with the ref replaced by the commit, as BinderHub's `binder_persistent_request`.
fn persistent_spec(repo: &RepoSpec, commit: &str) -> String {
    match repo.spec.rsplit_once('/') {
        Some((head, _)) if repo.provider != "gist" || repo.spec.matches('/').count() == 2 => {
            format!("{head}/{commit}")
        }
        _ => format!("{}/{commit}", repo.spec),
    }
}

async fn check_quota(
    state: &AppState,
    backend: &dyn Backend,
    repo: &RepoSpec,
) -> Result<(), (u16, String)> {
    let cfg = &state.config;
    if cfg.per_repo_quota == 0 && cfg.total_quota == 0 {
        return Ok(());
    }
    let sessions = backend.list().await.map_err(|e| (503, e.to_string()))?;
    if cfg.total_quota > 0 && sessions.len() >= cfg.total_quota {
        return Err((
            429,
            format!(
                "Too many users on this server ({}). Try again later.",
                sessions.len()
            ),
        ));
    }
    if cfg.per_repo_quota > 0 {
        let n = sessions
            .iter()
            .filter(|s| s.repo_url == repo.repo_url)
            .count();
        if n >= cfg.per_repo_quota {
            return Err((
                429,
                format!("Too many users running {}! Try again soon.", repo.repo_url),
            ));
        }
    }
    Ok(())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let docker_ok = match state.engine().await {
        Ok(e) => e.docker().ping().await.is_ok(),
        Err(_) => false,
    };
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
