//! The Docker Engine API (bollard): images, builds, and creating the base image locally.

use std::collections::HashMap;
use std::path::Path;

use std::sync::{Arc, Mutex};

use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;

use crate::{BuildError, BuildLimits};

/// Clean-ups of builds whose future was dropped, still running.
static PENDING_CLEANUPS: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Removes what a build created when its future is dropped before the build ended.
struct CleanupOnDrop {
    engine: Engine,
    track: BuildTrack,
    armed: bool,
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let engine = self.engine.clone();
            let track = self.track.clone();
            let task = rt.spawn(async move { engine.cleanup(&track).await });
            PENDING_CLEANUPS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
        }
    }
}

/// Runs `task` on the current runtime (when there is one) as a clean-up that
/// [`finish_cleanups`] waits for.
pub(crate) fn spawn_cleanup(task: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let task = rt.spawn(task);
        PENDING_CLEANUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }
}

/// Waits for the clean-ups of builds that were dropped part-way (an interrupted `berth run`
/// waits for them before it exits, so their step containers and images are gone too).
pub async fn finish_cleanups() {
    let tasks: Vec<_> =
        std::mem::take(&mut *PENDING_CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
    for t in tasks {
        let _ = t.await;
    }
}

/// What a build has created so far: the step container running now and the images of the
/// steps it committed (not those reused from Docker's cache), for [`Engine::cleanup`].
#[derive(Debug, Clone, Default)]
pub struct BuildTrack(Arc<Mutex<Tracked>>);

#[derive(Debug, Default)]
struct Tracked {
    container: Option<String>,
    images: Vec<String>,
    /// When the first build step began (Unix seconds, the engine's clock on this host).
    started: Option<i64>,
}

impl BuildTrack {
    fn with<R>(&self, f: impl FnOnce(&mut Tracked) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Notes that a build begins now, unless one began earlier with this record.
    fn begin(&self) {
        let now = unix_now();
        self.with(|t| {
            t.started.get_or_insert(now);
        });
    }

    /// When the first build began (Unix seconds); now when none did.
    fn started(&self) -> i64 {
        self.with(|t| t.started).unwrap_or_else(unix_now)
    }

    /// Empties the record, returning the running container and the images, oldest first.
    fn take(&self) -> (Option<String>, Vec<String>) {
        self.with(|t| (t.container.take(), std::mem::take(&mut t.images)))
    }

    /// The images recorded so far (ids as the classic builder prints them: 12 hex digits).
    pub fn images(&self) -> Vec<String> {
        self.with(|t| t.images.clone())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reads the classic builder's output (`Step 2/9 : RUN …`, ` ---> Running in <id>`,
/// ` ---> Using cache`, ` ---> <id>`) to record what each step creates.
#[derive(Debug, Default)]
struct StepState {
    /// The step is a `FROM`: its ` ---> <id>` names the base, which this build did not create.
    from: bool,
    /// The step was taken from Docker's cache.
    cached: bool,
}

/// `line` without the colour codes (SGR sequences, `ESC[…m`) at its start.
fn strip_sgr(mut line: &str) -> &str {
    while let Some(rest) = line.strip_prefix("\x1b[") {
        match rest.find('m') {
            Some(i) if rest[..i].bytes().all(|b| b.is_ascii_digit() || b == b';') => {
                line = &rest[i + 1..];
            }
            _ => break,
        }
    }
    line
}

impl StepState {
    fn line(&mut self, line: &str, track: &BuildTrack) {
        // The classic builder wraps a step's stderr in colour codes (`ESC[91m` … `ESC[0m`), and
        // the reset lands at the start of the next line: ` ---> <id>` after a step that wrote
        // to stderr reads `ESC[0m ---> <id>`. Without this, such a step's image went untracked
        // and a failed build left it behind.
        let line = strip_sgr(line);
        if let Some(rest) = line.strip_prefix("Step ") {
            if let Some((_, instruction)) = rest.split_once(" : ") {
                self.from = instruction
                    .trim_start()
                    .get(..5)
                    .is_some_and(|w| w.eq_ignore_ascii_case("from "));
                self.cached = false;
            }
            return;
        }
        // A step whose output did not end with a newline runs into the builder's own line:
        // `partial output ---> <id>`.
        let tail = line
            .rfind(" ---> ")
            .map(|i| &line[i + 6..])
            .filter(|t| t.trim().len() >= 12 && t.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(arrow) = line.strip_prefix(" ---> ").or(tail) else {
            let removing = "Removing intermediate container ";
            if let Some(c) = line.rfind(removing).map(|i| &line[i + removing.len()..]) {
                track.with(|t| {
                    if t.container.as_deref() == Some(c.trim()) {
                        t.container = None;
                    }
                });
            }
            return;
        };
        let arrow = arrow.trim();
        if arrow == "Using cache" {
            self.cached = true;
        } else if let Some(c) = arrow.strip_prefix("Running in ") {
            let c = c.trim().to_string();
            track.with(|t| t.container = Some(c));
        } else if arrow.len() >= 12
            && arrow.bytes().all(|b| b.is_ascii_hexdigit())
            && !self.from
            && !self.cached
        {
            let id = arrow.to_string();
            track.with(|t| t.images.push(id));
        }
    }
}

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
    /// The network of every build step (`networkmode` of `POST /build`); `None` for the
    /// engine's default.
    build_network: Option<String>,
}

fn engine_err(e: bollard::errors::Error) -> BuildError {
    BuildError::Engine(one_line(&e.to_string()))
}

/// `s` on one line: its non-empty lines, trimmed, joined by spaces.
pub(crate) fn one_line(s: &str) -> String {
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
        Ok(Self {
            docker,
            build_network: None,
        })
    }

    /// This connection, with every step of the builds it runs on the engine's `none` network
    /// (the classic builder's `networkmode=none`): no step can reach any host. Offline builds
    /// (`berth build --offline`) use it.
    pub fn without_network(&self) -> Self {
        Self {
            docker: self.docker.clone(),
            build_network: Some("none".into()),
        }
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

    /// A client whose `POST /build` requests carry `limits`: `memory` and `memswap` (bytes; so
    /// no swap beyond the memory limit) and `ulimits` with `nproc` (processes of the step's
    /// user). bollard's `BuildImageOptions` has no `ulimits` and holds memory in an `i32`
    /// (2 GiB at most), so the parameters are added to the request's query by a request
    /// modifier; the names and formats are the Engine API's (`POST /build`, API 1.41).
    fn limited(&self, limits: &BuildLimits) -> Docker {
        let mut extra = String::new();
        if let Some(m) = limits.memory_bytes {
            extra.push_str(&format!("&memory={m}&memswap={m}"));
        }
        if let Some(p) = limits.pids {
            let ulimits = format!(r#"[{{"Name":"nproc","Soft":{p},"Hard":{p}}}]"#);
            extra.push_str("&ulimits=");
            extra.extend(percent_encoding::utf8_percent_encode(
                &ulimits,
                percent_encoding::NON_ALPHANUMERIC,
            ));
        }
        if extra.is_empty() {
            return self.docker.clone();
        }
        self.docker.clone().with_request_modifier(move |mut req| {
            if req.method() == http::Method::POST && req.uri().path().ends_with("/build") {
                let uri = req.uri().to_string();
                let joined = if req.uri().query().is_some() {
                    format!("{uri}{extra}")
                } else {
                    format!("{uri}?{}", &extra[1..])
                };
                if let Ok(u) = http::Uri::try_from(joined) {
                    *req.uri_mut() = u;
                }
            }
            req
        })
    }

    /// Builds `context` (a tar archive) with the classic builder and tags it `tag`, passing each
    /// log line to `log`. Each step's container gets `limits`. Intermediate containers are
    /// removed even when the build fails, nothing is tagged unless it succeeds, and on failure
    /// the images of the steps this build created (not those it reused from the cache) are
    /// removed, so no untagged image is left. `track` records what the build has created so
    /// far, so that a build stopped from outside (its future dropped) can be cleaned up with
    /// [`Engine::cleanup`]; it is emptied when the build succeeds. `build_args` are the
    /// Dockerfile's `ARG` values (`docker build --build-arg`); the classic builder warns in the
    /// log about those the Dockerfile does not declare.
    ///
    /// # Errors
    /// [`BuildError::BuildFailed`] with the engine's message when a step fails;
    /// [`BuildError::OutOfMemory`] when a step was killed (exit code 137) under a memory limit.
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        &self,
        context: Vec<u8>,
        tag: &str,
        dockerfile: &str,
        labels: HashMap<String, String>,
        build_args: HashMap<String, String>,
        no_cache: bool,
        limits: &BuildLimits,
        track: &BuildTrack,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, BuildError> {
        // Dropped before the build ends (a client that left, an interrupt): the clean-up runs
        // on its own task; see [`finish_cleanups`].
        let mut guard = CleanupOnDrop {
            engine: self.clone(),
            track: track.clone(),
            armed: true,
        };
        let result = self
            .build_steps(
                context, tag, dockerfile, labels, build_args, no_cache, limits, track, log,
            )
            .await;
        guard.armed = false;
        match result {
            Ok(id) => {
                track.take();
                Ok(id)
            }
            Err(e) => {
                self.cleanup(track).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_steps(
        &self,
        context: Vec<u8>,
        tag: &str,
        dockerfile: &str,
        labels: HashMap<String, String>,
        build_args: HashMap<String, String>,
        no_cache: bool,
        limits: &BuildLimits,
        track: &BuildTrack,
        log: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, BuildError> {
        let opts = BuildImageOptions {
            dockerfile: dockerfile.to_string(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            nocache: no_cache,
            labels: (!labels.is_empty()).then_some(labels),
            buildargs: (!build_args.is_empty()).then_some(build_args),
            networkmode: self.build_network.clone(),
            ..Default::default()
        };
        let docker = self.limited(limits);
        // A step that failed through berth's build helper said why in one line
        // (`berth-error: <file>: <cause>`, naming the package); that line beats the engine's
        // "returned a non-zero code".
        let mut cause: Option<String> = None;
        let failed = |message: &str, cause: &Option<String>| {
            let message = one_line(message);
            match limits.memory_bytes {
                Some(m) if message.contains("returned a non-zero code: 137") => {
                    BuildError::OutOfMemory { mib: m >> 20 }
                }
                _ => BuildError::BuildFailed(cause.clone().unwrap_or(message)),
            }
        };
        track.begin();
        let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
        let mut id = None;
        let mut pending = String::new();
        let mut step = StepState::default();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(failed(&error, &cause))
                }
                Err(e) => return Err(failed(&e.to_string(), &cause)),
            };
            if let Some(detail) = info.error_detail {
                return Err(failed(
                    &detail.message.unwrap_or_else(|| "unknown error".into()),
                    &cause,
                ));
            }
            if let Some(s) = info.stream {
                pending.push_str(&s);
                while let Some(i) = pending.find('\n') {
                    let line: String = pending.drain(..=i).collect();
                    let line = line.trim_end();
                    if !line.is_empty() {
                        step.line(line, track);
                        if let Some(c) = line.strip_prefix("berth-error: ") {
                            cause = Some(one_line(c));
                        } else if line.starts_with("Step ") {
                            cause = None;
                        }
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
            step.line(pending.trim_end(), track);
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

    /// Removes what a failed or stopped build created, as `track` recorded it: the step
    /// container still running (killed), then the step images, newest first, each only while
    /// untagged and without children (an image another build or tag uses stays). Errors are
    /// logged, not returned: cleaning up must never hide the build's own error.
    pub async fn cleanup(&self, track: &BuildTrack) {
        let started = track.started();
        let (container, images) = track.take();
        if let Some(c) = container {
            self.wait_for_step_container(&c).await;
            let opts = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match self.docker.remove_container(&c, Some(opts)).await {
                Ok(()) => tracing::debug!(container = %c, "removed the build step's container"),
                Err(e) => {
                    tracing::debug!(container = %c, error = %e, "build container already gone")
                }
            }
        }
        // The images to remove: those the build's output named, plus untagged images next to
        // them in the chain that the output did not name (a step whose ` ---> <id>` line was
        // lost, or the parent of a named one): children of a named image made since the build
        // started, and untagged parents made since then.
        let ours = self.step_chain(&images, started).await;
        for id in ours.iter().rev() {
            // The engine may still be removing the step's container after a disconnect: an
            // image in use by it cannot go yet.
            for attempt in 0..40 {
                match self.docker.inspect_image(id).await {
                    Ok(i) if i.repo_tags.as_ref().is_some_and(|t| !t.is_empty()) => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
                let opts = RemoveImageOptionsBuilder::new().noprune(true).build();
                match self.docker.remove_image(id, Some(opts), None).await {
                    Ok(_) => {
                        tracing::debug!(image = %id, "removed a failed build's step image");
                        break;
                    }
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        message,
                    }) if message.contains("running container")
                        || message.contains("being used") =>
                    {
                        if attempt == 39 {
                            tracing::warn!(image = %id, %message, "cannot remove a failed build's step image");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        tracing::warn!(image = %id, error = %e, "a failed build's step image kept");
                        break;
                    }
                }
            }
        }
    }

    /// Waits (at most 30 s) until the engine has removed the step container `id` of a build
    /// that failed or was abandoned, killing it first if it still runs. A step whose process
    /// had already exited when the build was dropped is committed by the engine all the same,
    /// and only then is its container removed: waiting for that makes the committed image
    /// visible to the cleanup that follows, rather than appearing after it.
    async fn wait_for_step_container(&self, id: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut killed = false;
        while std::time::Instant::now() < deadline {
            match self.docker.inspect_container(id, None).await {
                Ok(c) => {
                    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                    if running && !killed {
                        killed = true;
                        if let Err(e) = self.docker.kill_container(id, None).await {
                            tracing::debug!(container = %id, error = %e, "cannot kill the build step");
                        }
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        tracing::debug!(container = %id, "the engine kept the build step's container for 30 s");
    }

    /// The failed build's step images in chain order (parents first): `named` (ids as the
    /// builder printed them) widened by the untagged images around them that the build made
    /// (created at or after `started`, Unix seconds): their untagged parents and the children
    /// of the newest one. Falls back to `named` when the engine cannot list images.
    async fn step_chain(&self, named: &[String], started: i64) -> Vec<String> {
        if named.is_empty() {
            return Vec::new();
        }
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::new()
            .all(true)
            .build();
        let Ok(all) = self.docker.list_images(Some(opts)).await else {
            return named.to_vec();
        };
        let short = |id: &str| id.trim_start_matches("sha256:").to_string();
        let by_id: HashMap<String, &bollard::models::ImageSummary> =
            all.iter().map(|i| (short(&i.id), i)).collect();
        let full = |n: &str| {
            by_id
                .keys()
                .find(|k| k.starts_with(n.trim_start_matches("sha256:")))
                .cloned()
        };
        let untagged_new = |i: &bollard::models::ImageSummary| {
            i.repo_tags.iter().all(|t| t == "<none>:<none>") && i.created >= started - 1
        };
        let mut set: Vec<String> = named.iter().filter_map(|n| full(n)).collect();
        if set.is_empty() {
            return named.to_vec();
        }
        // The one untagged child the build made above a member, step after step.
        let mut i = 0;
        while i < set.len() {
            let children: Vec<&String> = by_id
                .iter()
                .filter(|(_, c)| short(&c.parent_id) == set[i] && untagged_new(c))
                .map(|(k, _)| k)
                .collect();
            if let [c] = children.as_slice() {
                if !set.contains(c) {
                    set.push((*c).clone());
                }
            }
            i += 1;
        }
        // The untagged parents the build made below each member.
        for start in set.clone() {
            let mut cur = start;
            while let Some(p) = by_id.get(&cur).map(|i| short(&i.parent_id)) {
                match by_id.get(&p) {
                    Some(i) if !p.is_empty() && untagged_new(i) => {
                        if !set.contains(&p) {
                            set.push(p.clone());
                        }
                        cur = p;
                    }
                    _ => break,
                }
            }
        }
        // Parents first: an image comes after every member that is its parent.
        let mut out: Vec<String> = Vec::new();
        while !set.is_empty() {
            let pos = set
                .iter()
                .position(|c| {
                    let parent = by_id
                        .get(c)
                        .map(|i| short(&i.parent_id))
                        .unwrap_or_default();
                    !set.contains(&parent)
                })
                .unwrap_or(0);
            out.push(set.remove(pos));
        }
        out.into_iter().map(|k| format!("sha256:{k}")).collect()
    }

    /// Makes sure the base image `name` exists and returns its id.
    ///
    /// A missing image is pulled, unless its name is `berth-base:*`, which no registry has: such
    /// an image (and any image that cannot be pulled, as at air-gapped sites) is created from
    /// Debian packages: `debootstrap --variant=minbase` of `suite` (`bookworm`, `trixie`) from
    /// `mirror`, imported through the Engine API. That needs root and the `debootstrap`
    /// command. Builds of one process that need a missing base at the same time wait for one
    /// creation rather than each running debootstrap.
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
        // Creations are rare and slow: one at a time, and the image looked up again once it is
        // this build's turn (another build may have created it meanwhile).
        static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = CREATING.lock().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_after_a_step_that_wrote_to_stderr_are_tracked() {
        let track = BuildTrack::default();
        let mut step = StepState::default();
        for line in [
            "Step 1/3 : FROM berth-base:bookworm",
            " ---> 0a712c6aeea0",
            "Step 2/3 : RUN uv pip install x",
            " ---> Running in 33c5b925475b",
            "\u{1b}[91mwarning: retrying",
            "\u{1b}[0mRemoving intermediate container 33c5b925475b",
            "\u{1b}[0m ---> 4de913108064",
            "Step 3/4 : RUN true",
            " ---> Using cache",
            " ---> 6895f9f44fd3",
            "Step 4/4 : RUN printf partial",
            " ---> Running in 44d5b925475c",
            "partialRemoving intermediate container 44d5b925475c",
            "more ---> 5ae913108065",
        ] {
            step.line(line, &track);
        }
        let (container, images) = track.take();
        assert_eq!(container, None, "the removed step container is forgotten");
        assert_eq!(
            images,
            vec!["4de913108064".to_string(), "5ae913108065".to_string()]
        );
        assert_eq!(strip_sgr("\u{1b}[0m\u{1b}[91mx"), "x");
        assert_eq!(strip_sgr("\u{1b}[bad"), "\u{1b}[bad");
    }
}
