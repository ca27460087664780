//! In-process doubles for the web server's tests: a fake session [`Backend`] whose Jupyter is a
//! tiny axum server on loopback, a fake [`Builder`], and the server itself on a loopback port.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use berth_builder::{BuildError, BuildEvent, BuildOutcome, BuildRequest, Phase};
use berth_launcher::{Backend, LaunchError, Session, SessionSpec, SessionStatus};
use berth_web::{AppState, Builder, Config};

/// The token of every fake session.
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A fake Jupyter server: answers under `/user/<any session>/`, checks the token in
/// `Authorization` as Jupyter does, and counts the notebooks created.
pub struct FakeJupyter {
    pub addr: SocketAddr,
    pub created: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeJupyter {
    pub async fn start() -> Self {
        let created = Arc::new(AtomicUsize::new(0));
        let counter = created.clone();
        let authorized = |h: &HeaderMap| {
            h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                == Some(&format!("token {TOKEN}"))
        };
        let app = Router::new()
            .route(
                "/user/{s}/api/contents",
                any(move |h: HeaderMap, body: axum::body::Bytes| {
                    let counter = counter.clone();
                    async move {
                        if !authorized(&h) {
                            return (StatusCode::FORBIDDEN, "jupyter: no token").into_response();
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = format!(
                            "{{\"name\": \"Untitled.ipynb\", \"received\": {}}}",
                            body.len()
                        );
                        (StatusCode::CREATED, body).into_response()
                    }
                }),
            )
            .route(
                "/user/{s}/api/status",
                get(move |h: HeaderMap| async move {
                    if authorized(&h) {
                        (StatusCode::OK, "{\"started\": true}").into_response()
                    } else {
                        (StatusCode::FORBIDDEN, "jupyter: no token").into_response()
                    }
                }),
            )
            .route(
                "/user/{s}/tree",
                get(|Path(s): Path<String>| async move {
                    (
                        StatusCode::FOUND,
                        [(header::LOCATION, format!("/user/{s}/lab"))],
                    )
                }),
            )
            .route("/user/{s}/lab", get(|| async { "JupyterLab" }))
            .route(
                "/user/{s}/api/kernels/{k}/channels",
                get(|ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(|mut socket| async move {
                        while let Some(Ok(m)) = socket.recv().await {
                            if let Message::Text(t) = m {
                                let reply = format!("echo {}", t.as_str());
                                if socket.send(Message::Text(reply.into())).await.is_err() {
                                    break;
                                }
                            }
                        }
                    })
                }),
            )
            // One request per connection, so a stopped server refuses the next one at once.
            .layer(axum::middleware::map_response(
                |mut r: Response| async move {
                    if r.status() != StatusCode::SWITCHING_PROTOCOLS {
                        r.headers_mut()
                            .insert(header::CONNECTION, "close".parse().unwrap());
                    }
                    r
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            created,
            task,
        }
    }

    /// Jupyter's base URL for session `id`.
    pub fn server_url(&self, id: &str) -> String {
        format!("http://{}/user/{id}/", self.addr)
    }

    /// Stops listening: new connections are refused.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A session as the fake backend returns it.
pub fn session(id: &str, server_url: &str) -> Session {
    Session {
        id: id.into(),
        url: format!("{server_url}?token={TOKEN}"),
        server_url: server_url.into(),
        token: TOKEN.into(),
        image: "berth/fake:1".into(),
        repo_url: String::new(),
        workers: 0,
        workers_wanted: 0,
        max_workers: 0,
        dashboard_url: None,
        created: 0,
        status: SessionStatus::Running,
        data: Vec::new(),
        pool: None,
        adapt: None,
    }
}

/// Sessions in a map; `start` makes one whose Jupyter is `jupyter_addr`.
#[derive(Default)]
pub struct FakeBackend {
    pub sessions: Mutex<HashMap<String, Session>>,
    pub jupyter: Mutex<Option<SocketAddr>>,
    pub stopped: Mutex<Vec<String>>,
    /// Every spec `start` was given.
    pub specs: Mutex<Vec<SessionSpec>>,
}

impl FakeBackend {
    pub fn put(&self, s: Session) {
        self.sessions.lock().unwrap().insert(s.id.clone(), s);
    }
    pub fn remove(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    async fn start(&self, spec: &SessionSpec) -> Result<Session, LaunchError> {
        self.specs.lock().unwrap().push(spec.clone());
        let id = spec.id.clone().unwrap_or_else(|| "fake-00000000".into());
        let addr = self
            .jupyter
            .lock()
            .unwrap()
            .ok_or_else(|| LaunchError::Engine("no fake jupyter".into()))?;
        let mut s = session(&id, &format!("http://{addr}/user/{id}/"));
        s.repo_url = spec
            .labels
            .iter()
            .find(|(k, _)| k == "berth.repo_url")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.put(s.clone());
        Ok(s)
    }
    async fn list(&self) -> Result<Vec<Session>, LaunchError> {
        Ok(self.sessions.lock().unwrap().values().cloned().collect())
    }
    async fn get(&self, id: &str) -> Result<Session, LaunchError> {
        self.sessions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| LaunchError::UnknownSession(id.into()))
    }
    async fn scale(&self, id: &str, _workers: u32) -> Result<Session, LaunchError> {
        self.get(id).await
    }
    async fn stop(&self, id: &str) -> Result<(), LaunchError> {
        self.stopped.lock().unwrap().push(id.into());
        self.remove(id);
        Ok(())
    }
    async fn logs(&self, _id: &str) -> Result<String, LaunchError> {
        Ok(String::new())
    }
    async fn attach(&self, _id: &str) -> Result<berth_launcher::Attached, LaunchError> {
        use futures_util::{FutureExt, StreamExt};
        Ok(berth_launcher::Attached {
            output: futures_util::stream::empty().boxed(),
            exit: async { Ok(0) }.boxed(),
        })
    }
    async fn last_activity(
        &self,
        _id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, LaunchError> {
        Ok(None)
    }
}

/// Counts its drops (a build's future being dropped, as when it is cancelled).
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A builder that reports fetching, then either hangs (until its future is dropped) or
/// succeeds with a fixed commit.
#[derive(Default)]
pub struct FakeBuilder {
    pub hang: bool,
    pub started: Arc<AtomicUsize>,
    pub dropped: Arc<AtomicUsize>,
    pub requests: Mutex<Vec<BuildRequest>>,
    /// The data sets the built repository's berth-data.txt names.
    pub data: Vec<String>,
}

/// The commit the fake builder builds.
pub const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

#[async_trait::async_trait]
impl Builder for FakeBuilder {
    async fn build(
        &self,
        req: &BuildRequest,
        report: &(dyn Fn(BuildEvent) + Send + Sync),
    ) -> Result<BuildOutcome, BuildError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(req.clone());
        let _guard = DropCount(self.dropped.clone());
        report(BuildEvent::Phase(Phase::Fetching));
        report(BuildEvent::Log(format!(
            "{} is commit {COMMIT}",
            berth_builder::redact_url(&req.source)
        )));
        if self.hang {
            std::future::pending::<()>().await;
        }
        std::mem::forget(_guard);
        Ok(BuildOutcome {
            image: "berth/fake:0123456789ab".into(),
            env_image: "berth-env:0".into(),
            env_hash: "0".repeat(64),
            commit: COMMIT.into(),
            buildpack: "python".into(),
            cached_env: true,
            seconds: 0.0,
            data: self.data.clone(),
            pushed: None,
        })
    }

    async fn ping(&self) -> bool {
        true
    }
}

/// The server on a loopback port, with the given configuration (its `listen` set to that port).
pub struct Server {
    pub url: String,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(
        config: Config,
        backend: Arc<dyn Backend>,
        builder: Arc<dyn Builder>,
    ) -> Self {
        Self::start_with_exporter(config, backend, builder, None).await
    }

    /// As [`Server::start`], with an exporter for `/export/…`.
    pub async fn start_with_exporter(
        mut config: Config,
        backend: Arc<dyn Backend>,
        builder: Arc<dyn Builder>,
        exporter: Option<Arc<dyn berth_web::Exporter>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.listen = addr.to_string();
        let state = AppState::with_exporter(config, backend, builder, exporter).unwrap();
        let app = berth_web::router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP client that neither follows redirects nor uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `data:` events of an event stream's text.
pub fn parse_events(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
