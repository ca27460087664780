//! The Docker engine behind the server, as its [`Builder`], session [`Backend`] and
//! [`Exporter`]. The connection is made on first need and kept, so the server starts (and says
//! so in `/health`) while the engine is down.

use berth_builder::{BuildError, BuildEvent, BuildOutcome, BuildRequest, Engine};
use std::sync::Arc;

use berth_launcher::{Backend, DockerBackend, LaunchError, Session, SessionSpec, SwarmBackend};

use crate::config::BackendKind;

use crate::builds::Builder;
use crate::export::Exporter;

/// The Docker engine, connected lazily.
#[derive(Default)]
pub struct DockerEngine {
    engine: tokio::sync::Mutex<Option<Engine>>,
    backend: BackendKind,
    swarm: tokio::sync::OnceCell<Arc<SwarmBackend>>,
}

impl DockerEngine {
    /// A handle that connects on first use, with sessions on the Docker backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that connects on first use, with sessions on `backend`.
    pub fn with_backend(backend: BackendKind) -> Self {
        Self {
            backend,
            ..Self::default()
        }
    }

    /// The engine, connecting when there is no connection yet.
    ///
    /// # Errors
    /// The builder's one-line error when the engine cannot be reached.
    pub async fn engine(&self) -> Result<Engine, BuildError> {
        let mut guard = self.engine.lock().await;
        if let Some(e) = guard.as_ref() {
            return Ok(e.clone());
        }
        let e = Engine::connect().await?;
        *guard = Some(e.clone());
        Ok(e)
    }

    async fn sessions(&self) -> Result<Arc<dyn Backend>, LaunchError> {
        let e = self
            .engine()
            .await
            .map_err(|e| LaunchError::EngineUnavailable(e.to_string()))?;
        Ok(match self.backend {
            BackendKind::Docker => Arc::new(DockerBackend::with_client(e.docker().clone())),
            BackendKind::Swarm => {
                let swarm = self
                    .swarm
                    .get_or_try_init(|| async {
                        let key = berth_launcher::session_key()?;
                        SwarmBackend::with_client(e.docker().clone(), key)
                            .await
                            .map(Arc::new)
                    })
                    .await?;
                swarm.clone()
            }
        })
    }
}

#[async_trait::async_trait]
impl Builder for DockerEngine {
    async fn build(
        &self,
        req: &BuildRequest,
        report: &(dyn Fn(BuildEvent) + Send + Sync),
    ) -> Result<BuildOutcome, BuildError> {
        let engine = self.engine().await?;
        berth_builder::build(&engine, req, report).await
    }

    async fn ping(&self) -> bool {
        match self.engine().await {
            Ok(e) => e.docker().ping().await.is_ok(),
            Err(_) => false,
        }
    }
}

#[async_trait::async_trait]
impl Exporter for DockerEngine {
    async fn image_id(&self, image: &str) -> Result<Option<String>, berth_bundle::BundleError> {
        let engine = self.engine().await?;
        Ok(engine.image(image).await?.map(|i| i.id))
    }

    async fn export(
        &self,
        image: &str,
        out: &std::path::Path,
        opts: &berth_bundle::ExportOptions,
    ) -> Result<berth_bundle::ExportSummary, berth_bundle::BundleError> {
        let engine = self.engine().await?;
        berth_bundle::export(&engine, image, out, opts, std::sync::Arc::new(|_| {})).await
    }
}

#[async_trait::async_trait]
impl Backend for DockerEngine {
    async fn start(&self, spec: &SessionSpec) -> Result<Session, LaunchError> {
        self.sessions().await?.start(spec).await
    }
    async fn list(&self) -> Result<Vec<Session>, LaunchError> {
        self.sessions().await?.list().await
    }
    async fn get(&self, id: &str) -> Result<Session, LaunchError> {
        self.sessions().await?.get(id).await
    }
    async fn scale(&self, id: &str, workers: u32) -> Result<Session, LaunchError> {
        self.sessions().await?.scale(id, workers).await
    }
    async fn stop(&self, id: &str) -> Result<(), LaunchError> {
        self.sessions().await?.stop(id).await
    }
    async fn logs(&self, id: &str) -> Result<String, LaunchError> {
        self.sessions().await?.logs(id).await
    }
    async fn attach(&self, id: &str) -> Result<berth_launcher::Attached, LaunchError> {
        self.sessions().await?.attach(id).await
    }
    async fn last_activity(
        &self,
        id: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, LaunchError> {
        self.sessions().await?.last_activity(id).await
    }
}
