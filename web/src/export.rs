//! Downloads of a session's environment as a berth bundle: `GET /export/<provider>/<spec>`, when
//! the operator enabled `export` (see [`crate::Config::export`]).
//!
//! # Who may download
//! The request carries the token of a session this server launched for that repository and
//! ref, as the proxy takes it: `?token=…` or `Authorization: token …`. The session must still
//! exist in the backend, with that token. What is exported is that session's image, so a token
//! never opens more than its session already shows. The server remembers the sessions it
//! launched in memory: after a restart of the server, sessions launched before it cannot be
//! exported (a new launch can).
//!
//! # The file
//! The bundle is what `berth export IMAGE` writes (no sources): the image as an OCI image
//! layout, its environment image, the repository as a git bundle (from the server's clone) and
//! berth's manifest. Exports of the same image are byte-identical, so each image is exported
//! once, into `<cache dir>/bundles/<image id, 64 hex>.berth.tar`, and later downloads read
//! that file. One export runs at a time per image: concurrent requests wait for it, and an
//! export goes on when the client that started it leaves. The response is streamed from the
//! file with `Content-Type: application/x-tar`, `Content-Length` (bytes) and
//! `Content-Disposition: attachment; filename="<repo name>-<commit, 12 hex>.berth.tar"`.
//!
//! Metrics: `berth_exports_total{status="success"|"failure"}` and
//! `berth_export_duration_seconds` for exports made, `berth_export_downloads_total` for
//! downloads started.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use berth_bundle::{BundleError, ExportOptions, ExportSummary};
use berth_launcher::{LaunchError, SessionStatus};
use tracing::Instrument;

use crate::providers::{self, RepoSpec};
use crate::{AppState, WebError};

/// What exports images into bundles: the Docker engine in the server.
#[async_trait::async_trait]
pub trait Exporter: Send + Sync {
    /// The engine's id of `image` (`sha256:<64 hex>`), or `None` when the engine has no such
    /// image.
    async fn image_id(&self, image: &str) -> Result<Option<String>, BundleError>;

    /// Writes `image` as a bundle at `out`, as [`berth_bundle::export()`] (atomically: nothing is
    /// left at `out` on failure).
    async fn export(
        &self,
        image: &str,
        out: &Path,
        opts: &ExportOptions,
    ) -> Result<ExportSummary, BundleError>;
}

/// A session this server launched, as far as exports need it.
#[derive(Debug, Clone)]
pub(crate) struct Launched {
    /// The session's Jupyter token.
    pub token: String,
    /// The clone URL, credentials redacted.
    pub repo_url: String,
    /// The ref requested.
    pub reference: String,
    /// The image the session runs.
    pub image: String,
    /// The commit built, 40 hex digits.
    pub commit: String,
}

/// The server's export state: who may export what, and the exports under way.
#[derive(Default)]
pub(crate) struct Exports {
    exporter: Option<Arc<dyn Exporter>>,
    /// Session id → what it was launched from.
    launched: Mutex<HashMap<String, Launched>>,
    /// Image id → the lock held while that image is exported.
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Exports {
    pub(crate) fn new(exporter: Option<Arc<dyn Exporter>>) -> Self {
        Self {
            exporter,
            ..Self::default()
        }
    }

    /// Remembers a session this server launched.
    pub(crate) fn launched(&self, session: &str, record: Launched) {
        self.table().insert(session.to_string(), record);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Launched>> {
        self.launched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session whose token is `token`, when it was launched for `repo`'s repository and
    /// ref. Every record is compared (in constant time), so timing tells nothing of tokens.
    fn session_for(&self, token: &str, repo: &RepoSpec) -> Option<(String, Launched)> {
        let url = berth_builder::redact_url(&repo.repo_url);
        let mut found = None;
        for (id, rec) in self.table().iter() {
            if crate::proxy::same(rec.token.as_bytes(), token.as_bytes())
                && rec.repo_url == url
                && rec.reference == repo.reference
            {
                found = Some((id.clone(), rec.clone()));
            }
        }
        found
    }

    fn forget(&self, session: &str) {
        self.table().remove(session);
    }

    /// The lock of `image_id`'s export.
    fn lock_of(&self, image_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.entry(image_id.to_string()).or_default().clone()
    }
}

/// `/export/<provider>/<spec>` followed by the session's token as a query parameter: the
/// `export_url` of a `ready` event.
pub(crate) fn export_url(public: &str, repo: &RepoSpec, token: &str) -> String {
    let request = repo.request();
    let spec = request.strip_prefix("v2/").unwrap_or(&request);
    format!("{public}/export/{spec}?token={}", providers::quote(token))
}

/// The token of the request: `?token=` (percent-decoded) or `Authorization: token …`.
fn presented_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = crate::proxy::query_param(query, "token") {
        return Some(
            percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    let a = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = a
        .strip_prefix("token ")
        .or_else(|| a.strip_prefix("Token "))?;
    Some(t.trim().to_string())
}

/// `<repo name>-<commit, 12 hex>.berth.tar`, with only letters, digits and `._-` in the name.
fn file_name(repo_url: &str, commit: &str) -> String {
    let last = repo_url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("");
    let name: String = last
        .trim_end_matches(".git")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    let name = if name.is_empty() { "repository" } else { name };
    let commit: String = commit.chars().take(12).collect();
    format!("{name}-{commit}.berth.tar")
}

/// `GET /export/<provider>/<spec>`: the session's environment as a bundle (see the module's
/// documentation).
pub(crate) async fn download(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    if !state.config.export {
        return Err(WebError::ExportOff);
    }
    let exporter = state.exports.exporter.clone().ok_or(WebError::ExportOff)?;
    let (provider, spec) = crate::raw_spec(&uri);
    let repo = providers::resolve(&state.config, &provider, &spec)?;
    let token = presented_token(uri.query(), &headers).ok_or(WebError::ExportTokenMissing)?;
    let (session, rec) = state
        .exports
        .session_for(&token, &repo)
        .ok_or(WebError::ExportTokenWrong)?;
    // The session must still run, with that token.
    match state.backend.get(&session).await {
        Ok(s)
            if crate::proxy::same(s.token.as_bytes(), token.as_bytes())
                && !matches!(s.status, SessionStatus::Stopped | SessionStatus::Failed) => {}
        Ok(_) | Err(LaunchError::UnknownSession(_) | LaunchError::InvalidSessionId(_)) => {
            state.exports.forget(&session);
            return Err(WebError::ExportTokenWrong);
        }
        Err(e) => return Err(WebError::Backend(e.to_string())),
    }
    let span = tracing::info_span!("export", %session, image = %rec.image);
    async move {
        let cache_dir = state.build_request(&repo).cache_dir;
        let path = bundle_file(&state, exporter, &rec.image, &cache_dir).await?;
        stream(&path, &file_name(&rec.repo_url, &rec.commit)).await
    }
    .instrument(span)
    .await
}

/// The bundle of `image` in the cache, exported first when it is not there yet.
async fn bundle_file(
    state: &AppState,
    exporter: Arc<dyn Exporter>,
    image: &str,
    cache_dir: &Path,
) -> Result<PathBuf, WebError> {
    let internal = |e: BundleError| {
        tracing::warn!(error = %e, "export failed");
        WebError::Export("the server's log says why".into())
    };
    let id = exporter
        .image_id(image)
        .await
        .map_err(internal)?
        .ok_or(WebError::ImageGone)?;
    let hex = id.trim_start_matches("sha256:").to_string();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(internal(BundleError::Invalid(format!(
            "the engine gave {image} the id {id:?}"
        ))));
    }
    let path = cache_dir.join("bundles").join(format!("{hex}.berth.tar"));
    // Waits for an export of the same image under way; the guard moves into the export task,
    // so the lock is held until the export ends, also when this client leaves meanwhile.
    let guard = state.exports.lock_of(&hex).lock_owned().await;
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        tracing::info!("bundle cached");
        return Ok(path);
    }
    // The environment and repository only: data sets stay in the server's library (they can
    // be large, and are served at /data).
    let opts = ExportOptions {
        sources: None,
        cache_dir: cache_dir.to_path_buf(),
        data: Vec::new(),
    };
    let (image, out) = (image.to_string(), path.clone());
    let task = tokio::spawn(
        async move {
            let _held = guard;
            let started = Instant::now();
            let result = exporter.export(&image, &out, &opts).await;
            // The image must still be the one the file is named after (a tag can move).
            let result = match result {
                Ok(s) => match exporter.image_id(&image).await {
                    Ok(Some(now)) if now == id => Ok(s),
                    Ok(_) => Err(BundleError::Invalid(format!(
                        "{image} changed during the export"
                    ))),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if result.is_err() {
                let _ = tokio::fs::remove_file(&out).await;
            }
            let status = if result.is_ok() { "success" } else { "failure" };
            metrics::counter!("berth_exports_total", "status" => status).increment(1);
            metrics::histogram!("berth_export_duration_seconds", "status" => status)
                .record(started.elapsed().as_secs_f64());
            if let Ok(s) = &result {
                tracing::info!(bytes = s.bytes, seconds = s.seconds, "bundle exported");
            }
            result
        }
        .in_current_span(),
    );
    match task.await {
        Ok(Ok(_)) => Ok(path),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(BundleError::Engine(e.to_string()))),
    }
}

/// The response streaming the file at `path` as the download `name`.
async fn stream(path: &Path, name: &str) -> Result<Response, WebError> {
    let fail = |e: std::io::Error| {
        tracing::warn!(error = %e, "cannot read the bundle");
        WebError::Export("the server's log says why".into())
    };
    let file = tokio::fs::File::open(path).await.map_err(fail)?;
    let bytes = file.metadata().await.map_err(fail)?.len();
    metrics::counter!("berth_export_downloads_total").increment(1);
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_LENGTH, bytes)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .map_err(|e| WebError::Export(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            file_name("git://h:9/binder-examples/conda", c),
            "conda-0123456789ab.berth.tar"
        );
        assert_eq!(
            file_name("https://***@h/x/My Repo.git/", c),
            "My_Repo-0123456789ab.berth.tar"
        );
        assert_eq!(file_name("/srv/\"..\"", c), "_.._-0123456789ab.berth.tar");
        assert_eq!(file_name("", c), "repository-0123456789ab.berth.tar");
    }

    #[test]
    fn export_urls_carry_no_credentials() {
        let cfg = crate::Config::default();
        let repo = providers::resolve(
            &cfg,
            "git",
            "https%3A%2F%2Fuser%3Asecret%40example.org%2Fr.git/main",
        )
        .unwrap();
        let url = export_url("http://b", &repo, "t0k");
        assert!(!url.contains("secret"), "{url}");
        assert!(url.starts_with("http://b/export/git/"), "{url}");
        assert!(url.ends_with("/main?token=t0k"), "{url}");
        // The URL resolves to the same repository (redacted) and ref.
        let (_, rest) = url.split_once("/export/").unwrap();
        let (path, _) = rest.split_once('?').unwrap();
        let (p, s) = path.split_once('/').unwrap();
        let again = providers::resolve(&cfg, p, s).unwrap();
        assert_eq!(
            berth_builder::redact_url(&again.repo_url),
            berth_builder::redact_url(&repo.repo_url)
        );
        assert_eq!(again.reference, repo.reference);
    }

    #[test]
    fn tokens_are_read_from_the_query_or_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(
            presented_token(Some("a=1&token=x%2By"), &h).as_deref(),
            Some("x+y")
        );
        assert_eq!(presented_token(Some("a=1"), &h), None);
        h.insert(header::AUTHORIZATION, "token abc".parse().unwrap());
        assert_eq!(presented_token(None, &h).as_deref(), Some("abc"));
    }
}
