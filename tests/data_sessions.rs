//! End to end: data sets of berth's data library in sessions (`berth data add`, `launch/run
//! --data`, a repository's `berth-data.txt`) on the real Docker engine, the conda fixture
//! repository and the fixture NetCDF files; values compared with xarray on the host.

mod common;

use std::path::Path;
use std::process::Command;

use common::kernel::{execute, server_of};
use common::*;

/// `berth data add NAME FILE --json EXTRA…` into the library `root`; returns the version id.
/// What the Python in the session computes from `/data/sst` (plain Python: the fixture
/// image has no xarray or zarr): the array metadata and the SHA-256 of the decompressed
/// (gzip codec) single chunk; whether `/data/sst` is mounted read-only; whether writing fails.
const READ_SST: &str = r#"
import gzip, hashlib, json, os
from distributed import Client
def read_sst():
    meta = json.load(open('/data/sst/sst/zarr.json'))
    raw = gzip.decompress(open('/data/sst/sst/c/0/0/0', 'rb').read())
    return (meta['shape'], meta['chunk_grid']['configuration']['chunk_shape'],
            [c['name'] for c in meta['codecs']], hashlib.sha256(raw).hexdigest())
def mount_state():
    opts = [l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/data/sst']
    try:
        open('/data/sst/intruder', 'w').write('x')
        wrote = 'WROTE'
    except OSError as e:
        wrote = 'REFUSED'
    return (opts[0].split(',')[0] if opts else 'NOMOUNT', wrote)
here = read_sst()
print('HERE', json.dumps(here))
print('HERE_MOUNT', mount_state())
c = Client()
ws = sorted(c.scheduler_info()['workers'])
res = [c.submit(read_sst, workers=[w], allow_other_workers=False, pure=False).result() for w in ws]
print('TASKS', len(res), 'SAME', all(tuple(r) == tuple(here) for r in res))
print('WORKER_MOUNTS', sorted(set(c.run(mount_state).values())))
print('WINDS', sorted(os.listdir('/data/winds')))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn data_sets_are_mounted_read_only_on_the_session_and_every_worker() {
    let lib = tempfile::tempdir().unwrap();
    let sst_nc = fixture_data("sst_ndjfm_anom.nc");
    let sst = data_add(lib.path(), "sst", &sst_nc, &["--codec", "gzip"]);
    let winds = data_add(lib.path(), "winds", &fixture_data("uwnd_mean.nc"), &[]);

    // The values as xarray reads them on the host: from the NetCDF file (undecoded float64,
    // C order, little endian) and, identical, from the store berth wrote.
    let script = r#"
import hashlib, sys, numpy as np, xarray as xr
nc = xr.open_dataset(sys.argv[1], mask_and_scale=False, decode_times=False)
z = xr.open_zarr(sys.argv[2], mask_and_scale=False, decode_times=False)
xr.testing.assert_identical(nc.sst, z.sst)
print(hashlib.sha256(np.ascontiguousarray(nc.sst.values, dtype='<f8').tobytes()).hexdigest())
"#;
    let out = Command::new(test_python())
        .args(["-c", script, sst_nc.to_str().unwrap()])
        .arg(lib.path().join("versions").join(&sst))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected_sha = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // A repository that declares `winds` in berth-data.txt: the environment is the conda
    // fixture's (data do not enter the env hash), only the repository layer is new.
    let dir = clone_fixture("conda");
    let repo = dir.path().join("repo");
    std::fs::write(
        repo.join("berth-data.txt"),
        "# wind for the notebook\nwinds\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "needs winds"]);
    let base_env = build(&fixture("conda"), &[]).env_hash;
    let built = build(&repo, &[]);
    assert_eq!(built.env_hash, base_env);
    assert_eq!(built.data, ["winds"]);
    assert_eq!(labels(&built.image)["berth.data.requires"], "winds");

    let launched = tokio::task::spawn_blocking({
        let repo = repo.clone();
        let root = lib.path().to_path_buf();
        move || {
            let _g = build_lock();
            let out = berth()
                .env("BERTH_DATA_DIR", &root)
                .args(["launch", repo.to_str().unwrap(), "--json", "--workers", "2"])
                .args(["--data", "sst"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Launched>(&out.stdout).unwrap()
        }
    })
    .await
    .unwrap();
    let _stop = StopOnDrop(launched.session.clone());
    let session = launched.session.clone();

    // The exact versions, in the session's label and in `berth ls --json`.
    let want = format!("sst@{sst},winds@{winds}");
    let entry = tokio::task::spawn_blocking({
        let s = session.clone();
        move || ls_session(&s)
    })
    .await
    .unwrap();
    assert_eq!(
        entry["data"],
        serde_json::json!([format!("sst@{sst}"), format!("winds@{winds}")])
    );
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.session={session}"),
    ]);
    for id in ids.lines() {
        let role = docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"berth.role\"}}",
            id,
        ]);
        let mounts: serde_json::Value =
            serde_json::from_str(docker(&["inspect", "-f", "{{json .Mounts}}", id]).trim())
                .unwrap();
        // The engine lists mounts in no fixed order.
        let mut data: Vec<(String, bool)> = mounts
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["Destination"].as_str().unwrap().starts_with("/data/"))
            .map(|m| {
                (
                    m["Destination"].as_str().unwrap().to_string(),
                    m["RW"].as_bool().unwrap(),
                )
            })
            .collect();
        data.sort();
        if role.trim() == "scheduler" {
            continue;
        }
        assert_eq!(
            data,
            [
                ("/data/sst".to_string(), false),
                ("/data/winds".to_string(), false)
            ],
            "{role}"
        );
        let label = docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"berth.data\"}}",
            id,
        ]);
        assert_eq!(label.trim(), want);
    }

    let (base, token) = server_of(&launched.url, "lab");
    let cell = execute(&base, &token, READ_SST).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    let out = &cell.output;
    let here =
        format!("HERE [[50, 18, 30], [50, 18, 30], [\"bytes\", \"gzip\"], \"{expected_sha}\"]");
    assert!(out.contains(&here), "{out}\nwanted {here}");
    assert!(out.contains("HERE_MOUNT ('ro', 'REFUSED')"), "{out}");
    assert!(out.contains("TASKS 2 SAME True"), "{out}");
    assert!(out.contains("WORKER_MOUNTS [('ro', 'REFUSED')]"), "{out}");
    assert!(out.contains("'uwnd', 'zarr.json']"), "{out}");

    // A worker added later gets the data too.
    let out = tokio::task::spawn_blocking({
        let s = session.clone();
        move || run_berth(&["scale", &s, "3"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = format!(
        "{READ_SST}\nres = c.run(read_sst)\nprint('ALL', len(res), all(tuple(r) == tuple(here) for r in res.values()))"
    );
    let cell = execute(&base, &token, &check).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    assert!(cell.output.contains("TASKS 3 SAME True"), "{}", cell.output);
    assert!(cell.output.contains("ALL 3 True"), "{}", cell.output);
    assert!(
        cell.output.contains("WORKER_MOUNTS [('ro', 'REFUSED')]"),
        "{}",
        cell.output
    );

    // A data set a session mounts cannot be removed under it: one error line, nothing lost.
    let out = tokio::task::spawn_blocking({
        let root = lib.path().to_path_buf();
        move || {
            berth()
                .env("BERTH_DATA_DIR", &root)
                .args(["data", "rm", "sst"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("mounted by session") && stderr.contains(&session),
        "{stderr}"
    );
    assert!(lib
        .path()
        .join("versions")
        .join(&sst)
        .join("zarr.json")
        .exists());

    // `berth run` mounts them too (no cluster needed for that).
    let out = {
        let _g = build_lock();
        berth()
            .env("BERTH_DATA_DIR", lib.path())
            .args([
                "run",
                repo.to_str().unwrap(),
                "--workers",
                "0",
                "--data",
                &format!("sst@{}", &sst[..8]),
            ])
            .args([
                "--",
                "python",
                "-c",
                "import os; print('RUN', sorted(os.listdir('/data')))",
            ])
            .output()
            .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("RUN ['sst', 'winds']"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Containers and networks of sessions launched from `repo` (its `berth.repo_url` label).
fn repo_leftovers(repo: &Path) -> (String, String) {
    let filter = format!("label=berth.repo_url={}", repo.display());
    (
        docker(&["ps", "-aq", "--filter", &filter]),
        docker(&["network", "ls", "-q", "--filter", &filter]),
    )
}

#[test]
fn unknown_data_sets_fail_before_anything_starts() {
    let lib = tempfile::tempdir().unwrap();
    let dir = clone_fixture("conda");
    let repo = dir.path().join("repo");
    std::fs::write(repo.join("berth-data.txt"), "winds\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "needs winds"]);
    let containers = all_containers();

    // Asked for on the command line: refused before the build (nothing fetched).
    let out = berth()
        .env("BERTH_DATA_DIR", lib.path())
        .args(["launch", repo.to_str().unwrap(), "--data", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "error: unknown data set \"nope\"", "{err}");
    for bad in ["../etc", "sst@xyz"] {
        let out = berth()
            .env("BERTH_DATA_DIR", lib.path())
            .args(["run", repo.to_str().unwrap(), "--data", bad, "--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
    }

    // Declared by the repository (berth-data.txt): refused after the build, before
    // the session starts.
    let out = {
        let _g = build_lock();
        berth()
            .env("BERTH_DATA_DIR", lib.path())
            .args(["launch", repo.to_str().unwrap(), "--workers", "1"])
            .output()
            .unwrap()
    };
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the repository's berth-data.txt needs data set \"winds\""),
        "{err}"
    );
    assert!(last.contains("unknown data set \"winds\""), "{err}");
    assert!(!err.contains("starting session"), "{err}");
    assert_eq!(repo_leftovers(&repo), (String::new(), String::new()));
    // No container of this repository appeared (others' may have come and gone).
    let now = all_containers();
    for c in now.iter().filter(|c| !containers.contains(c)) {
        let url = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"berth.repo_url\"}}",
                c,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert_ne!(url, repo.display().to_string(), "container {c} was left");
    }
}

/// In the session's kernel: each data set under /data opens in xarray identical to its
/// original NetCDF file (committed to the repository), and the session's Dask workers compute
/// a mean over `time` from /data/sst equal to NumPy's on the original.
const XARRAY_IN_THE_SESSION: &str = r#"
import numpy as np, xarray as xr
from distributed import Client, get_task_stream
files = {'sst': 'sst_ndjfm_anom.nc', 'hgt': 'hgt_djf.nc', 'uwnd': 'uwnd_mean.nc',
         'vwnd': 'vwnd_mean.nc'}
for name, f in files.items():
    xr.testing.assert_identical(xr.open_zarr(f'/data/{name}').load(), xr.open_dataset(f).load())
    print('IDENTICAL', name)
c = Client()
workers = set(c.scheduler_info()['workers'])
with get_task_stream(client=c) as ts:
    mean = xr.open_zarr('/data/sst', chunks={'time': 10}).sst.mean('time').compute()
ran_on = {t['worker'] for t in ts.data}
ref = np.nanmean(xr.open_dataset('sst_ndjfm_anom.nc').sst.values, axis=0)
print('MEAN', len(workers), len(ts.data) > 0 and ran_on <= workers,
      bool(np.allclose(mean.values, ref, rtol=1e-12, equal_nan=True)))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn xarray_in_the_session_reads_the_data_sets_and_workers_compute_from_them() {
    let lib = tempfile::tempdir().unwrap();
    let files = [
        ("sst", "sst_ndjfm_anom.nc"),
        ("hgt", "hgt_djf.nc"),
        ("uwnd", "uwnd_mean.nc"),
        ("vwnd", "vwnd_mean.nc"),
    ];
    for (name, f) in files {
        data_add(lib.path(), name, &fixture_data(f), &[]);
    }
    // A repository that asks for xarray, zarr, netCDF4 and dask, with the original files.
    let dir = repo_with(&[("requirements.txt", "xarray\nzarr>=3\nnetCDF4\ndask\n")]);
    for (_, f) in files {
        std::fs::copy(fixture_data(f), dir.path().join(f)).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "the original files"]);

    let launched = tokio::task::spawn_blocking({
        let repo = dir.path().to_path_buf();
        let root = lib.path().to_path_buf();
        move || {
            let _g = build_lock();
            let mut cmd = berth();
            cmd.env("BERTH_DATA_DIR", &root).args([
                "launch",
                repo.to_str().unwrap(),
                "--json",
                "--workers",
                "2",
            ]);
            for (name, _) in files {
                cmd.args(["--data", name]);
            }
            serde_json::from_str::<Launched>(&stdout_of(&cmd.output().unwrap())).unwrap()
        }
    })
    .await
    .unwrap();
    let _stop = StopOnDrop(launched.session.clone());
    let (base, token) = server_of(&launched.url, "lab");
    let cell = execute(&base, &token, XARRAY_IN_THE_SESSION).await;
    assert_eq!(cell.error, None, "{}", cell.output);
    for (name, _) in files {
        assert!(
            cell.output.contains(&format!("IDENTICAL {name}")),
            "{}",
            cell.output
        );
    }
    assert!(cell.output.contains("MEAN 2 True True"), "{}", cell.output);
}
