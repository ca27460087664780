//! What an image holds: the package record every berth image carries
//! ([`berth_buildpacks::PACKAGES_RECORD`], written by the build's last step) and the
//! provenance its labels give. `berth inspect` and `berth lock` read them.

use std::collections::BTreeMap;
use std::io::Read;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{labels, BuildError, Engine};

/// One installed distribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// PEP 503 normalized name.
    pub name: String,
    /// The installed version.
    pub version: String,
    /// sha256 (hex) of the distribution's installed `RECORD`, which lists every installed file
    /// with its own sha256: equal digests mean byte-equal installed files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The tool that installed it (`uv`, `pip`), from its `INSTALLER` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<String>,
    /// Where it came from when not from an index (PEP 610 `direct_url.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_url: Option<String>,
    /// Installed in editable mode (the repository itself, `-e .`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub editable: bool,
}

/// The package record of an image (`/etc/berth/packages.json`, format 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packages {
    /// Format version of the record.
    pub format: u32,
    /// The kernel environment's Python, `X.Y.Z`.
    pub python: String,
    /// The kernel environment (`/srv/venv`), sorted by name.
    pub kernel: Vec<Package>,
    /// berth's server environment (`/srv/server`); `None` when the repository's environment
    /// is the server too.
    pub server: Option<Vec<Package>>,
    /// The dashboard's extra packages (`/srv/dashboard`), seen by the scheduler only.
    pub dashboard: Option<Vec<Package>>,
}

/// An image's provenance and packages, as `berth inspect` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// The image reference asked about.
    pub image: String,
    /// The engine's image id (`sha256:…`).
    pub id: String,
    /// Repository URL (credentials redacted), from `berth.repo_url`.
    pub repo_url: Option<String>,
    /// The ref asked for.
    pub r#ref: Option<String>,
    /// The commit built.
    pub commit: Option<String>,
    /// The env hash.
    pub env_hash: Option<String>,
    /// The buildpack.
    pub buildpack: Option<String>,
    /// The Python the repository asked for (`X.Y`), if it asked.
    pub python_requested: Option<String>,
    /// The Python installed, `X.Y.Z` from the record (else `X.Y` from the label).
    pub python_actual: Option<String>,
    /// The base image's id.
    pub base_image_id: Option<String>,
    /// berth's version that built it.
    pub berth_version: Option<String>,
    /// sha256 of the package record, from the label `berth.packages`; `verified` tells whether
    /// the record read from the image has that digest.
    pub packages_sha256: Option<String>,
    /// Whether the record's bytes match `packages_sha256`.
    pub verified: bool,
    /// The package record, when the image has one (not for Dockerfile repositories).
    pub packages: Option<Packages>,
    /// Every `berth.*` label, as it is.
    pub labels: BTreeMap<String, String>,
}

/// Starts the created container `id` and waits for it to exit; returns its exit status.
///
/// # Errors
/// [`BuildError::Engine`].
pub(crate) async fn start_and_wait(docker: &bollard::Docker, id: &str) -> Result<i64, BuildError> {
    use bollard::query_parameters::WaitContainerOptionsBuilder;
    let eng = |e: bollard::errors::Error| BuildError::Engine(e.to_string());
    docker
        .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(eng)?;
    let mut wait = docker.wait_container(id, Some(WaitContainerOptionsBuilder::new().build()));
    let mut code = 0;
    while let Some(r) = wait.next().await {
        match r {
            Ok(w) => code = w.status_code,
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
            Err(e) => return Err(eng(e)),
        }
    }
    Ok(code)
}

/// sha256 (hex) of a package record's bytes, the value of the `berth.packages` label.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads one file from an image without running it: creates a container (never started),
/// copies the file out through the Engine API (`GET /containers/{id}/archive`), removes the
/// container. `Ok(None)` when the image has no such file.
///
/// # Errors
/// [`BuildError::Engine`] when the engine fails otherwise.
pub async fn read_image_file(
    engine: &Engine,
    image: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, BuildError> {
    let docker = engine.docker();
    let eng = |e: bollard::errors::Error| BuildError::Engine(e.to_string());
    let created = create(
        engine,
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/nonexistent".into()]),
            network_disabled: Some(true),
            ..Default::default()
        },
    )
    .await?;
    let opts = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(&created.id, Some(opts));
    let mut archive = Vec::new();
    let mut missing = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => archive.extend_from_slice(&b),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                missing = true;
                break;
            }
            Err(e) => {
                let _ = remove(engine, &created.id).await;
                return Err(eng(e));
            }
        }
    }
    remove(engine, &created.id).await?;
    if missing {
        return Ok(None);
    }
    let mut tar = tar::Archive::new(archive.as_slice());
    let entries = tar
        .entries()
        .map_err(|e| BuildError::Engine(format!("bad archive from the engine: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| BuildError::Engine(format!("bad archive from the engine: {e}")))?;
        if entry.header().entry_type().is_file() {
            let mut out = Vec::new();
            entry
                .read_to_end(&mut out)
                .map_err(|e| BuildError::Engine(format!("bad archive from the engine: {e}")))?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}

/// Creates (never starts) a container labelled `berth.role=tool`, so `docker ps -a` tells
/// what it is should a crash leave it.
pub(crate) async fn create(
    engine: &Engine,
    mut body: ContainerCreateBody,
) -> Result<bollard::models::ContainerCreateResponse, BuildError> {
    body.labels
        .get_or_insert_with(Default::default)
        .insert("berth.role".to_string(), "tool".to_string());
    engine
        .docker()
        .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
        .await
        .map_err(|e| BuildError::Engine(e.to_string()))
}

pub(crate) async fn remove(engine: &Engine, id: &str) -> Result<(), BuildError> {
    engine
        .docker()
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .map_err(|e| BuildError::Engine(e.to_string()))
}

/// The package record of `image` and its raw bytes; `None` for an image without one (a
/// Dockerfile repository, or an image berth did not build).
///
/// # Errors
/// [`BuildError::Engine`] for engine failures; [`BuildError::Internal`] for a record that is
/// not valid JSON of the expected shape.
pub async fn read_packages(
    engine: &Engine,
    image: &str,
) -> Result<Option<(Packages, Vec<u8>)>, BuildError> {
    let Some(bytes) = read_image_file(engine, image, berth_buildpacks::PACKAGES_RECORD).await?
    else {
        return Ok(None);
    };
    let packages: Packages = serde_json::from_slice(&bytes).map_err(|e| {
        BuildError::Internal(format!(
            "{} in {image} is not a package record: {e}",
            berth_buildpacks::PACKAGES_RECORD
        ))
    })?;
    Ok(Some((packages, bytes)))
}

/// Everything `berth inspect` shows about a local image.
///
/// # Errors
/// [`BuildError::Engine`] when the image does not exist (`no such image`) or the engine fails.
pub async fn provenance(engine: &Engine, image: &str) -> Result<Provenance, BuildError> {
    let info = engine
        .image(image)
        .await?
        .ok_or_else(|| BuildError::Engine(format!("no such image: {image}")))?;
    let labels: BTreeMap<String, String> = info
        .labels
        .iter()
        .filter(|(k, _)| k.starts_with("berth."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let get = |k: &str| labels.get(k).cloned();
    let record = read_packages(engine, image).await?;
    let packages_sha256 = get(labels::PACKAGES);
    let verified = match (&record, &packages_sha256) {
        (Some((_, bytes)), Some(want)) => &digest(bytes) == want,
        _ => false,
    };
    let python_actual = record
        .as_ref()
        .map(|(p, _)| p.python.clone())
        .or_else(|| get(labels::PYTHON_ACTUAL));
    Ok(Provenance {
        image: image.to_string(),
        id: info.id.clone(),
        repo_url: get(labels::REPO_URL),
        r#ref: get(labels::REF),
        commit: get(labels::COMMIT),
        env_hash: get(labels::ENV_HASH),
        buildpack: get(labels::BUILDPACK),
        python_requested: get(labels::PYTHON_REQUESTED),
        python_actual,
        base_image_id: get(labels::BASE_IMAGE),
        berth_version: get(labels::VERSION),
        packages_sha256,
        verified,
        packages: record.map(|(p, _)| p),
        labels,
    })
}

/// Runs a shell script in a new container of `image` (as the image's user, on the engine's
/// default network, berth's entrypoint bypassed) and returns its exit code, stdout and stderr.
/// The container is removed afterwards, whatever happened.
///
/// # Errors
/// [`BuildError::Engine`] when the engine fails.
pub async fn run_in_image(
    engine: &Engine,
    image: &str,
    script: &str,
    env: Vec<String>,
) -> Result<(i64, String, String), BuildError> {
    use bollard::container::LogOutput;
    use bollard::query_parameters::LogsOptionsBuilder;
    let docker = engine.docker();
    let eng = |e: bollard::errors::Error| BuildError::Engine(e.to_string());
    let created = create(
        engine,
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![script.to_string()]),
            env: Some(env),
            ..Default::default()
        },
    )
    .await?;
    let id = created.id;
    let result = async {
        let code = start_and_wait(docker, &id).await?;
        let mut logs = docker.logs(
            &id,
            Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
        );
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(chunk) = logs.next().await {
            match chunk.map_err(eng)? {
                LogOutput::StdOut { message } => out.push_str(&String::from_utf8_lossy(&message)),
                LogOutput::StdErr { message } => err.push_str(&String::from_utf8_lossy(&message)),
                _ => {}
            }
        }
        Ok::<_, BuildError>((code, out, err))
    }
    .await;
    let removed = remove(engine, &id).await;
    let r = result?;
    removed?;
    Ok(r)
}

/// The packages of a list as pinned requirements (`name==version` lines), the input `berth
/// lock` hands uv to write a `pylock.toml` with every wheel's source and hash. Editable and
/// direct-URL installs (the repository itself) are left out.
pub fn pinned_requirements(packages: &[Package]) -> String {
    let mut out = String::new();
    for p in packages {
        if p.editable || p.direct_url.is_some() {
            continue;
        }
        out.push_str(&format!("{}=={}\n", p.name, p.version));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let text = r#"{"dashboard": null, "format": 1, "kernel": [{"name": "requests", "version": "2.32.3", "sha256": "ab", "installer": "uv"}, {"name": "demo", "version": "0.1", "editable": true, "direct_url": "file:///home/jovyan"}], "python": "3.11.2", "server": null}"#;
        let p: Packages = serde_json::from_str(text).unwrap();
        assert_eq!(p.kernel[0].name, "requests");
        assert!(p.kernel[1].editable);
        assert_eq!(pinned_requirements(&p.kernel), "requests==2.32.3\n");
        assert_eq!(digest(b"").len(), 64);
    }
}
