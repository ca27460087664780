//! The sources of an environment image: every file an offline rebuild of it needs
//! ([`BuildRequest::offline`](crate::BuildRequest::offline), `berth build --offline`).
//!
//! A sources folder holds `wheels/` (a wheelhouse: the wheel, or else the sdist, of every
//! distribution of the image's kernel, server and dashboard environments at its recorded
//! version, uv's own wheel, and the build requirements of each sdist) and `debs/` (every Debian
//! package the environment image has on top of its base image, at its installed version, as
//! `.deb` files). [`collect`] fills one, downloading through tool containers (so the files fit
//! the image's platform) and caching every download on the host under
//! [`default_sources_dir`], so collecting again downloads nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, LogsOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::{info, info_span, Instrument};

use crate::record::{self, Package};
use crate::{default_cache_dir, BuildError, Engine};

const COLLECT_WHEELS: &str = include_str!("../files/collect-wheels.py");

/// Where a tool container keeps its inputs and writes its downloads.
const WORK: &str = "/tmp/berth-sources";

/// The environment variable that names the sources folder of offline builds and the download
/// cache of [`collect`] (a path); [`default_sources_dir`] falls back to the cache folder.
pub const SOURCES_DIR_ENV: &str = "BERTH_SOURCES_DIR";

/// The sources folder `berth build --offline` builds from, which is also where [`collect`]
/// caches its downloads: `$BERTH_SOURCES_DIR`, else `sources/` in
/// [`default_cache_dir`].
pub fn default_sources_dir() -> PathBuf {
    match std::env::var_os(SOURCES_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => default_cache_dir().join("sources"),
    }
}

/// One file of a sources folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFile {
    /// The path in the folder, `wheels/<file>` or `debs/<file>`.
    pub path: String,
    /// Its size, in bytes.
    pub bytes: u64,
}

/// What [`collect`] put into a sources folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourcesSummary {
    /// Every file, sorted by path.
    pub files: Vec<SourceFile>,
    /// Their total size, in bytes.
    pub bytes: u64,
    /// How many of them were downloaded now (the others came from the cache).
    pub downloaded: usize,
    /// Distributions with no file to collect, one line each (`name version: why`): the
    /// repository itself (an editable or local install) and direct-URL installs. An offline
    /// build takes them from the repository, or cannot install them.
    pub skipped: Vec<String>,
}

/// Settings of [`collect_with`].
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// The download cache, with the layout of a sources folder; [`default_sources_dir`] by
    /// default.
    pub cache: PathBuf,
    /// A CA bundle (PEM) for the tool containers, for intercepting TLS proxies; by default
    /// `$BERTH_CA_CERT` when set.
    pub ca_cert: Option<PathBuf>,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            cache: default_sources_dir(),
            ca_cert: std::env::var_os("BERTH_CA_CERT")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// [`collect_with`] the default [`CollectOptions`]: the cache under [`default_sources_dir`]
/// and the CA bundle of `$BERTH_CA_CERT`.
///
/// # Errors
/// As [`collect_with`].
pub async fn collect(
    engine: &Engine,
    env_image: &str,
    base_image: &str,
    out: &Path,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<SourcesSummary, BuildError> {
    collect_with(
        engine,
        env_image,
        base_image,
        out,
        &CollectOptions::default(),
        log,
    )
    .await
}

/// Fills the sources folder `out` (created when missing) with what an offline rebuild of
/// `env_image` (built `FROM base_image`) needs: `out/wheels/` and `out/debs/`, see the module
/// documentation. Files already in `opts.cache` are taken from there; the others are
/// downloaded (PyPI through pip in a container of `env_image`, Debian packages through
/// `apt-get download` in a container of `base_image`, both with the engine's default network)
/// into the cache first, then linked or copied into `out` (nothing is copied when `out` is the
/// cache). Tool containers are removed afterwards, whatever happens. `log` gets progress
/// lines.
///
/// # Errors
/// [`BuildError::Internal`] when the image has no package record (not built by berth) or a
/// file cannot be written; [`BuildError::BuildFailed`] when a download fails, naming the
/// distribution or Debian package when the tool does; [`BuildError::Engine`] for engine
/// failures.
pub async fn collect_with(
    engine: &Engine,
    env_image: &str,
    base_image: &str,
    out: &Path,
    opts: &CollectOptions,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<SourcesSummary, BuildError> {
    let span = info_span!("collect_sources", %env_image, %base_image);
    async {
        let ca = match &opts.ca_cert {
            Some(p) => Some(std::fs::read(p).map_err(|e| BuildError::CaCert {
                path: p.display().to_string(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let cache = &opts.cache;
        for d in ["wheels", "debs", "build-deps"] {
            mkdir(&cache.join(d))?;
        }
        let mut downloaded = 0;
        let (wheels, skipped) = wheels(
            engine,
            env_image,
            cache,
            ca.as_deref(),
            &mut downloaded,
            log,
        )
        .await?;
        let debs = debs(
            engine,
            env_image,
            base_image,
            cache,
            ca.as_deref(),
            &mut downloaded,
            log,
        )
        .await?;
        let summary = fill(out, cache, &wheels, &debs, downloaded, skipped)?;
        info!(
            files = summary.files.len(),
            bytes = summary.bytes,
            downloaded = summary.downloaded,
            "sources collected"
        );
        Ok(summary)
    }
    .instrument(span)
    .await
}

fn mkdir(p: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(p)
        .map_err(|e| BuildError::Internal(format!("cannot create {}: {e}", p.display())))
}

/// `name` as PEP 503 normalizes it (the buildpacks' rule).
fn normalize(name: &str) -> String {
    berth_buildpacks::normalize_name(name)
}

const SDIST_SUFFIXES: &[&str] = &[".tar.gz", ".zip", ".tar.bz2", ".tgz"];

/// The normalized name and the version of a wheel or sdist file name.
fn dist_of(file: &str) -> Option<(String, String)> {
    if let Some(stem) = file.strip_suffix(".whl") {
        let mut parts = stem.split('-');
        let name = parts.next()?;
        let version = parts.next()?;
        return Some((normalize(name), version.to_ascii_lowercase()));
    }
    let stem = SDIST_SUFFIXES.iter().find_map(|s| file.strip_suffix(s))?;
    let (name, version) = stem.rsplit_once('-')?;
    Some((normalize(name), version.to_ascii_lowercase()))
}

/// Whether wheel `file` installs on CPython `3.<minor>` for Linux on this machine's
/// architecture (`any`, or a glibc Linux platform tag of the architecture).
fn wheel_fits(file: &str, minor: u32) -> bool {
    let Some(stem) = file.strip_suffix(".whl") else {
        return true; // an sdist builds anywhere
    };
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return false;
    }
    let (py, abi, plat) = (
        parts[parts.len() - 3],
        parts[parts.len() - 2],
        parts[parts.len() - 1],
    );
    let arch = std::env::consts::ARCH;
    let plat_ok = plat.split('.').any(|p| {
        p == "any" || ((p.starts_with("manylinux") || p.starts_with("linux_")) && p.ends_with(arch))
    });
    let py_ok = py.split('.').any(|t| {
        let cp = |t: &str| t.strip_prefix("cp3").and_then(|n| n.parse::<u32>().ok());
        t == "py3"
            || t == format!("py3{minor}")
            || cp(t) == Some(minor)
            || (abi.split('.').any(|a| a == "abi3") && cp(t).is_some_and(|n| n <= minor))
    });
    plat_ok && py_ok
}

/// The file in `dir` that holds `name` at `version` and fits Python `3.<minor>`: a wheel when
/// there is one, else an sdist.
fn find_dist(dir: &Path, name: &str, version: &str, minor: u32) -> Option<String> {
    let want = (normalize(name), version.to_ascii_lowercase());
    let mut found: Option<String> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if dist_of(&file).as_ref() != Some(&want) || !wheel_fits(&file, minor) {
            continue;
        }
        let better = match &found {
            None => true,
            Some(f) => {
                !f.ends_with(".whl") && file.ends_with(".whl")
                    || (f.ends_with(".whl") == file.ends_with(".whl") && file < *f)
            }
        };
        if better {
            found = Some(file);
        }
    }
    found
}

/// A file name a tool container may hand back: one plain component.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// The wheelhouse files of `env_image` (names in `cache/wheels`), downloading the missing
/// ones, and the distributions that have none.
async fn wheels(
    engine: &Engine,
    env_image: &str,
    cache: &Path,
    ca: Option<&[u8]>,
    downloaded: &mut usize,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<(BTreeSet<String>, Vec<String>), BuildError> {
    let (packages, _) = record::read_packages(engine, env_image).await?.ok_or_else(|| {
        BuildError::Internal(format!(
            "{env_image} has no package record ({}); only images berth built have sources to collect",
            berth_buildpacks::PACKAGES_RECORD
        ))
    })?;
    let minor: u32 = packages
        .python
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            BuildError::Internal(format!(
                "the package record of {env_image} names no Python X.Y.Z ({:?})",
                packages.python
            ))
        })?;
    let mut pins: BTreeSet<(String, String)> = BTreeSet::new();
    let mut skipped = Vec::new();
    let lists: [&[Package]; 3] = [
        &packages.kernel,
        packages.server.as_deref().unwrap_or_default(),
        packages.dashboard.as_deref().unwrap_or_default(),
    ];
    for p in lists.into_iter().flatten() {
        if p.editable || p.direct_url.is_some() {
            let why = if p.editable {
                "an editable install (the repository itself)"
            } else {
                "installed from a URL or path, not from an index"
            };
            let line = format!("{} {}: {why}", p.name, p.version);
            if !skipped.contains(&line) {
                skipped.push(line);
            }
            continue;
        }
        pins.insert((normalize(&p.name), p.version.clone()));
    }
    pins.insert(("uv".into(), berth_buildpacks::UV_VERSION.into()));
    let dir = cache.join("wheels");
    let missing: Vec<(String, String)> = pins
        .iter()
        .filter(|(n, v)| find_dist(&dir, n, v, minor).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        log(&format!(
            "downloading {} of {} Python distributions of {env_image}",
            missing.len(),
            pins.len()
        ));
        // pip takes one version of a name per call: a name the environments hold at two
        // versions (the kernel's and the server's) goes into a second file.
        let mut rounds: Vec<Vec<(String, String)>> = Vec::new();
        for (n, v) in missing {
            match rounds.iter_mut().find(|r| r.iter().all(|(m, _)| *m != n)) {
                Some(r) => r.push((n, v)),
                None => rounds.push(vec![(n, v)]),
            }
        }
        let names: Vec<String> = (0..rounds.len()).map(|i| format!("reqs-{i}.txt")).collect();
        let script = format!(
            "if {py} -m pip --version >/dev/null 2>&1; then py={py}; else py=/opt/berth/uv/bin/python; fi; \
             cd {WORK} && exec \"$py\" collect-wheels.py out {}",
            names.join(" "),
            py = format_args!("{}/bin/python", berth_buildpacks::VENV_DIR),
        );
        let mut inputs = vec![("collect-wheels.py", COLLECT_WHEELS.as_bytes().to_vec())];
        for (name, round) in names.iter().zip(&rounds) {
            let text: String = round.iter().map(|(n, v)| format!("{n}=={v}\n")).collect();
            inputs.push((name.as_str(), text.into_bytes()));
        }
        let files = tool(
            engine,
            env_image,
            &script,
            inputs,
            ca,
            "the Python distributions",
        )
        .await?;
        for (path, data) in files {
            let (target, count) = match path.split_once('/') {
                Some(("wheels", f)) if plain_name(f) => (dir.join(f), true),
                Some(("build-deps", f)) if plain_name(f) => {
                    (cache.join("build-deps").join(f), false)
                }
                _ => continue,
            };
            write_atomic(&target, &data)?;
            if count {
                *downloaded += 1;
            }
        }
    }
    let mut out = BTreeSet::new();
    for (n, v) in &pins {
        let file = find_dist(&dir, n, v, minor).ok_or_else(|| {
            BuildError::BuildFailed(format!(
                "{n}=={v} was downloaded for {env_image} but no file of it fits Python 3.{minor}"
            ))
        })?;
        if !file.ends_with(".whl") {
            // An sdist: its build requirements, as the collection listed them.
            let list = cache.join("build-deps").join(format!("{file}.txt"));
            let text = std::fs::read_to_string(&list).unwrap_or_default();
            for dep in text.lines().map(str::trim).filter(|l| plain_name(l)) {
                if dir.join(dep).is_file() {
                    out.insert(dep.to_string());
                }
            }
        }
        out.insert(file);
    }
    Ok((out, skipped))
}

/// `deb` file name `apt-get download` gives `pkg:arch=version`.
fn deb_file(spec: &str) -> Option<String> {
    let (pa, version) = spec.split_once('=')?;
    let (pkg, arch) = pa.split_once(':')?;
    Some(format!("{pkg}_{}_{arch}.deb", version.replace(':', "%3a")))
}

/// The installed Debian packages of `image`, as `pkg:arch=version`.
async fn dpkg_list(engine: &Engine, image: &str) -> Result<BTreeSet<String>, BuildError> {
    let (code, out, err) = record::run_in_image(
        engine,
        image,
        "dpkg-query -W -f '${db:Status-Abbrev} ${Package}:${Architecture}=${Version}\\n'",
        Vec::new(),
    )
    .await?;
    if code != 0 {
        return Err(BuildError::BuildFailed(format!(
            "cannot list the Debian packages of {image}: {}",
            crate::engine::one_line(&err)
        )));
    }
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("ii "))
        .map(|s| s.trim().to_string())
        .collect())
}

/// The `.deb` files of what `env_image` has on top of `base_image` (names in `cache/debs`),
/// downloading the missing ones.
async fn debs(
    engine: &Engine,
    env_image: &str,
    base_image: &str,
    cache: &Path,
    ca: Option<&[u8]>,
    downloaded: &mut usize,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<BTreeSet<String>, BuildError> {
    let env = dpkg_list(engine, env_image).await?;
    let base = dpkg_list(engine, base_image).await?;
    let dir = cache.join("debs");
    let mut want = BTreeMap::new();
    for spec in env.difference(&base) {
        if let Some(f) = deb_file(spec) {
            want.insert(spec.clone(), f);
        }
    }
    let missing: Vec<&String> = want
        .iter()
        .filter(|(_, f)| !dir.join(f).is_file())
        .map(|(s, _)| s)
        .collect();
    if !missing.is_empty() {
        log(&format!(
            "downloading {} of {} Debian packages of {env_image}",
            missing.len(),
            want.len()
        ));
        let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        let script = format!(
            "set -e; ca=; [ -f /etc/berth/ca-certificates.crt ] && ca='-o Acquire::https::CaInfo=/etc/berth/ca-certificates.crt'; \
             apt-get update -qq $ca; mkdir -p {WORK}/out/debs; cd {WORK}/out/debs; \
             apt-get download -qq -o APT::Sandbox::User=root $ca $(cat {WORK}/debs.txt) 2>&1 \
             | {{ grep -v '^W: ' || true; }} | tee {WORK}/apt.log; \
             if grep -q '^E: ' {WORK}/apt.log; then echo \"berth-error: $(grep '^E: ' {WORK}/apt.log | head -n 1 | cut -c4-)\"; exit 1; fi"
        );
        let inputs = vec![("debs.txt", (list.join("\n") + "\n").into_bytes())];
        let files = tool(
            engine,
            base_image,
            &script,
            inputs,
            ca,
            "the Debian packages",
        )
        .await?;
        for (path, data) in files {
            if let Some(("debs", f)) = path.split_once('/') {
                if plain_name(f) && f.ends_with(".deb") {
                    write_atomic(&dir.join(f), &data)?;
                    *downloaded += 1;
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for (spec, f) in want {
        if !dir.join(&f).is_file() {
            return Err(BuildError::BuildFailed(format!(
                "the Debian package {spec} of {env_image} could not be downloaded"
            )));
        }
        out.insert(f);
    }
    Ok(out)
}

/// Writes `data` to `path` through a temporary file in its folder, so a crash never leaves a
/// truncated file that a later collection would take for a download.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let err =
        |e: std::io::Error| BuildError::Internal(format!("cannot write {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, data).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Links (else copies) the chosen files from `cache` into `out`, and sums them up.
fn fill(
    out: &Path,
    cache: &Path,
    wheels: &BTreeSet<String>,
    debs: &BTreeSet<String>,
    downloaded: usize,
    skipped: Vec<String>,
) -> Result<SourcesSummary, BuildError> {
    let io = |p: &Path, e: std::io::Error| BuildError::Internal(format!("{}: {e}", p.display()));
    mkdir(&out.join("wheels"))?;
    mkdir(&out.join("debs"))?;
    let same = match (out.canonicalize(), cache.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let mut summary = SourcesSummary {
        downloaded,
        skipped,
        ..Default::default()
    };
    for (kind, names) in [("debs", debs), ("wheels", wheels)] {
        for name in names {
            let from = cache.join(kind).join(name);
            let to = out.join(kind).join(name);
            if !same && !to.is_file() && std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| io(&to, e))?;
            }
            let bytes = std::fs::metadata(&to).map_err(|e| io(&to, e))?.len();
            summary.bytes += bytes;
            summary.files.push(SourceFile {
                path: format!("{kind}/{name}"),
                bytes,
            });
        }
    }
    summary.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(summary)
}

/// Removes a tool container when dropped (a collection stopped part-way).
struct Removal {
    engine: Engine,
    id: Option<String>,
}

impl Drop for Removal {
    fn drop(&mut self) {
        if let (Some(id), Ok(rt)) = (self.id.take(), tokio::runtime::Handle::try_current()) {
            let engine = self.engine.clone();
            rt.spawn(async move {
                let _ = record::remove(&engine, &id).await;
            });
        }
    }
}

/// Runs `script` (`/bin/sh -c`) as root in a new container of `image` on the engine's default
/// network, with `inputs` in [`WORK`] and the CA bundle at `/etc/berth/ca-certificates.crt`
/// (named by `SSL_CERT_FILE`, `PIP_CERT` and `REQUESTS_CA_BUNDLE`), and returns the regular
/// files it left in `WORK/out` (paths relative to it). The container is removed afterwards,
/// whatever happened. A failed script is [`BuildError::BuildFailed`] with its `berth-error:`
/// line, else its last output line.
async fn tool(
    engine: &Engine,
    image: &str,
    script: &str,
    inputs: Vec<(&str, Vec<u8>)>,
    ca: Option<&[u8]>,
    what: &str,
) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let eng =
        |e: bollard::errors::Error| BuildError::Engine(crate::engine::one_line(&e.to_string()));
    let mut env = vec!["PIP_NO_INPUT=1".to_string(), "NO_COLOR=1".to_string()];
    if ca.is_some() {
        for k in ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"] {
            env.push(format!("{k}=/etc/berth/ca-certificates.crt"));
        }
    }
    let created = record::create(
        engine,
        ContainerCreateBody {
            image: Some(image.to_string()),
            user: Some("root".into()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![script.to_string()]),
            env: Some(env),
            working_dir: Some("/".into()),
            ..Default::default()
        },
    )
    .await?;
    let mut guard = Removal {
        engine: engine.clone(),
        id: Some(created.id.clone()),
    };
    let id = created.id;
    let result = async {
        let docker = engine.docker();
        let mut archive = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(crate::context::CONTEXT_MTIME);
            archive.append_data(&mut h, path, data)
        };
        let internal = |e: std::io::Error| BuildError::Internal(e.to_string());
        for (name, data) in &inputs {
            add(&format!("{}/{name}", &WORK[1..]), data).map_err(internal)?;
        }
        if let Some(ca) = ca {
            add("etc/berth/ca-certificates.crt", ca).map_err(internal)?;
        }
        let archive = archive.into_inner().map_err(internal)?;
        docker
            .upload_to_container(
                &id,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(eng)?;
        let code = record::start_and_wait(docker, &id).await?;
        if code != 0 {
            let mut logs = docker.logs(
                &id,
                Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
            );
            let mut text = String::new();
            while let Some(chunk) = logs.next().await {
                text.push_str(&chunk.map_err(eng)?.to_string());
            }
            let cause = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("berth-error: ").map(str::to_string))
                .or_else(|| {
                    text.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("exit code {code}"));
            return Err(BuildError::BuildFailed(format!(
                "cannot download {what} of {image}: {}",
                crate::engine::one_line(&cause)
            )));
        }
        let mut stream = docker.download_from_container(
            &id,
            Some(
                DownloadFromContainerOptionsBuilder::new()
                    .path(&format!("{WORK}/out"))
                    .build(),
            ),
        );
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(eng)?);
        }
        let bad =
            |e: std::io::Error| BuildError::Engine(format!("bad archive from the engine: {e}"));
        let mut files = Vec::new();
        let mut tar = tar::Archive::new(bytes.as_slice());
        for entry in tar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            // The archive's entries start with the folder's own name, `out/`.
            let Some(rel) = path.strip_prefix("out/") else {
                continue;
            };
            let rel = rel.to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(bad)?;
            files.push((rel, data));
        }
        Ok(files)
    }
    .await;
    guard.id = None;
    let removed = record::remove(engine, &id).await;
    let files = result?;
    removed?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            dist_of("python_dateutil-2.9.0.post0-py2.py3-none-any.whl"),
            Some(("python-dateutil".into(), "2.9.0.post0".into()))
        );
        assert_eq!(
            dist_of("jupyter-server-proxy-4.4.0.tar.gz"),
            Some(("jupyter-server-proxy".into(), "4.4.0".into()))
        );
        assert_eq!(dist_of("README"), None);
        assert_eq!(normalize("Jupyter__Server.Proxy"), "jupyter-server-proxy");
        assert_eq!(
            deb_file("libc6:amd64=1:2.36-9").as_deref(),
            Some("libc6_1%3a2.36-9_amd64.deb")
        );
        assert!(plain_name("a-1.0.whl"));
        assert!(!plain_name("../x") && !plain_name(".hidden") && !plain_name(""));
    }

    #[test]
    fn wheel_tags() {
        let arch = std::env::consts::ARCH;
        assert!(wheel_fits("six-1.17.0-py2.py3-none-any.whl", 11));
        assert!(wheel_fits(
            &format!("numpy-2.2.2-cp311-cp311-manylinux_2_17_{arch}.manylinux2014_{arch}.whl"),
            11
        ));
        assert!(!wheel_fits(
            &format!("numpy-2.2.2-cp313-cp313-manylinux_2_17_{arch}.whl"),
            11
        ));
        assert!(wheel_fits(
            &format!("cryptography-44.0.0-cp39-abi3-manylinux_2_28_{arch}.whl"),
            11
        ));
        assert!(!wheel_fits(
            &format!("x-1-cp311-cp311-musllinux_1_2_{arch}.whl"),
            11
        ));
        assert!(!wheel_fits("x-1-cp311-cp311-win_amd64.whl", 11));
        assert!(wheel_fits("x-1.tar.gz", 11));
    }
}
