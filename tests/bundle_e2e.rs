//! End to end: `berth export` / `import` / `run FILE` / `rebuild --offline` against the real
//! engine and the `conda` fixture, read back by readers berth did not write (`docker load`,
//! Debian's `podman`, `git bundle`), and bad input refused with one error line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The conda fixture exported once with `--sources`, shared by the tests of this file.
struct Exported {
    /// The bundle.
    file: PathBuf,
    /// The image it holds.
    image: String,
    /// Its environment image and env hash.
    env_image: String,
    env_hash: String,
}

fn exported() -> &'static Exported {
    static E: OnceLock<Exported> = OnceLock::new();
    E.get_or_init(|| {
        let b = build(&fixture("conda"), &[]);
        // A fixed path, replaced by each run (a static is never dropped to remove it).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bundle_e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("conda.berth.tar");
        let _g = build_lock();
        let out = run_berth(&[
            "export",
            fixture("conda").to_str().unwrap(),
            "--sources",
            "-o",
            file.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "export failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("exported: {s}");
        assert_eq!(s["path"], file.to_str().unwrap());
        assert!(s["sources_bytes"].as_u64().unwrap() > 10 << 20, "{s}");
        assert!(s["repo_bytes"].as_u64().unwrap() > 0, "{s}");
        Exported {
            file,
            image: b.image,
            env_image: b.env_image,
            env_hash: b.env_hash,
        }
    })
}

/// Reads `berth.json` from a bundle with the system's `tar`.
fn manifest_of(file: &Path) -> serde_json::Value {
    let out = Command::new("tar")
        .args(["-xOf", file.to_str().unwrap(), "berth.json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// One error line, last, naming `needle`; nothing on stdout.
fn refused(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded:\n{stderr}");
    assert!(out.stdout.is_empty());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    assert!(
        errors[0].contains(needle),
        "{needle:?} not in {}",
        errors[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_bundle_is_an_oci_layout_with_berths_manifest_and_the_repository() {
    let e = exported();
    let m = manifest_of(&e.file);
    assert_eq!(m["format"], 1);
    assert_eq!(m["env_hash"], e.env_hash.as_str());
    assert_eq!(m["buildpack"], "conda");
    assert_eq!(m["image"]["name"], e.image.as_str());
    assert_eq!(m["env_image"]["name"], e.env_image.as_str());
    assert!(m["base_image"]["name"]
        .as_str()
        .unwrap()
        .starts_with("berth-base:"));
    assert_eq!(m["repo"]["url"], fixture("conda").to_str().unwrap());
    assert!(
        m["python_actual"].as_str().unwrap().starts_with("3."),
        "{}",
        m["python_actual"]
    );
    let kernel = m["packages"]["kernel"].as_array().unwrap();
    assert!(kernel.iter().any(|p| p["name"] == "distributed"));
    assert!(m["packages"]["server"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "jupyterlab"));
    let kinds: Vec<&str> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    for k in [
        "oci-layout",
        "index",
        "docker-manifest",
        "layer",
        "config",
        "manifest",
        "repo",
        "wheel",
        "deb",
    ] {
        assert!(kinds.contains(&k), "no {k} part: {kinds:?}");
    }
    // uv itself is in the wheelhouse.
    assert!(m["parts"].as_array().unwrap().iter().any(|p| p["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("wheels/uv-"))));
    // The OCI index names the three images.
    let out = Command::new("tar")
        .args(["-xOf", e.file.to_str().unwrap(), "index.json"])
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        e.image.as_str()
    );
    // git reads the repository part, and it holds the commit built.
    let repo = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "repo")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("repo.bundle");
    let out = Command::new("tar")
        .args([
            "-xOf",
            e.file.to_str().unwrap(),
            repo["path"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    std::fs::write(&bundle, &out.stdout).unwrap();
    git(
        dir.path(),
        &["clone", "-q", bundle.to_str().unwrap(), "clone"],
    );
    let head = git(&dir.path().join("clone"), &["rev-parse", "HEAD"]);
    assert_eq!(head.trim(), m["repo"]["commit"].as_str().unwrap());
}

#[test]
fn exporting_twice_gives_the_same_bytes() {
    let e = exported();
    let _g = build_lock();
    // One file at a time: a bundle is over a GiB, and CI machines' disks are not large.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let b = dir.path().join("b.tar");
    let mut sums = Vec::new();
    for _ in 0..2 {
        let out = run_berth(&["export", &e.image, "-o", b.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            b.to_str().unwrap()
        );
        sums.push(sha256(&b));
    }
    assert_eq!(sums[0], sums[1]);
    // One flipped byte: refused, naming the part; nothing loaded.
    let images = all_images();
    let size = std::fs::metadata(&b).unwrap().len();
    let at = size / 2;
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&b)
            .unwrap();
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut byte).unwrap();
        byte[0] ^= 0x01;
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&byte).unwrap();
    }
    let out = run_berth(&["import", b.to_str().unwrap()]);
    refused(&out, "does not match its digest");
    let line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(line.contains("blobs/sha256/"), "{line}");
    assert_eq!(all_images(), images, "nothing may be loaded");
    // Truncated.
    let f = std::fs::File::options().write(true).open(&b).unwrap();
    f.set_len(at).unwrap();
    refused(&run_berth(&["import", b.to_str().unwrap()]), "truncated");
    // Not a bundle at all.
    std::fs::write(&b, b"hello, this is not a tar file at all").unwrap();
    refused(
        &run_berth(&["import", b.to_str().unwrap()]),
        "not a berth bundle",
    );
    // docker save's own archive is no bundle either, and says what to do.
    docker(&["save", "-o", b.to_str().unwrap(), "berth-base:bookworm"]);
    refused(&run_berth(&["import", b.to_str().unwrap()]), "docker load");
    assert_eq!(all_images(), images, "nothing may be loaded");
}

#[test]
fn docker_load_and_podman_load_take_the_file_as_it_is() {
    let e = exported();
    // podman's own storage takes another copy of the image: not beside the other exports.
    let _g = build_lock();
    // Docker's own loader reads manifest.json and the blobs it names.
    let out = docker(&["load", "-i", e.file.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {}", e.image)), "{out}");
    // podman, with the limits this machine needs; its own storage, removed afterwards.
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .arg("--root")
            .arg(root.path().join("root"))
            .arg("--runroot")
            .arg(root.path().join("run"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .output()
            .expect("podman runs (scripts/test installs it)");
        assert!(
            out.status.success(),
            "podman {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let loaded = podman(&["load", "-i", e.file.to_str().unwrap()]);
    eprintln!("podman load: {loaded}");
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        &format!("localhost/{}", e.image.trim_start_matches("localhost/")),
        "sh",
        "-c",
        "id -u; python -c 'import numpy, distributed; print(distributed.__version__)'",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"1000"), "{out}");
    assert!(lines.len() >= 2 && lines[1].contains('.'), "{out}");
    let _ = Command::new("podman")
        .arg("--root")
        .arg(root.path().join("root"))
        .arg("--runroot")
        .arg(root.path().join("run"))
        .args(["--storage-driver", "overlay", "system", "reset", "-f"])
        .output();
}

/// `berth rebuild FILE --offline --sources-dir SOURCES EXTRA…`.
fn rebuild_offline(file: &Path, sources: &Path, extra: &[&str]) -> std::process::Output {
    berth()
        .args([
            "rebuild",
            file.to_str().unwrap(),
            "--offline",
            "--sources-dir",
        ])
        .arg(sources)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn an_imported_bundle_runs_a_dask_sum_on_two_workers_and_rebuilds_offline() {
    let e = exported();
    let _g = build_lock();
    let m = manifest_of(&e.file);
    let base = m["base_image"]["name"].as_str().unwrap().to_string();
    let base_id = m["base_image"]["id"].as_str().unwrap().to_string();
    // Remove the images: the repository's, its environment and the base image's tag.
    for i in [&e.image, &e.env_image] {
        docker(&["rmi", i]);
    }
    let _ = Command::new("docker").args(["rmi", &base]).output();
    assert!(!all_images().contains(&e.image));
    assert!(!all_images().contains(&e.env_image));
    assert!(!all_images().contains(&base));

    // berth run FILE: imports, then runs as today.
    let script = "import dask.array as da; from dask.distributed import Client; \
                  c = Client(); n = len(c.scheduler_info()['workers']); \
                  x = da.ones((4000, 4000), chunks=(500, 500)); \
                  print('workers', n, 'sum', int(x.sum().compute()))";
    let out = berth()
        .args([
            "run",
            e.file.to_str().unwrap(),
            "--workers",
            "2",
            "--",
            "python",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("workers 2 sum 16000000"), "{stdout}");
    assert!(all_images().contains(&e.image));
    assert!(
        all_images().contains(&e.env_image),
        "the environment image is restored"
    );
    let l = labels(&e.image);
    assert_eq!(l["berth.env_hash"], e.env_hash.as_str(), "labels restored");

    // An offline rebuild from the bundle's sources (copied into a folder first, so that one
    // wheel can be taken away below): same env hash, same kernel packages.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sources = dir.path().join("sources");
    let out = rebuild_offline(&e.file, &sources, &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("rebuild: {r}");
    assert_eq!(r["same_env_hash"], true, "{r}");
    assert_eq!(r["same_kernel_packages"], true, "{r}");
    assert_eq!(r["env_hash"], e.env_hash.as_str());
    // The base image came back with its id (so env hashes elsewhere stay the same).
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &base]);
    assert_eq!(id.trim(), base_id);
    assert!(stderr.contains("offline"), "{stderr}");

    // One wheel deleted from that copy of the wheelhouse: the offline rebuild names it. uv's
    // own wheel, which the second step installs: the build fails within seconds.
    let victim = "uv".to_string();
    let wheels = sources.join("wheels");
    let gone: Vec<PathBuf> = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{victim}-"))
        })
        .collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    std::fs::remove_file(&gone[0]).unwrap();
    let images = all_images();
    let out = rebuild_offline(&e.file, &sources, &[]);
    refused(&out, &victim);
    assert_eq!(all_images(), images, "a failed rebuild tags nothing");
}

#[test]
fn bad_bundles_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    // A bundle of a newer format (written with the bundle crate itself).
    let f = dir.path().join("newer.tar");
    let mut w = berth_bundle::archive::BundleWriter::create(&f, 0).unwrap();
    w.add_file("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}")
        .unwrap();
    w.finish(br#"{"format": 99, "something": "new"}"#).unwrap();
    refused(
        &run_berth(&["import", f.to_str().unwrap()]),
        "format version 99",
    );
    // An empty file.
    let f = dir.path().join("empty.tar");
    std::fs::write(&f, b"").unwrap();
    refused(
        &run_berth(&["import", f.to_str().unwrap()]),
        "not a berth bundle",
    );
    // A missing file.
    refused(
        &run_berth(&["import", "/nonexistent/x.tar"]),
        "/nonexistent/x.tar",
    );
    // An image the engine does not have.
    refused(
        &run_berth(&["export", "berth/no-such-image:latest"]),
        "no-such-image",
    );
}

#[test]
fn an_image_berth_did_not_build_exports_with_what_is_unknown() {
    let _g = build_lock();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let f = dir.path().join("base.tar");
    let out = run_berth(&["export", "berth-base:bookworm", "-o", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the bundle does not know"),
        "{stderr}"
    );
    let m = manifest_of(&f);
    let unknown: Vec<&str> = m["unknown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    for u in ["env_hash", "repo", "packages"] {
        assert!(unknown.contains(&u), "{unknown:?}");
    }
    assert!(m["repo"].is_null());
    // It still imports (the engine has it: nothing to load).
    let out = run_berth(&["import", f.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(i["loaded"], false);
}

#[test]
fn data_sets_travel_in_the_bundle_and_are_mounted_where_it_runs() {
    let b = build(&fixture("conda"), &[]);
    let _g = build_lock();
    let here = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lib = here.path().join("lib");
    let version = data_add(&lib, "sst", &fixture_data("sst_ndjfm_anom.nc"), &[]);
    let export = |args: &[&str], file: &Path| {
        berth()
            .env("BERTH_DATA_DIR", &lib)
            .args(["export", &b.image, "-o", file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };

    // An unknown data set is one error line, and no file.
    let bad = here.path().join("bad.tar");
    refused(&export(&["--data", "nope"], &bad), "nope");
    assert!(!bad.exists() && !here.path().join("bad.tar.partial").exists());

    let file = here.path().join("with-data.tar");
    let out = export(&["--data", "sst", "--json"], &file);
    let s: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert!(s["data_bytes"].as_u64().unwrap() > 1000, "{s}");
    let m = manifest_of(&file);
    assert_eq!(m["data"][0]["name"], "sst");
    assert_eq!(m["data"][0]["version"], version.as_str());
    let files = m["data"][0]["files"].as_array().unwrap();
    let keys: Vec<&str> = files.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert!(
        keys.contains(&"zarr.json") && keys.contains(&"sst/zarr.json"),
        "{keys:?}"
    );
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    // Each file is a blob the manifest lists, as the system's tar finds it.
    let parts = m["parts"].as_array().unwrap();
    for f in files {
        let path = format!("blobs/sha256/{}", f["sha256"].as_str().unwrap());
        assert!(
            parts
                .iter()
                .any(|p| p["path"] == path.as_str() && p["kind"] == "data"),
            "{path}"
        );
    }
    let blob = Command::new("tar")
        .args(["-xOf", file.to_str().unwrap()])
        .arg(format!(
            "blobs/sha256/{}",
            files[keys.iter().position(|k| *k == "zarr.json").unwrap()]["sha256"]
                .as_str()
                .unwrap()
        ))
        .output()
        .unwrap();
    assert_eq!(
        blob.stdout,
        std::fs::read(lib.join("versions").join(&version).join("zarr.json")).unwrap()
    );

    // Elsewhere, with an empty library: `berth run FILE` adds the data set at its version and
    // mounts it read-only at /data/sst.
    let elsewhere = here.path().join("elsewhere");
    let out = berth()
        .env("BERTH_DATA_DIR", &elsewhere)
        .args(["run", file.to_str().unwrap(), "--workers", "0", "--"])
        .args([
            "python",
            "-c",
            "import json, os; print('DATA', json.load(open('/data/sst/sst/zarr.json'))['shape'],              os.access('/data/sst', os.W_OK))",
        ])
        .output()
        .unwrap();
    let printed = stdout_of(&out);
    assert!(printed.contains("DATA [50, 18, 30] False"), "{printed}");
    stdout_of(
        &berth()
            .env("BERTH_DATA_DIR", &elsewhere)
            .args(["data", "verify", &format!("sst@{version}")])
            .output()
            .unwrap(),
    );
    // `berth import` of the same file into a library that has the version keeps it as it is.
    let out = berth()
        .env("BERTH_DATA_DIR", &elsewhere)
        .args(["import", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("added data set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_disk_during_export_leaves_no_partial_file() {
    let _g = build_lock();
    // A 64 MiB tmpfs: the base image does not fit.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mounting a tmpfs needs root, which the tests have");
    let out = run_berth(&[
        "export",
        "berth-base:bookworm",
        "-o",
        mnt.join("x.tar").to_str().unwrap(),
    ]);
    let listing: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let _ = Command::new("umount").arg(&mnt).status();
    refused(&out, "no space left");
    assert!(listing.is_empty(), "left behind: {listing:?}");
}
