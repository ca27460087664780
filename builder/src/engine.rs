//! The Docker Engine API (bollard): images, builds, and creating the base image locally.

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;

use crate::BuildError;

/// What berth needs to know of an image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The image id (`sha256:…`).
    pub id: String,
    /// The image's labels.
    pub labels: HashMap<String, String>,
}

/// A connection to the Docker engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

fn engine_err(e: bollard::errors::Error) -> BuildError {
    BuildError::Engine(one_line(&e.to_string()))
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Engine {
    /// Connects through `DOCKER_HOST` or the local socket and negotiates the API version
    /// (Debian's engine speaks 1.41).
    ///
    /// # Errors
    /// [`BuildError::EngineUnavailable`] when no engine answers.
    pub async fn connect() -> Result<Self, BuildError> {
        let unavailable =
            |e: bollard::errors::Error| BuildError::EngineUnavailable(one_line(&e.to_string()));
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        Ok(Self { docker })
    }

    /// The underlying bollard client, for crates that manage containers.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The image called `name`, or `None` when there is none.
    ///
    /// # Errors
    /// [`BuildError::Engine`] for errors other than "no such image".
    pub async fn image(&self, name: &str) -> Result<Option<ImageInfo>, BuildError> {
        match self.docker.inspect_image(name).await {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                labels: i.config.and_then(|c| c.labels).unwrap_or_default(),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(engine_err(e)),
        }
    }

    /// Removes an image tag (the image stays while other tags hold it).
    ///
    /// # Errors
    /// [`BuildError::Engine`].
    pub async fn remove_image(&self, name: &str) -> Result<(), BuildError> {
        let opts = RemoveImageOptionsBuilder::new().noprune(false).build();
        self.docker
            .remove_image(name, Some(opts), None)
            .await
            .map(|_| ())
            .map_err(engine_err)
    }

    /// Builds `context` (a tar archive) with the classic builder and tags it `tag`, passing each
    /// log line to `log`. Intermediate containers are removed even when the build fails, and
    /// nothing is tagged unless it succeeds.
    ///
    /// # Errors
    /// [`BuildError::BuildFailed`] with the engine's message when a step fails.
    pub async fn build(
        &self,
        context: Vec<u8>,
        tag: &str,
        dockerfile: &str,
        labels: HashMap<String, String>,
        no_cache: bool,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, BuildError> {
        let opts = BuildImageOptions {
            dockerfile: dockerfile.to_string(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            nocache: no_cache,
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        };
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(context.into())));
        let mut id = None;
        let mut pending = String::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(BuildError::BuildFailed(one_line(&error)))
                }
                Err(e) => return Err(BuildError::BuildFailed(one_line(&e.to_string()))),
            };
            if let Some(detail) = info.error_detail {
                return Err(BuildError::BuildFailed(one_line(
                    &detail.message.unwrap_or_else(|| "unknown error".into()),
                )));
            }
            if let Some(s) = info.stream {
                pending.push_str(&s);
                while let Some(i) = pending.find('\n') {
                    let line: String = pending.drain(..=i).collect();
                    let line = line.trim_end();
                    if !line.is_empty() {
                        log(line);
                    }
                }
            }
            if let Some(aux) = info.aux {
                if let Some(i) = aux.id {
                    id = Some(i);
                }
            }
        }
        if !pending.trim().is_empty() {
            log(pending.trim_end());
        }
        match id {
            Some(id) => Ok(id),
            None => self
                .image(tag)
                .await?
                .map(|i| i.id)
                .ok_or_else(|| BuildError::BuildFailed("the engine reported no image".into())),
        }
    }

    /// Makes sure the base image `name` exists and returns its id.
    ///
    /// A missing image is pulled, unless its name is `berth-base:*`, which no registry has: such
    /// an image (and any image that cannot be pulled, as at air-gapped sites) is created from
    /// Debian packages: `debootstrap --variant=minbase` of `suite` from `mirror`, imported
    /// through the Engine API. That needs root and the `debootstrap` command.
    ///
    /// # Errors
    /// [`BuildError::Base`] when neither works.
    pub async fn ensure_base(
        &self,
        name: &str,
        suite: &str,
        mirror: &str,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, BuildError> {
        if let Some(img) = self.image(name).await? {
            return Ok(img.id);
        }
        if !name.starts_with("berth-base:") {
            log(&format!("pulling base image {name}"));
            let opts = CreateImageOptionsBuilder::new().from_image(name).build();
            let mut s = self.docker.create_image(Some(opts), None, None);
            let mut failed = None;
            while let Some(r) = s.next().await {
                if let Err(e) = r {
                    failed = Some(one_line(&e.to_string()));
                    break;
                }
            }
            match failed {
                None => {
                    if let Some(img) = self.image(name).await? {
                        return Ok(img.id);
                    }
                }
                Some(e) => log(&format!(
                    "cannot pull {name} ({e}); creating it with debootstrap"
                )),
            }
        }
        self.debootstrap_base(name, suite, mirror, log).await
    }

    async fn debootstrap_base(
        &self,
        name: &str,
        suite: &str,
        mirror: &str,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, BuildError> {
        let base_err = |m: String| BuildError::Base(m);
        let dir = tempfile::Builder::new()
            .prefix("berth-rootfs-")
            .tempdir()
            .map_err(|e| base_err(format!("cannot create a temporary folder: {e}")))?;
        let rootfs = dir.path().join("rootfs");
        log(&format!(
            "creating base image {name}: debootstrap {suite} from {mirror}"
        ));
        let mut child = tokio::process::Command::new("debootstrap")
            .args(["--variant=minbase", "--include=ca-certificates", suite])
            .arg(&rootfs)
            .arg(mirror)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                base_err(format!(
                    "cannot run debootstrap ({e}); install it with apt-get install debootstrap"
                ))
            })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut tail = Vec::new();
        if let Some(out) = stdout {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log(&line);
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
        }
        let mut err_text = String::new();
        if let Some(mut e) = stderr {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut err_text).await;
        }
        let status = child.wait().await.map_err(|e| base_err(e.to_string()))?;
        if !status.success() {
            let reason = err_text
                .lines()
                .chain(tail.iter().map(String::as_str))
                .last()
                .unwrap_or("")
                .to_string();
            return Err(base_err(format!("debootstrap failed: {}", reason.trim())));
        }
        log("importing the root file system through the Engine API");
        let id = self.import_rootfs(&rootfs, name).await?;
        Ok(id)
    }

    /// Imports a root file system folder as image `name` (`POST /images/create?fromSrc=-`).
    async fn import_rootfs(&self, rootfs: &Path, name: &str) -> Result<String, BuildError> {
        let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
        let mut tar = tokio::process::Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BuildError::Base(format!("cannot run tar: {e}")))?;
        let out = tar
            .stdout
            .take()
            .ok_or_else(|| BuildError::Base("tar has no output".into()))?;
        let body = tokio_util::io::ReaderStream::with_capacity(out, 1 << 20);
        let opts = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .changes(vec![
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "CMD [\"/bin/bash\"]".to_string(),
                "LABEL berth.base=debootstrap".to_string(),
            ])
            .build();
        let mut s =
            self.docker
                .create_image(Some(opts), Some(bollard::body_try_stream(body)), None);
        while let Some(r) = s.next().await {
            r.map_err(|e| {
                BuildError::Base(format!("import failed: {}", one_line(&e.to_string())))
            })?;
        }
        let status = tar
            .wait()
            .await
            .map_err(|e| BuildError::Base(e.to_string()))?;
        if !status.success() {
            let _ = self.remove_image(name).await;
            return Err(BuildError::Base(
                "tar of the root file system failed".into(),
            ));
        }
        self.image(name)
            .await?
            .map(|i| i.id)
            .ok_or_else(|| BuildError::Base(format!("import finished but {name} is missing")))
    }
}
