//! Content-addressed versions: resolution, history, verify, rm, inspect.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use berth_data::{hash_store, DataError, IngestOptions};
use common::*;

#[test]
fn same_content_same_version_and_changed_source_new_version() {
    let (dir, lib) = library();
    let src = dir.path().join("sst.nc");
    std::fs::copy(fixture("sst_ndjfm_anom.nc"), &src).unwrap();
    let a = add(&lib, "sst", &[src.clone()], IngestOptions::default());
    assert_eq!(a.id().len(), 64);
    assert_eq!(hash_store(&a.path).unwrap(), a.id());
    let b = add(&lib, "sst", &[src.clone()], IngestOptions::default());
    assert_eq!(a.id(), b.id(), "identical content, identical version");
    assert_eq!(
        lib.history("sst").unwrap().len(),
        1,
        "no duplicate history entry"
    );
    // Same content under another name: the same store, not a copy.
    let c = add(&lib, "sst-copy", &[src.clone()], IngestOptions::default());
    assert_eq!(c.path, a.path);
    assert_eq!(
        std::fs::read_dir(lib.root().join("versions"))
            .unwrap()
            .count(),
        1
    );

    // Change the source: multiply the anomalies by 2.
    py(
        "import sys, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1]).load()\n\
         ds['sst'] = ds.sst * 2\n\
         ds.sst.attrs = xr.open_dataset(sys.argv[1]).sst.attrs\n\
         ds.to_netcdf(sys.argv[2], format='NETCDF3_CLASSIC')\n",
        &[&fixture("sst_ndjfm_anom.nc"), &src],
    );
    let before = std::fs::read(a.path.join("sst/c/0/0/0")).unwrap();
    let d = add(&lib, "sst", &[src.clone()], IngestOptions::default());
    assert_ne!(d.id(), a.id());
    assert_eq!(
        lib.resolve("sst").unwrap().id(),
        d.id(),
        "NAME is the newest"
    );
    let old = lib.resolve(&format!("sst@{}", &a.id()[..12])).unwrap();
    assert_eq!(old.id(), a.id());
    assert_eq!(
        std::fs::read(old.path.join("sst/c/0/0/0")).unwrap(),
        before,
        "old version unchanged"
    );
    lib.verify(&format!("sst@{}", &a.id()[..8])).unwrap();
    assert_identical(&old.path, "single", &[fixture("sst_ndjfm_anom.nc")]);
    assert_identical(&d.path, "single", &[src]);

    let ls = lib.ls().unwrap();
    let names: Vec<_> = ls
        .iter()
        .map(|s| (s.name.as_str(), s.newest.version.as_str(), s.versions))
        .collect();
    assert_eq!(names, vec![("sst", d.id(), 2), ("sst-copy", a.id(), 1)]);
    assert!(ls[0].newest.stored_bytes > 0);
}

#[test]
fn prefixes_unknown_and_ambiguous() {
    let (_dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    // 17 different chunkings are 17 different versions: two share their first hex digit.
    let mut ids: Vec<String> = Vec::new();
    for t in 1..=17 {
        ids.push(
            add(&lib, "sst", &[src.clone()], chunks(&[("time", t)]))
                .id()
                .to_string(),
        );
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 17);
    let pair = sorted
        .windows(2)
        .find(|w| w[0][..1] == w[1][..1])
        .expect("pigeonhole: two of 17 ids share the first hex digit");
    match lib.resolve(&format!("sst@{}", &pair[0][..1])) {
        Err(DataError::AmbiguousVersion { matches, .. }) => {
            assert!(
                matches.contains(&pair[0]) && matches.contains(&pair[1]),
                "{matches:?}"
            );
        }
        other => panic!("expected an ambiguous prefix, got {other:?}"),
    }
    let msg = lib
        .resolve(&format!("sst@{}", &pair[0][..1]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&pair[0]) && msg.contains(&pair[1]), "{msg}");
    // The full id and a long prefix resolve.
    assert_eq!(
        lib.resolve(&format!("sst@{}", pair[1])).unwrap().id(),
        pair[1]
    );
    // A prefix of no version, an unknown name, a bad spec.
    let none = (0..16u8)
        .map(|d| format!("{d:x}"))
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|p| !ids.iter().any(|i| i.starts_with(p.as_str())))
        .unwrap();
    assert!(matches!(
        lib.resolve(&format!("sst@{none}")),
        Err(DataError::UnknownVersion { .. })
    ));
    assert!(matches!(
        lib.resolve("nope"),
        Err(DataError::UnknownName(_))
    ));
    assert!(matches!(
        lib.resolve("sst@zz"),
        Err(DataError::UnknownVersion { .. })
    ));
    assert!(matches!(
        lib.resolve("../sst"),
        Err(DataError::InvalidName { .. })
    ));
    assert_eq!(lib.resolve("sst").unwrap().id(), ids[16]);
}

#[test]
fn verify_detects_a_flipped_byte() {
    let (_dir, lib) = library();
    let v = add(
        &lib,
        "sst",
        &[fixture("sst_ndjfm_anom.nc")],
        IngestOptions::default(),
    );
    lib.verify("sst").unwrap();
    let chunk = v.path.join("sst/c/0/0/0");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&chunk, &bytes).unwrap();
    match lib.verify("sst") {
        Err(DataError::Corrupt {
            name,
            version,
            actual,
        }) => {
            assert_eq!(name, "sst");
            assert_eq!(version, v.id());
            assert_ne!(actual, v.id());
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // A metadata edit is caught too.
    bytes[mid] ^= 0x01;
    std::fs::write(&chunk, &bytes).unwrap();
    lib.verify("sst").unwrap();
    let meta = v.path.join("zarr.json");
    let text = std::fs::read_to_string(&meta)
        .unwrap()
        .replace("CF-1.0", "CF-1.1");
    std::fs::write(&meta, text).unwrap();
    assert!(lib.verify("sst").unwrap_err().to_string().contains(v.id()));
}

#[test]
fn rm_name_and_version_keeps_shared_stores() {
    let (_dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    let a = add(&lib, "sst", &[src.clone()], chunks(&[("time", 10)]));
    let b = add(&lib, "sst", &[src.clone()], chunks(&[("time", 20)]));
    let shared = add(&lib, "other", &[src.clone()], chunks(&[("time", 10)]));
    assert_eq!(shared.id(), a.id());

    // Re-adding a's content makes it the newest again (history a, b, a).
    assert_eq!(
        add(&lib, "sst", &[src.clone()], chunks(&[("time", 10)])).id(),
        a.id()
    );
    assert_eq!(lib.resolve("sst").unwrap().id(), a.id());
    assert_eq!(lib.history("sst").unwrap().len(), 3);
    // Remove the newest entry... by prefix of a: every entry of a goes; b is newest again.
    let r = lib.rm(&format!("sst@{}", &a.id()[..10])).unwrap();
    assert_eq!(r.unregistered, vec![a.id().to_string()]);
    assert!(r.deleted.is_empty(), "\"other\" still has it");
    assert_eq!(lib.resolve("sst").unwrap().id(), b.id());
    add(&lib, "sst", &[src.clone()], chunks(&[("time", 10)]));
    assert_eq!(lib.resolve("sst").unwrap().id(), a.id());
    // One version: b is unregistered and deleted (nobody else has it).
    let r = lib.rm(&format!("sst@{}", &b.id()[..10])).unwrap();
    assert_eq!(r.unregistered, vec![b.id().to_string()]);
    assert_eq!(r.deleted, vec![b.id().to_string()]);
    assert!(!b.path.exists());
    assert_eq!(lib.resolve("sst").unwrap().id(), a.id());

    // The whole name: a stays on disk, "other" still references it.
    let r = lib.rm("sst").unwrap();
    assert_eq!(r.unregistered, vec![a.id().to_string()]);
    assert!(r.deleted.is_empty());
    assert!(a.path.is_dir());
    assert!(matches!(lib.resolve("sst"), Err(DataError::UnknownName(_))));
    lib.verify("other").unwrap();

    // The last reference: the store goes.
    let r = lib.rm(&format!("other@{}", &a.id()[..6])).unwrap();
    assert_eq!(r.deleted, vec![a.id().to_string()]);
    assert!(!a.path.exists());
    assert!(lib.ls().unwrap().is_empty());
    assert!(matches!(lib.rm("other"), Err(DataError::UnknownName(_))));
    assert_eq!(
        std::fs::read_dir(lib.root().join("versions"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(lib.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn inspect_matches_numpy() {
    let (_dir, lib) = library();
    let src = fixture("hgt_djf.nc");
    add(
        &lib,
        "hgt",
        &[src.clone()],
        chunks(&[("time", 7), ("longitude", 20)]),
    );
    let info = lib.inspect("hgt").unwrap();
    assert_eq!(info.attributes["Conventions"], "CF-1.0");
    let z = info.variables.iter().find(|v| v.name == "z").unwrap();
    assert_eq!(z.dims, ["time", "pressure", "latitude", "longitude"]);
    assert_eq!(z.shape, [65, 1, 29, 49]);
    assert_eq!(z.chunk_shape, [7, 1, 29, 20]);
    assert_eq!(z.dtype, "float64");
    assert_eq!(z.codecs, ["bytes", "zstd"]);
    assert_eq!(z.logical_bytes, 65 * 29 * 49 * 8);
    assert!(z.stored_bytes > 0 && z.stored_bytes < z.logical_bytes);
    assert_eq!(z.attributes["standard_name"], "geopotential_height");
    assert!(info.dimensions.contains(&("latitude".to_string(), 29)));
    let stats = z.stats.unwrap();
    let out = py(
        "import sys, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1])\n\
         for n in ['z', 'latitude', 'sst']:\n\
         \x20   if n in ds:\n\
         \x20       v = ds[n]\n\
         \x20       print(n, float(v.min()), float(v.mean()), float(v.max()), int(v.count()), int(v.isnull().sum()))\n",
        &[&src],
    );
    let line: Vec<&str> = out.lines().next().unwrap().split(' ').collect();
    let num = |i: usize| line[i].parse::<f64>().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(stats.min, num(1)), "{stats:?} vs {line:?}");
    assert!(close(stats.mean, num(2)), "{stats:?} vs {line:?}");
    assert!(close(stats.max, num(3)), "{stats:?} vs {line:?}");
    assert_eq!(stats.count, line[4].parse::<u64>().unwrap());
    assert_eq!(stats.missing, line[5].parse::<u64>().unwrap());

    // sst has missing values (1e20 over land): they are not in the statistics.
    add(
        &lib,
        "sst",
        &[fixture("sst_ndjfm_anom.nc")],
        IngestOptions::default(),
    );
    let info = lib.inspect("sst").unwrap();
    let sst = info
        .variables
        .iter()
        .find(|v| v.name == "sst")
        .unwrap()
        .stats
        .unwrap();
    let out = py(
        "import sys, xarray as xr\n\
         v = xr.open_dataset(sys.argv[1]).sst\n\
         print(float(v.min()), float(v.mean()), float(v.max()), int(v.count()), int(v.isnull().sum()))\n",
        &[&fixture("sst_ndjfm_anom.nc")],
    );
    let w: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(sst.missing > 0);
    assert!(
        close(sst.min, w[0]) && close(sst.mean, w[1]) && close(sst.max, w[2]),
        "{sst:?} vs {w:?}"
    );
    assert_eq!((sst.count, sst.missing), (w[3] as u64, w[4] as u64));
}

/// A store copied elsewhere (as a bundle carries it) is adopted into another library byte for
/// byte, as the same version; a changed copy is refused and leaves nothing behind.
#[test]
fn adopted_stores_keep_their_version_and_changed_ones_are_refused() {
    let (_d1, lib) = library();
    let v = add(
        &lib,
        "sst",
        &[fixture("sst_ndjfm_anom.nc")],
        IngestOptions::default(),
    );
    let (_d2, other) = library();
    let copy = |to: &std::path::Path| {
        for key in berth_data::store_keys(&v.path).unwrap() {
            let dest = to.join(&key);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(v.path.join(&key), dest).unwrap();
        }
    };

    // Changed by one byte: refused, nothing registered, the staging folder gone.
    let staging = other.staging_dir().unwrap();
    copy(&staging);
    let meta = staging.join("zarr.json");
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&meta, bytes).unwrap();
    let err = other
        .adopt("sst", &staging, v.record.clone())
        .expect_err("a changed store");
    assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    assert!(!staging.exists());
    assert!(matches!(
        other.resolve("sst"),
        Err(DataError::UnknownName(_))
    ));
    assert_eq!(
        std::fs::read_dir(other.root().join("versions"))
            .unwrap()
            .count(),
        0
    );

    // A folder that is not one of its staging folders is refused.
    let outside = tempfile::tempdir().unwrap();
    copy(outside.path());
    assert!(other
        .adopt("sst", outside.path(), v.record.clone())
        .is_err());

    let staging = other.staging_dir().unwrap();
    copy(&staging);
    let a = other.adopt("sst", &staging, v.record.clone()).unwrap();
    assert_eq!(a.id(), v.id());
    assert_eq!(a.record.sources, v.record.sources);
    assert_eq!(other.verify("sst").unwrap().id(), v.id());
    assert!(!staging.exists());
}
