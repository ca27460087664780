//! Shared helpers of the berth-data integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_data::{IngestOptions, Library, Version};

/// The real NetCDF fixtures (never copied into the project).
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/data"
    ))
}

pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(
        p.is_file(),
        "fixture {} is missing (see ../shared/fixtures/data/README.md)",
        p.display()
    );
    p
}

/// The Python interpreter with xarray, zarr 3, netCDF4 and dask: `$BERTH_TEST_PYTHON`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("BERTH_TEST_PYTHON").unwrap_or_else(|| {
        panic!(
            "BERTH_TEST_PYTHON is not set. These tests compare with xarray: run scripts/data-test-env \
             (installs libnetcdf and a venv with xarray, zarr>=3, netCDF4, dask) and then \
             export BERTH_TEST_PYTHON=$PWD/target/pyenv/bin/python"
        )
    });
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "BERTH_TEST_PYTHON={} does not exist; run scripts/data-test-env",
        p.display()
    );
    p
}

/// Runs a Python snippet with arguments; panics with its output if it fails.
pub fn py(code: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("running BERTH_TEST_PYTHON");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `compare.py STORE MODE SOURCES...`: Ok if xarray reads the store identical to the sources.
pub fn compare(store: &Path, mode: &str, sources: &[PathBuf]) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compare.py");
    let out = Command::new(python())
        .arg(script)
        .arg(store)
        .arg(mode)
        .args(sources)
        .output()
        .expect("running compare.py");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn assert_identical(store: &Path, mode: &str, sources: &[PathBuf]) {
    if let Err(e) = compare(store, mode, sources) {
        panic!(
            "xarray does not read {} identical to {mode} {sources:?}:\n{e}",
            store.display()
        );
    }
}

pub fn library() -> (tempfile::TempDir, Library) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = Library::open(dir.path().join("lib")).expect("open library");
    (dir, lib)
}

pub fn add(lib: &Library, name: &str, sources: &[PathBuf], opts: IngestOptions) -> Version {
    lib.add(name, sources, opts, &|_| {})
        .unwrap_or_else(|e| panic!("adding {sources:?} as {name}: {e}"))
}

pub fn chunks(spec: &[(&str, u64)]) -> IngestOptions {
    IngestOptions {
        chunks: spec.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
        ..Default::default()
    }
}

/// Every file under `dir`, relative, sorted (to check that nothing was left or registered).
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() {
                    walk(base, &p, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
