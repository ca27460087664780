//! berth's offline bundle: one tar file that runs, and rebuilds, an analysis with no network.
//!
//! # The file
//! A bundle is a tar archive (ustar, owner 0:0, mode 0644, every mtime the image's creation
//! time) holding, in this order:
//!
//! | part | path | what |
//! |---|---|---|
//! | OCI layout marker | `oci-layout` | `{"imageLayoutVersion":"1.0.0"}` (OCI image layout spec) |
//! | blobs | `blobs/sha256/<hex>` | layers (uncompressed tar, `application/vnd.oci.image.layer.v1.tar`), image configs, OCI manifests, the git bundle, with `--sources` every wheel, sdist and Debian package, and with data sets every file of their Zarr stores, each named by its sha256 |
//! | OCI index | `index.json` | one manifest per image: the repository image, its environment image, and with `--sources` the base image; `org.opencontainers.image.ref.name` gives each one's tag |
//! | Docker's manifest | `manifest.json` | the same images as `docker save` lists them, pointing at the same blobs, so that `docker load` of Docker 20.10 (which reads no `index.json`) loads the file as it is |
//! | berth's manifest | `berth.json` | [`Manifest`]: provenance, package lists, and the sha256 and size of every other part |
//! | seal | `berth.seal` | `sha256:<hex>` over every tar header before it and `berth.json`: with the blobs' names and `berth.json`'s digests, every byte of the file is checked |
//!
//! Exporting the same images twice gives the same bytes: the layers are the engine's own
//! (their sha256 is the image's diff id), and everything berth writes is sorted and fixed.

#![deny(missing_docs)]

pub mod archive;
pub mod export;
pub mod gitbundle;
pub mod import;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use export::{export, DataSetSource, ExportOptions, ExportSummary};
pub use import::{copy_data, import, Imported};

/// The format version this berth writes and reads.
pub const FORMAT: u32 = 1;

/// What can go wrong with a bundle. Each message is one line naming the file's part at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file is no berth bundle.
    #[error("not a berth bundle: {0}")]
    NotABundle(String),
    /// The file ends early.
    #[error("the bundle is truncated (it ends before its last part)")]
    Truncated,
    /// A part's bytes are not the ones the bundle lists.
    #[error("the bundle is damaged: {0} does not match its digest")]
    Corrupt(String),
    /// A bundle made by a newer berth.
    #[error(
        "the bundle has format version {0}; this berth reads version {FORMAT}: use a newer berth"
    )]
    NewerFormat(u32),
    /// The bundle lacks a part this operation needs.
    #[error("{0}")]
    Missing(String),
    /// The input is not what this operation takes.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The Docker engine refused or failed.
    #[error("{0}")]
    Engine(String),
    /// A build-side error (reading an image's record).
    #[error(transparent)]
    Build(#[from] berth_builder::BuildError),
}

impl BundleError {
    /// An I/O error on `path`; a full disk says so.
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        let message = if e.raw_os_error() == Some(28) {
            "no space left on the device".to_string()
        } else {
            e.to_string()
        };
        BundleError::Io {
            path: path.display().to_string(),
            message,
        }
    }
}

/// Progress of a long step of an export or import.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// What runs: `image`, `sources` (export); `verify`, `load` (import).
    pub step: &'static str,
    /// Bytes done.
    pub done: u64,
    /// Bytes expected (for `image`, an estimate: the engine's image size).
    pub total: u64,
}

/// One image in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// The tag it had and gets back on import (`berth/conda:fc41521d863f`).
    pub name: String,
    /// The engine's image id: `sha256:<hex>` of its config blob.
    pub id: String,
    /// `sha256:<hex>` of its OCI manifest blob.
    pub manifest: String,
    /// Its size: the sum of its layers, in bytes.
    pub bytes: u64,
}

/// Where the repository came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    /// The URL (credentials redacted) or local path it was fetched from.
    pub url: String,
    /// The ref asked for.
    pub r#ref: String,
    /// The commit built, 40 hex digits.
    pub commit: String,
    /// The tree built, 40 hex digits (of `subdir` when one was built).
    pub tree: Option<String>,
    /// The folder built as the repository's root (`--subdir`).
    pub subdir: Option<String>,
}

/// One part of the file other than berth's manifest and the seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Path inside the file.
    pub path: String,
    /// What it is: `oci-layout`, `index`, `docker-manifest`, `layer`, `config`, `manifest`,
    /// `repo`, `wheel`, `sdist`, `deb`, `data`.
    pub kind: String,
    /// sha256 of its bytes, 64 hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// For sources and the git bundle: the file name it stands for
    /// (`numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.whl`, `repo.bundle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// berth's manifest, `berth.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The berth that wrote the bundle.
    pub berth_version: String,
    /// The berth that built the image (label `berth.version`).
    pub built_by: Option<String>,
    /// The image's creation time (RFC 3339): the bundle's, so that exports are reproducible.
    pub created: String,
    /// The runnable image (the repository image, or any image exported as it is).
    pub image: ImageEntry,
    /// Its environment image, `berth-env:<env hash>`.
    pub env_image: Option<ImageEntry>,
    /// The base image, with `--sources`: its one layer is the root file system.
    pub base_image: Option<ImageEntry>,
    /// Where the repository came from.
    pub repo: Option<RepoInfo>,
    /// The env hash, 64 hex digits.
    pub env_hash: Option<String>,
    /// The buildpack that made the plan.
    pub buildpack: Option<String>,
    /// The Python the repository asked for, `X.Y`.
    pub python_requested: Option<String>,
    /// The Python installed, `X.Y.Z`.
    pub python_actual: Option<String>,
    /// The base image's id the environment was built on (label `berth.base_image`).
    pub base_image_id: Option<String>,
    /// The image's package record (`/etc/berth/packages.json`): kernel, server and dashboard
    /// environments.
    pub packages: Option<serde_json::Value>,
    /// The image's berth labels, as they are.
    pub labels: BTreeMap<String, String>,
    /// What berth does not know about this image (an image berth did not build): field names.
    pub unknown: Vec<String>,
    /// The data sets from berth's data library that travel with the image (`berth export
    /// --data`), mounted at `/data/NAME` when the bundle runs. Absent in bundles without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataSetEntry>,
    /// Every other part of the file.
    pub parts: Vec<Part>,
}

/// One data set in the bundle: a Zarr store of berth's data library, each of its files a
/// blob (part kind `data`, named `NAME/KEY`), so that identical chunks are stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSetEntry {
    /// The data set's name in the library.
    pub name: String,
    /// The version: 64 hex digits, the library's sha256 over the store's keys and bytes.
    pub version: String,
    /// The library's record of the version (sources, ingest options, sizes), as it wrote it.
    pub record: serde_json::Value,
    /// The store's files in key order.
    pub files: Vec<DataFile>,
}

/// One file of a data set's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Its key in the store (`/`-separated path, `sst/c/0/0/0`).
    pub key: String,
    /// sha256 of its bytes (the blob), 64 hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl Manifest {
    /// The parts of one kind.
    pub fn parts_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Part> + 'a {
        self.parts.iter().filter(move |p| p.kind == kind)
    }
}

/// A bundle whose every byte was checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// berth's manifest.
    pub manifest: Manifest,
    /// The entries as found.
    pub scan: archive::Scan,
}

impl Verified {
    /// The bundle's digest, 64 hex digits ([`archive::Scan::digest`]).
    pub fn digest(&self) -> &str {
        &self.scan.digest
    }

    /// The entry at `path`.
    pub fn entry(&self, path: &str) -> Option<&archive::Entry> {
        self.scan.entries.iter().find(|e| e.path == path)
    }
}

/// Reads and checks every byte of the bundle at `path` (nothing is loaded): the framing and
/// seal ([`archive::scan`]), the format version, every blob against its name and every part
/// against `berth.json`. `progress` gets the bytes read so far.
///
/// # Errors
/// [`BundleError::NotABundle`], [`BundleError::Truncated`], [`BundleError::NewerFormat`],
/// [`BundleError::Corrupt`] naming the first part that does not match.
pub fn verify(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<Verified, BundleError> {
    let scan = archive::scan(path, progress)?;
    // The format first: a newer bundle may have a manifest this berth cannot parse.
    let head: serde_json::Value = serde_json::from_slice(&scan.manifest)
        .map_err(|e| BundleError::Corrupt(format!("berth.json ({e})")))?;
    let format = head.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
    if format > FORMAT {
        return Err(BundleError::NewerFormat(format));
    }
    let manifest: Manifest = serde_json::from_value(head)
        .map_err(|e| BundleError::Corrupt(format!("berth.json ({e})")))?;
    let listed: BTreeMap<&str, &Part> = manifest
        .parts
        .iter()
        .map(|p| (p.path.as_str(), p))
        .collect();
    for e in &scan.entries {
        if e.path == archive::BERTH_MANIFEST || e.path == archive::SEAL {
            continue;
        }
        let part = listed.get(e.path.as_str());
        let named = e.path.strip_prefix(archive::BLOBS);
        let ok = match (part, named) {
            (Some(p), Some(h)) => p.sha256 == e.sha256 && h == e.sha256 && p.bytes == e.bytes,
            (Some(p), None) => p.sha256 == e.sha256 && p.bytes == e.bytes,
            (None, _) => false,
        };
        if !ok {
            let what = part
                .and_then(|p| {
                    p.name
                        .clone()
                        .map(|n| format!("{} {n} ({})", p.kind, e.path))
                })
                .or_else(|| part.map(|p| format!("{} {}", p.kind, e.path)))
                .unwrap_or_else(|| e.path.clone());
            return Err(BundleError::Corrupt(what));
        }
    }
    for p in &manifest.parts {
        if !scan.entries.iter().any(|e| e.path == p.path) {
            return Err(BundleError::Missing(format!(
                "the bundle lacks {} {}",
                p.kind, p.path
            )));
        }
    }
    Ok(Verified { manifest, scan })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_byte_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.tar");
        let mut w = archive::BundleWriter::create(&p, 1_700_000_000).unwrap();
        let mut parts = vec![];
        let l = w.add_file("oci-layout", b"{}").unwrap();
        parts.push(Part {
            path: l.path,
            kind: "oci-layout".into(),
            sha256: l.sha256,
            bytes: l.bytes,
            name: None,
        });
        for (kind, data) in [("layer", &b"layer bytes"[..]), ("wheel", b"a wheel")] {
            let b = w.add_blob_bytes(data).unwrap();
            parts.push(Part {
                path: b.path,
                kind: kind.into(),
                sha256: b.sha256,
                bytes: b.bytes,
                name: None,
            });
        }
        let m = Manifest {
            format: FORMAT,
            berth_version: "test".into(),
            built_by: None,
            created: "2026-01-01T00:00:00Z".into(),
            image: ImageEntry {
                name: "x:y".into(),
                id: "sha256:00".into(),
                manifest: "sha256:00".into(),
                bytes: 0,
            },
            env_image: None,
            base_image: None,
            repo: None,
            env_hash: None,
            buildpack: None,
            python_requested: None,
            python_actual: None,
            base_image_id: None,
            packages: None,
            labels: BTreeMap::new(),
            unknown: vec![],
            data: Vec::new(),
            parts,
        };
        w.finish(&serde_json::to_vec(&m).unwrap()).unwrap();
        let good = std::fs::read(&p).unwrap();
        verify(&p, &mut |_| {}).expect("a good bundle verifies");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            std::fs::write(&p, &bad).unwrap();
            assert!(
                verify(&p, &mut |_| {}).is_err(),
                "byte {i} of {}",
                good.len()
            );
        }
        // A newer format is refused by version, before anything else.
        let mut newer = m.clone();
        newer.format = FORMAT + 1;
        let mut w = archive::BundleWriter::create(&p, 0).unwrap();
        w.add_file("oci-layout", b"{}").unwrap();
        w.finish(&serde_json::to_vec(&newer).unwrap()).unwrap();
        assert!(matches!(
            verify(&p, &mut |_| {}),
            Err(BundleError::NewerFormat(2))
        ));
    }
}
