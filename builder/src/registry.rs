//! Images through a registry: pushing berth's images to a registry that speaks the Registry
//! HTTP API V2 (Distribution's API, as the CNCF Distribution registry, Debian's
//! `docker-registry`, serves it), so that other machines (Swarm nodes) can pull them.
//!
//! Naming: an image berth built locally as `<name>:<tag>` is pushed as
//! `<registry>/<name>:<tag>`, where `<registry>` is the setting as given (`host:port` or
//! `host:port/prefix`). So with `registry: 127.0.0.1:5000` the environment image
//! `berth-env:<env hash>` becomes `127.0.0.1:5000/berth-env:<env hash>` and the repository
//! image `berth/<repo>:<tree>` becomes `127.0.0.1:5000/berth/<repo>:<tree>`. The environment
//! image is pushed first: the repository image's layers below its own are the environment's,
//! which the engine then mounts from the registry's `berth-env` repository instead of uploading
//! them again; a layer the registry's repository already has is not uploaded at all.
//!
//! Pushes go through the Docker engine (`POST /images/{name}/push`), which talks to the
//! registry (over HTTPS, or plain HTTP for registries on `127.0.0.0/8` and those in the
//! engine's `insecure-registries`). The registry-prefixed local tags a push adds are removed
//! again when it fails (or is dropped part-way), so a refused push leaves nothing behind.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    PushImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, Instrument};

use crate::engine::one_line;
use crate::{BuildEvent, Engine};

/// How long [`Registry::check_reachable`] waits for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The media types a manifest request accepts (`Accept` of `GET /v2/<name>/manifests/<tag>`):
/// Docker's image manifest V2 schema 2 and manifest list, and the OCI image manifest and
/// index.
pub const MANIFEST_MEDIA_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Errors of registry settings, pushes and registry queries. Each displays as one line that
/// names the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A registry setting that is no `host[:port][/prefix]`.
    #[error("invalid registry {value:?}: {reason}")]
    InvalidName {
        /// The setting as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// No TCP connection to the registry's address.
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable {
        /// The registry setting.
        registry: String,
        /// The connection error.
        message: String,
    },
    /// The engine reported an error while pushing (the registry refused the push, or the
    /// connection broke).
    #[error("registry {registry} refused the push of {reference}: {message}")]
    Refused {
        /// The registry setting.
        registry: String,
        /// The reference being pushed (`<registry>/<name>:<tag>`).
        reference: String,
        /// The engine's message, on one line.
        message: String,
    },
    /// The Docker engine failed to tag an image.
    #[error("Docker engine: {0}")]
    Engine(String),
    /// A query of the registry's HTTP API failed or got an unexpected answer.
    #[error("registry {registry}: {message}")]
    Http {
        /// The registry setting.
        registry: String,
        /// What went wrong.
        message: String,
    },
}

/// A registry setting: `host[:port][/prefix]`, e.g. `127.0.0.1:5000` or
/// `registry.example.org/berth` (Docker's reference grammar: a domain, then path components).
/// Serialized as that string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Registry {
    /// `host[:port]`.
    host: String,
    /// Path components after the host (`a/b`), if any.
    prefix: Option<String>,
}

impl Registry {
    /// Parses a registry setting.
    ///
    /// The host must be one Docker reads as a registry rather than a Docker Hub account: it
    /// has a `.` or a `:port`, or is `localhost`. Path components of the prefix follow
    /// Docker's grammar (lowercase letters and digits, separated by `.`, `_`, `__` or `-`s).
    ///
    /// # Errors
    /// [`RegistryError::InvalidName`], saying why.
    pub fn parse(value: &str) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidName {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let v = value.trim().trim_end_matches('/');
        if v.is_empty() {
            return Err(bad("give host:port, e.g. 127.0.0.1:5000"));
        }
        if v.contains("://") {
            return Err(bad(
                "give host:port without a scheme (the engine chooses HTTPS or HTTP)",
            ));
        }
        let (host, prefix) = match v.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        };
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(bad(
                "the host must be a host name or an IPv4 address (letters, digits, '-' and '.')",
            ));
        }
        if let Some(p) = port {
            if !matches!(p.parse::<u32>(), Ok(1..=65535)) || p.starts_with('+') {
                return Err(bad("the port must be a number from 1 to 65535"));
            }
        }
        if port.is_none() && !name.contains('.') && name != "localhost" {
            return Err(bad(
                "Docker would read it as a Docker Hub account: give host:port (e.g. 127.0.0.1:5000) or a domain",
            ));
        }
        if let Some(p) = prefix {
            if !p.split('/').all(path_component_ok) {
                return Err(bad(
                    "path components after the host must be lowercase letters and digits, separated by '.', '_' or '-'",
                ));
            }
        }
        Ok(Self {
            host: host.to_string(),
            prefix: prefix.map(str::to_string),
        })
    }

    /// `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository name in the registry of the local repository `local_repo`
    /// (`berth-env` → `berth-env`, or `<prefix>/berth-env` with a prefix): what the
    /// registry's API paths (`/v2/<name>/…`) take.
    pub fn name_in_registry(&self, local_repo: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{local_repo}"),
            None => local_repo.to_string(),
        }
    }

    /// The reference a local image `name[:tag]` is pushed as: `<registry>/<name>:<tag>`
    /// (`latest` when it has no tag). A name already under this registry stays as it is.
    pub fn reference(&self, local: &str) -> String {
        let (repo, tag) = split_tag(local);
        if repo.starts_with(&format!("{self}/")) {
            return format!("{repo}:{tag}");
        }
        format!("{self}/{repo}:{tag}")
    }

    /// Checks that the registry's address accepts a TCP connection (within
    /// [`CONNECT_TIMEOUT`]): its port, or 443 and then 80 when it has none. It does not tell
    /// whether the registry will accept a push.
    ///
    /// # Errors
    /// [`RegistryError::Unreachable`] with the last connection error.
    pub async fn check_reachable(&self) -> Result<(), RegistryError> {
        let addrs: Vec<String> = if self.host.contains(':') {
            vec![self.host.clone()]
        } else {
            vec![format!("{}:443", self.host), format!("{}:80", self.host)]
        };
        let mut last = String::new();
        for a in &addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: no answer in {} s", CONNECT_TIMEOUT.as_secs()),
            }
        }
        Err(RegistryError::Unreachable {
            registry: self.to_string(),
            message: last,
        })
    }

    /// Whether the registry has a manifest for `reference` (as [`Registry::reference`] makes
    /// them, `<registry>/<name>:<tag>`, or `<name>:<tag>` in the registry), asked over plain
    /// HTTP with `HEAD /v2/<name>/manifests/<tag>` (Distribution's API V2; `Accept`:
    /// [`MANIFEST_MEDIA_TYPES`]). For checking that nodes will be able to pull an image from a
    /// loopback or insecure registry; berth has no TLS client for HTTPS registries.
    ///
    /// # Errors
    /// [`RegistryError::Http`] when the registry does not answer, or answers other than 200
    /// or 404.
    pub async fn has_manifest(&self, reference: &str) -> Result<bool, RegistryError> {
        let local = reference
            .strip_prefix(&format!("{}/", self.host))
            .unwrap_or(reference);
        let (name, tag) = split_tag(local);
        let name = match &self.prefix {
            Some(p) if name.starts_with(&format!("{p}/")) => name.to_string(),
            _ => self.name_in_registry(name),
        };
        let url = format!("http://{}/v2/{name}/manifests/{tag}", self.host);
        let http = |message: String| RegistryError::Http {
            registry: self.to_string(),
            message,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| http(e.to_string()))?;
        let resp = client
            .head(&url)
            .header("Accept", MANIFEST_MEDIA_TYPES)
            .send()
            .await
            .map_err(|e| http(format!("HEAD {url}: {e}")))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(http(format!("HEAD {url} answered {s}"))),
        }
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefix {
            Some(p) => write!(f, "{}/{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl FromStr for Registry {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Registry {
    type Error = RegistryError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Registry> for String {
    fn from(r: Registry) -> String {
        r.to_string()
    }
}

/// A path component of Docker's reference grammar: `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `name[:tag]` as (name, tag), `latest` when there is no tag (a `:` followed by a `/` is a
/// port, not a tag).
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (reference, "latest"),
    }
}

/// What a push of one image did, from the engine's progress messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStats {
    /// Layers uploaded (`Pushed`).
    pub layers_pushed: u32,
    /// Layers the registry's repository already had (`Layer already exists`).
    pub layers_existing: u32,
    /// Layers mounted from another repository of the registry without an upload
    /// (`Mounted from …`).
    pub layers_mounted: u32,
}

impl fmt::Display for PushStats {
    /// `3 layers uploaded, 14 already there, 0 mounted`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |k: u32| if k == 1 { "layer" } else { "layers" };
        write!(
            f,
            "{} {} uploaded, {} already there, {} mounted",
            self.layers_pushed,
            n(self.layers_pushed),
            self.layers_existing,
            self.layers_mounted
        )
    }
}

/// The engine's message about a failed push, on one line, with a hint where the registry's
/// answer says little (Distribution answers a push to a read-only registry with a bare
/// `405 Method not allowed`).
fn push_message(e: bollard::errors::Error) -> String {
    let text = match e {
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    };
    let mut m = one_line(&text.replace("\\n", " "));
    if m.contains("HTTP 405") || m.contains("unsupported") {
        m.push_str(" (the registry does not accept pushes: is it read-only?)");
    }
    m
}

/// One image pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedImage {
    /// The local image (`berth-env:<hash>`, `berth/<repo>:<tree>`).
    pub local: String,
    /// The reference pushed, `<registry>/<name>:<tag>`: what nodes pull.
    pub reference: String,
    /// The manifest's digest (`sha256:…`) as the registry stored it, as the engine reported it;
    /// `<reference without tag>@<digest>` pins exactly this image.
    pub digest: Option<String>,
    /// What the push uploaded.
    pub stats: PushStats,
    /// Wall-clock time of the push, in seconds.
    pub seconds: f64,
}

/// The images of a build pushed to a registry (the `pushed` member of `berth build --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pushed {
    /// The registry setting, `host[:port][/prefix]`.
    pub registry: String,
    /// The runnable image's reference in the registry (the repository image, or the
    /// environment image of a Dockerfile repository).
    pub image: String,
    /// The environment image's reference in the registry.
    pub env_image: String,
    /// Each image pushed, the environment image first (once when both are the same image).
    pub images: Vec<PushedImage>,
}

/// A registry-prefixed local tag a push added, and the image it named before (if any), so a
/// failed push can undo it.
#[derive(Debug, Clone)]
struct AddedTag {
    reference: String,
    previous: Option<String>,
}

/// Undoes the tags of a push that failed or was dropped: removes each added tag, or points it
/// back at the image it named before.
async fn undo_tags(engine: &Engine, added: &[AddedTag]) {
    for t in added.iter().rev() {
        let result = match &t.previous {
            Some(id) => tag(engine, id, &t.reference).await,
            None => {
                let opts = RemoveImageOptionsBuilder::new().noprune(true).build();
                engine
                    .docker()
                    .remove_image(&t.reference, Some(opts), None)
                    .await
                    .map(|_| ())
                    .map_err(|e| RegistryError::Engine(one_line(&e.to_string())))
            }
        };
        match result {
            Ok(()) => tracing::debug!(reference = %t.reference, "undid a failed push's tag"),
            Err(e) => {
                tracing::warn!(reference = %t.reference, error = %e, "cannot undo a failed push's tag")
            }
        }
    }
}

/// Undoes a push's tags when its future is dropped part-way (a timeout, a cancelled build).
struct UndoOnDrop {
    engine: Engine,
    added: Vec<AddedTag>,
    armed: bool,
}

impl Drop for UndoOnDrop {
    fn drop(&mut self) {
        if !self.armed || self.added.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        let added = std::mem::take(&mut self.added);
        crate::engine::spawn_cleanup(async move { undo_tags(&engine, &added).await });
    }
}

async fn tag(engine: &Engine, image: &str, reference: &str) -> Result<(), RegistryError> {
    let (repo, t) = split_tag(reference);
    let opts = TagImageOptionsBuilder::new().repo(repo).tag(t).build();
    engine
        .docker()
        .tag_image(image, Some(opts))
        .await
        .map_err(|e| RegistryError::Engine(one_line(&e.to_string())))
}

/// Pushes the environment image `env_image` and then the runnable image `image` (once when
/// they are the same) to `registry`, as `<registry>/<name>:<tag>` (see the module's naming),
/// reporting a log line before and after each push to `report`.
///
/// Each image gets its registry-prefixed local tag first (the engine pushes tags). The engine
/// skips layers the registry's repository has and mounts those another of its repositories
/// has, so pushing the same images again uploads no layer. When any push fails, the tags this
/// call added are removed (a tag that named another image before is pointed back at it), also
/// when the future is dropped part-way.
///
/// # Errors
/// [`RegistryError::Unreachable`] when the registry's address takes no connection;
/// [`RegistryError::Refused`] with the engine's message when a push fails (a read-only
/// registry, authentication, a broken connection); [`RegistryError::Engine`] when tagging
/// fails.
pub async fn push(
    engine: &Engine,
    registry: &Registry,
    env_image: &str,
    image: &str,
    report: &(dyn Fn(BuildEvent) + Send + Sync),
) -> Result<Pushed, RegistryError> {
    let span = info_span!("push", registry = %registry);
    async {
        registry.check_reachable().await?;
        let mut locals = vec![env_image.to_string()];
        if image != env_image {
            locals.push(image.to_string());
        }
        let mut guard = UndoOnDrop {
            engine: engine.clone(),
            added: Vec::new(),
            armed: true,
        };
        let mut images = Vec::new();
        let mut failure = None;
        for local in &locals {
            match push_one(engine, registry, local, &mut guard.added, report).await {
                Ok(p) => images.push(p),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        guard.armed = false;
        if let Some(e) = failure {
            undo_tags(engine, &guard.added).await;
            return Err(e);
        }
        Ok(Pushed {
            registry: registry.to_string(),
            image: registry.reference(image),
            env_image: registry.reference(env_image),
            images,
        })
    }
    .instrument(span)
    .await
}

/// Tags `local` for `registry` and pushes it; the tag is recorded in `added` when it is new
/// (or named another image).
async fn push_one(
    engine: &Engine,
    registry: &Registry,
    local: &str,
    added: &mut Vec<AddedTag>,
    report: &(dyn Fn(BuildEvent) + Send + Sync),
) -> Result<PushedImage, RegistryError> {
    let started = Instant::now();
    let reference = registry.reference(local);
    let engine_err = |e: crate::BuildError| RegistryError::Engine(e.to_string());
    let local_id = engine
        .image(local)
        .await
        .map_err(engine_err)?
        .map(|i| i.id)
        .ok_or_else(|| RegistryError::Engine(format!("no such image: {local}")))?;
    let previous = engine
        .image(&reference)
        .await
        .map_err(engine_err)?
        .map(|i| i.id);
    if previous.as_deref() != Some(local_id.as_str()) {
        tag(engine, &local_id, &reference).await?;
        added.push(AddedTag {
            reference: reference.clone(),
            previous,
        });
    }
    report(BuildEvent::Log(format!("pushing {reference}")));
    let (repo, t) = split_tag(&reference);
    let opts = PushImageOptionsBuilder::new().tag(t).build();
    let mut stream = engine.docker().push_image(repo, Some(opts), None);
    let refused = |message: String| RegistryError::Refused {
        registry: registry.to_string(),
        reference: reference.clone(),
        message,
    };
    let mut stats = PushStats::default();
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| refused(push_message(e)))?;
        if let Some(d) = info.error_detail {
            return Err(refused(one_line(
                &d.message
                    .unwrap_or_else(|| "the engine reported an error".into()),
            )));
        }
        let Some(status) = info.status else { continue };
        match status.as_str() {
            "Pushed" => stats.layers_pushed += 1,
            "Layer already exists" => stats.layers_existing += 1,
            s if s.starts_with("Mounted from") => stats.layers_mounted += 1,
            s => {
                // `<tag>: digest: sha256:<hex> size: <bytes>`, the push's last message.
                if let Some(rest) = s.split_once(" digest: ").map(|(_, r)| r) {
                    digest = rest.split_whitespace().next().map(str::to_string);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    info!(%reference, ?digest, ?stats, seconds, "pushed");
    report(BuildEvent::Log(format!(
        "pushed {reference} in {seconds:.1} s: {stats}"
    )));
    Ok(PushedImage {
        local: local.to_string(),
        reference,
        digest,
        stats,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_settings_parse_or_say_why_not() {
        let r = Registry::parse("127.0.0.1:5000").unwrap();
        assert_eq!(r.host(), "127.0.0.1:5000");
        assert_eq!(r.to_string(), "127.0.0.1:5000");
        assert_eq!(r.reference("berth-env:abc"), "127.0.0.1:5000/berth-env:abc");
        assert_eq!(
            r.reference("berth/setup.py:0123456789ab"),
            "127.0.0.1:5000/berth/setup.py:0123456789ab"
        );
        assert_eq!(r.reference("mine"), "127.0.0.1:5000/mine:latest");
        assert_eq!(
            r.reference("127.0.0.1:5000/berth-env:abc"),
            "127.0.0.1:5000/berth-env:abc"
        );
        let p = Registry::parse("registry.example.org/team/berth/").unwrap();
        assert_eq!(p.to_string(), "registry.example.org/team/berth");
        assert_eq!(
            p.reference("berth-env:abc"),
            "registry.example.org/team/berth/berth-env:abc"
        );
        assert_eq!(p.name_in_registry("berth-env"), "team/berth/berth-env");
        assert!(Registry::parse("localhost").is_ok());
        for (bad, why) in [
            ("", "host:port"),
            ("http://127.0.0.1:5000", "scheme"),
            ("myregistry", "Docker Hub"),
            ("127.0.0.1:0", "port"),
            ("127.0.0.1:99999", "port"),
            ("127.0.0.1:50x", "port"),
            ("bad_host.org", "host"),
            ("reg.org/Upper", "path components"),
            ("reg.org/a//b", "path components"),
            ("reg.org/-a", "path components"),
        ] {
            let e = Registry::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(!e.contains('\n'));
        }
        // Through serde, as the server's configuration reads it.
        let r: Registry = serde_json::from_str("\"127.0.0.1:5000/x\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"127.0.0.1:5000/x\"");
        assert!(serde_json::from_str::<Registry>("\"nohost\"").is_err());
    }

    #[test]
    fn path_components_follow_dockers_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "setup.py", "0x"] {
            assert!(path_component_ok(ok), "{ok}");
        }
        for bad in ["", "A", "a.", ".a", "a..b", "a___b", "a-", "a b"] {
            assert!(!path_component_ok(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_in_one_line() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = Registry::parse(&format!("127.0.0.1:{port}")).unwrap();
        let e = r.check_reachable().await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("registry 127.0.0.1:{port} is unreachable")),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
