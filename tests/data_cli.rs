//! `berth data add/ls/inspect/verify/rm/show` on the fixture NetCDF files, compared with
//! xarray (through `$BERTH_TEST_PYTHON`) where values are involved. No Docker needed.

mod common;

use common::{fixture_data, test_python};

use std::path::Path;
use std::process::{Command, Output};

/// `berth data ARGS` with the library `root` (through BERTH_DATA_DIR).
fn data(root: &Path, args: &[&str]) -> Output {
    common::berth()
        .env("BERTH_DATA_DIR", root)
        .arg("data")
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with exactly one line on stderr, `error: …` containing `says`.
fn one_error_line(out: &Output, says: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(says), "{err}");
}

#[test]
fn add_ls_inspect_verify_show_rm() {
    let lib = tempfile::tempdir().unwrap();
    let root = lib.path();
    let sst = fixture_data("sst_ndjfm_anom.nc");
    let added: serde_json::Value = serde_json::from_str(&ok(&data(
        root,
        &[
            "add",
            "sst",
            sst.to_str().unwrap(),
            "--chunks",
            "time=10",
            "--codec",
            "gzip",
            "--json",
        ],
    )))
    .unwrap();
    let version = added["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 64);
    let store = root.join("versions").join(&version);
    assert_eq!(Path::new(added["path"].as_str().unwrap()), store);
    assert!(added["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        added["logical_bytes"],
        50 * 18 * 30 * 8 + 2 * (18 + 30 + 50) * 8 + 4 * 48 + 8 * 50
    );
    assert!(added["seconds"].as_f64().unwrap() >= 0.0);
    // Without --json: NAME@version on stdout, the figures on stderr.
    let out = data(
        root,
        &[
            "add",
            "winds",
            fixture_data("uwnd_mean.nc").to_str().unwrap(),
            fixture_data("vwnd_mean.nc").to_str().unwrap(),
        ],
    );
    let winds = ok(&out).trim().to_string();
    assert!(winds.starts_with("winds@"), "{winds}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stored") && err.contains(" s"), "{err}");

    let ls: serde_json::Value = serde_json::from_str(&ok(&data(root, &["ls", "--json"]))).unwrap();
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sst", "winds"]);
    assert_eq!(ls[0]["version"], version);
    assert_eq!(ls[0]["versions"], 1);
    let text = ok(&data(root, &["ls"]));
    assert!(text.lines().nth(1).unwrap().starts_with("sst "), "{text}");
    assert!(text.contains(&version[..12]), "{text}");

    // inspect: the library's figures, checked against xarray on the NetCDF file.
    let i: serde_json::Value = serde_json::from_str(&ok(&data(
        root,
        &["inspect", &format!("sst@{}", &version[..8]), "--json"],
    )))
    .unwrap();
    assert_eq!(i["version"], version);
    let var = i["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sst")
        .unwrap()
        .clone();
    assert_eq!(var["shape"], serde_json::json!([50, 18, 30]));
    assert_eq!(var["chunk_shape"], serde_json::json!([10, 18, 30]));
    assert_eq!(var["codecs"], serde_json::json!(["bytes", "gzip"]));
    let script = "import sys, xarray as xr\nd = xr.open_dataset(sys.argv[1]).sst\nprint(float(d.min()), float(d.mean()), float(d.max()))";
    let out = Command::new(test_python())
        .args(["-c", script, sst.to_str().unwrap()])
        .output()
        .unwrap();
    let want: Vec<f64> = ok(&out)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let got = [
        &var["stats"]["min"],
        &var["stats"]["mean"],
        &var["stats"]["max"],
    ]
    .map(|v| v.as_f64().unwrap());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-9 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
    let text = ok(&data(root, &["inspect", "sst"]));
    for needle in [
        &version[..],
        "50×18×30",
        "10×18×30",
        "bytes+gzip",
        "Conventions: CF-1.0",
        "sst attributes",
        &format!("{:.6}", want[0]),
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }

    assert!(ok(&data(root, &["verify", "sst"])).contains(": ok"));

    // show: a PNG that an independent reader (Python's zlib-free header check) accepts.
    let png = root.join("sst.png");
    let out = ok(&data(
        root,
        &[
            "show",
            "sst",
            "sst",
            "--at",
            "time=3",
            "-o",
            png.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.trim(), png.to_str().unwrap());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let script = "import sys, struct, zlib\nb = open(sys.argv[1], 'rb').read()\npos, chunks = 8, []\nwhile pos < len(b):\n    n, = struct.unpack('>I', b[pos:pos+4]); t = b[pos+4:pos+8]\n    assert zlib.crc32(b[pos+4:pos+8+n]) == struct.unpack('>I', b[pos+8+n:pos+12+n])[0], t\n    chunks.append(t); pos += 12 + n\nw, h = struct.unpack('>II', b[16:24])\nprint(chunks[0].decode(), chunks[-1].decode(), w, h)";
    let out = ok(&Command::new(test_python())
        .args(["-c", script, png.to_str().unwrap()])
        .output()
        .unwrap());
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(parts[..2], ["IHDR", "IEND"], "{out}");
    assert!(
        parts[2].parse::<u32>().unwrap() >= 30 && parts[3].parse::<u32>().unwrap() >= 18,
        "{out}"
    );

    // A corrupt chunk: verify fails with one line naming the version.
    let chunk = store.join("sst/c/1/0/0");
    let mut b = std::fs::read(&chunk).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&chunk, &b).unwrap();
    one_error_line(
        &data(root, &["verify", "sst"]),
        &format!("version {version} of \"sst\" is corrupt"),
    );

    // rm one name; the other stays.
    let out = ok(&data(root, &["rm", "sst"]));
    assert!(
        out.contains(&format!("removed sst@{version} (store deleted)")),
        "{out}"
    );
    assert!(!store.exists());
    let ls: serde_json::Value = serde_json::from_str(&ok(&data(root, &["ls", "--json"]))).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1);
}

#[test]
fn bad_input_is_one_error_line() {
    let lib = tempfile::tempdir().unwrap();
    let root = lib.path();
    let sst = fixture_data("sst_ndjfm_anom.nc");
    let sst = sst.to_str().unwrap();
    one_error_line(
        &data(root, &["add", "sst", "/no/such/file.nc"]),
        "/no/such/file.nc: no such file or folder",
    );
    one_error_line(
        &data(root, &["add", "sst", sst, "--chunks", "time"]),
        "invalid --chunks \"time\"",
    );
    one_error_line(
        &data(root, &["add", "sst", sst, "--chunks", "time=0"]),
        "invalid --chunks",
    );
    one_error_line(
        &data(root, &["add", "sst", sst, "--chunks", "depth=3"]),
        "depth",
    );
    one_error_line(
        &data(root, &["add", "sst", sst, "--codec", "lz4"]),
        "codec \"lz4\"",
    );
    one_error_line(&data(root, &["add", "../x", sst]), "invalid data set name");
    one_error_line(
        &data(root, &["add", "sst", sst, "--concat", "depth"]),
        "depth",
    );
    one_error_line(
        &data(root, &["inspect", "nope"]),
        "unknown data set \"nope\"",
    );
    one_error_line(
        &data(root, &["verify", "nope@abc"]),
        "unknown data set \"nope\"",
    );
    one_error_line(&data(root, &["rm", "nope"]), "unknown data set \"nope\"");
    // Nothing was registered by the failures.
    assert_eq!(ok(&data(root, &["ls", "--json"])).trim(), "[]");
    ok(&data(root, &["add", "sst", sst]));
    one_error_line(
        &data(root, &["show", "sst", "nope"]),
        "no variable \"nope\"",
    );
    one_error_line(
        &data(root, &["show", "sst", "sst", "--at", "time=x"]),
        "invalid --at",
    );
    one_error_line(
        &data(
            root,
            &[
                "show",
                "sst",
                "sst",
                "--at",
                "time=0",
                "-o",
                "/no/such/dir/x.png",
            ],
        ),
        "x.png",
    );
    one_error_line(&data(root, &["show", "sst", "sst"]), "fix all but two");
    one_error_line(
        &data(root, &["inspect", "sst@0000000000"]),
        "no version starting with",
    );
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let lib = tempfile::tempdir().unwrap();
    let root = lib.path();
    let sst = fixture_data("sst_ndjfm_anom.nc");
    ok(&data(root, &["add", "sst", sst.to_str().unwrap()]));
    // `berth data ls | true`: the reader is gone before berth writes (a closed pipe).
    for cmd in ["inspect sst", "ls", "ls --json"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; BERTH_DATA_DIR='{}' '{}' data {cmd} | true; echo \"status $?\"",
                root.display(),
                env!("CARGO_BIN_EXE_berth")
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{cmd}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "status 0",
            "{cmd}"
        );
    }
}
