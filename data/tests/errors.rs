//! Bad input: each a clear error, and nothing registered or left behind.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use std::path::{Path, PathBuf};

use berth_data::{DataError, IngestOptions, Library};
use common::*;

/// Runs a failing add and checks the library directory is exactly as before.
fn fails(lib: &Library, name: &str, sources: &[PathBuf], opts: IngestOptions) -> DataError {
    let before = listing(lib.root());
    let err = lib
        .add(name, sources, opts, &|_| {})
        .expect_err("the add should fail");
    assert_eq!(
        listing(lib.root()),
        before,
        "the library changed after a failed add: {err}"
    );
    assert!(lib.ls().unwrap().is_empty());
    err
}

fn msg_contains(err: &DataError, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

#[test]
fn not_netcdf_and_truncated_netcdf() {
    let (dir, lib) = library();
    let text = dir.path().join("notes.nc");
    std::fs::write(&text, "this is not NetCDF\n").unwrap();
    let e = fails(&lib, "x", &[text.clone()], IngestOptions::default());
    assert!(matches!(e, DataError::UnreadableSource { .. }), "{e:?}");
    msg_contains(&e, &["notes.nc"]);

    // Truncated classic file (header intact, data cut) and truncated NetCDF-4/HDF5 file.
    for file in ["sst_ndjfm_anom.nc", "uwnd_mean.nc"] {
        let full = std::fs::read(fixture(file)).unwrap();
        let cut = dir.path().join(format!("cut-{file}"));
        std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
        let e = fails(&lib, "x", &[cut.clone()], IngestOptions::default());
        assert!(
            matches!(e, DataError::UnreadableSource { .. }),
            "{file}: {e:?}"
        );
        msg_contains(&e, &[&format!("cut-{file}")]);
    }
    // A missing file.
    let e = fails(
        &lib,
        "x",
        &[dir.path().join("absent.nc")],
        IngestOptions::default(),
    );
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    msg_contains(&e, &["absent.nc"]);
    // A directory that is no Zarr store.
    let e = fails(
        &lib,
        "x",
        &[dir.path().to_path_buf()],
        IngestOptions::default(),
    );
    msg_contains(&e, &["zarr.json"]);
}

#[test]
fn truncation_check_knows_every_classic_variant() {
    // CDF-1 (classic), CDF-2 (64-bit offset), CDF-5 (64-bit data), with a record dimension
    // and without: whole files ingest identical; a file missing its last bytes is refused.
    let (dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    for (i, format) in [
        "NETCDF3_CLASSIC",
        "NETCDF3_64BIT_OFFSET",
        "NETCDF3_64BIT_DATA",
    ]
    .iter()
    .enumerate()
    {
        for unlimited in [true, false] {
            let f = dir.path().join(format!("{format}-{unlimited}.nc"));
            py(
                &format!(
                    "import sys, xarray as xr\n\
                     ds = xr.open_dataset(sys.argv[1])\n\
                     ds.to_netcdf(sys.argv[2], format='{}', unlimited_dims={})\n",
                    match *format {
                        "NETCDF3_64BIT_DATA" => "NETCDF4_CLASSIC",
                        "NETCDF3_64BIT_OFFSET" => "NETCDF3_64BIT",
                        f => f,
                    },
                    if unlimited { "['time']" } else { "[]" }
                ),
                &[&src, &f],
            );
            if *format == "NETCDF3_64BIT_DATA" {
                // xarray cannot write CDF-5; netCDF4 can convert.
                py(
                    "import sys, netCDF4\n\
                     s = netCDF4.Dataset(sys.argv[1])\n\
                     d = netCDF4.Dataset(sys.argv[2], 'w', format='NETCDF3_64BIT_DATA')\n\
                     d.setncatts(s.__dict__)\n\
                     for n, dim in s.dimensions.items(): d.createDimension(n, None if dim.isunlimited() else len(dim))\n\
                     for n, v in s.variables.items():\n\
                     \x20   w = d.createVariable(n, v.dtype, v.dimensions, fill_value=getattr(v, '_FillValue', None))\n\
                     \x20   w.setncatts({k: v.getncattr(k) for k in v.ncattrs() if k != '_FillValue'})\n\
                     \x20   w[...] = v[...]\n\
                     d.close()\n",
                    &[&f.clone(), &dir.path().join("cdf5.nc")],
                );
                std::fs::rename(dir.path().join("cdf5.nc"), &f).unwrap();
            }
            let magic = std::fs::read(&f).unwrap()[..4].to_vec();
            assert_eq!(magic, [b'C', b'D', b'F', [1u8, 2, 5][i]], "{format}");
            let v = add(
                &lib,
                &format!("ok{i}{unlimited}"),
                &[f.clone()],
                IngestOptions::default(),
            );
            assert_identical(&v.path, "single", &[f.clone()]);
            let full = std::fs::read(&f).unwrap();
            let cut = dir.path().join(format!("cut-{format}-{unlimited}.nc"));
            std::fs::write(&cut, &full[..full.len() - 1]).unwrap();
            let before = listing(lib.root());
            let e = lib
                .add("cut", &[cut], IngestOptions::default(), &|_| {})
                .expect_err("one byte short");
            assert!(
                matches!(e, DataError::UnreadableSource { .. }),
                "{format}: {e:?}"
            );
            msg_contains(&e, &["truncated"]);
            assert_eq!(listing(lib.root()), before);
        }
    }
}

#[test]
fn concat_over_files_whose_other_dimensions_differ() {
    let (dir, lib) = library();
    let a = dir.path().join("a.nc");
    let b = dir.path().join("b.nc");
    py(
        "import sys, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1])\n\
         ds.isel(time=slice(0, 25)).to_netcdf(sys.argv[2])\n\
         ds.isel(time=slice(25, 50), latitude=slice(0, 10)).to_netcdf(sys.argv[3])\n",
        &[&fixture("sst_ndjfm_anom.nc"), &a, &b],
    );
    let opts = IngestOptions {
        concat: Some("time".into()),
        ..Default::default()
    };
    let e = fails(&lib, "x", &[a.clone(), b.clone()], opts.clone());
    assert!(matches!(e, DataError::Incompatible(_)), "{e:?}");
    msg_contains(&e, &["latitude", "a.nc", "b.nc"]);
    // Pieces whose times are encoded with different units cannot be joined raw.
    let c = dir.path().join("c.nc");
    py(
        "import sys, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1])\n\
         ds.isel(time=slice(25, 50)).to_netcdf(sys.argv[2], encoding={'time': {'units': 'days since 1900-01-01'}})\n",
        &[&fixture("sst_ndjfm_anom.nc"), &c],
    );
    let e = fails(&lib, "x", &[a.clone(), c], opts.clone());
    assert!(matches!(e, DataError::Incompatible(_)), "{e:?}");
    msg_contains(&e, &["time", "units", "cannot be joined"]);
    // Concatenating along a dimension that does not exist.
    let e = fails(
        &lib,
        "x",
        &[a.clone(), a.clone()],
        IngestOptions {
            concat: Some("level".into()),
            ..Default::default()
        },
    );
    msg_contains(&e, &["level"]);
    // Merging files that disagree on a shared coordinate (no concat).
    let e = fails(&lib, "x", &[a, b], IngestOptions::default());
    assert!(matches!(e, DataError::Incompatible(_)), "{e:?}");
}

#[test]
fn bad_chunks() {
    let (_dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    let e = fails(&lib, "x", &[src.clone()], chunks(&[("level", 4)]));
    assert!(matches!(e, DataError::InvalidOptions(_)), "{e:?}");
    msg_contains(&e, &["level", "latitude", "time"]);
    let e = fails(&lib, "x", &[src], chunks(&[("time", 0)]));
    assert!(matches!(e, DataError::InvalidOptions(_)), "{e:?}");
    msg_contains(&e, &["time", "0"]);
}

#[test]
fn bad_names() {
    let (_dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    for name in [
        "a/b",
        "..",
        "../escape",
        ".hidden",
        "",
        "with space",
        &"n".repeat(65),
    ] {
        let e = fails(&lib, name, &[src.clone()], IngestOptions::default());
        assert!(matches!(e, DataError::InvalidName { .. }), "{name}: {e:?}");
    }
    assert!(!Path::new(&lib.root().join("escape.json")).exists());
}

#[test]
fn failed_write_removes_the_temporary_store() {
    // A NetCDF-4 file whose header is fine but whose compressed chunks are corrupt past the
    // middle: the ingest fails after some chunks were written, and the partial store in
    // ROOT/tmp is removed, nothing registered.
    let (dir, lib) = library();
    let bad = dir.path().join("corrupt.nc");
    py(
        "import sys, numpy as np, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1])\n\
         ds = ds.assign(noise=(('time', 'latitude', 'longitude'), np.random.default_rng(1).random((50, 18, 30))))\n\
         enc = {'noise': {'zlib': True, 'chunksizes': (1, 18, 30)}}\n\
         ds[['noise']].to_netcdf(sys.argv[2], encoding=enc)\n\
         b = bytearray(open(sys.argv[2], 'rb').read())\n\
         n = len(b)\n\
         b[n * 6 // 10 : n * 8 // 10] = bytes(range(256)) * ((n * 8 // 10 - n * 6 // 10) // 256) + bytes((n * 8 // 10 - n * 6 // 10) % 256)\n\
         open(sys.argv[2], 'wb').write(b)\n",
        &[&fixture("sst_ndjfm_anom.nc"), &bad],
    );
    let before = listing(lib.root());
    let done = std::sync::atomic::AtomicU64::new(0);
    let err = lib
        .add("x", &[bad], chunks(&[("time", 1)]), &|p| {
            done.store(p.chunks_done, std::sync::atomic::Ordering::Relaxed)
        })
        .expect_err("corrupt chunks must fail the ingest");
    assert!(
        done.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the failure should come after some chunks were written: {err}"
    );
    msg_contains(&err, &["corrupt.nc", "noise"]);
    assert_eq!(
        listing(lib.root()),
        before,
        "the library changed after a failed add: {err}"
    );
    assert_eq!(
        std::fs::read_dir(lib.root().join("tmp")).unwrap().count(),
        0
    );
    assert!(lib.ls().unwrap().is_empty());
}

/// A full disk during an ingest (the library on a 256 KiB tmpfs; the store needs about
/// 500 KiB): an I/O error naming the cause, no version registered, no partial store left.
#[test]
fn a_full_disk_during_ingest_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a tmpfs needs root, which the tests have");
    // Unmounted whatever happens below.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let lib = Library::open(mnt.join("lib")).unwrap();
    let opts = IngestOptions {
        codec: "none".parse().unwrap(),
        ..Default::default()
    };
    let err = fails(&lib, "uwnd", &[fixture("uwnd_mean.nc")], opts);
    msg_contains(&err, &["No space left"]);
    assert_eq!(std::fs::read_dir(mnt.join("lib/tmp")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(mnt.join("lib/versions")).unwrap().count(),
        0
    );
}
