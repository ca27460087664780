//! Ingest of the real fixtures, compared with xarray.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use std::path::PathBuf;

use berth_data::{Codec, IngestOptions};
use common::*;

#[test]
fn each_fixture_reads_identical_in_xarray() {
    let (_dir, lib) = library();
    for (name, file) in [
        ("sst", "sst_ndjfm_anom.nc"),
        ("hgt", "hgt_djf.nc"),
        ("uwnd", "uwnd_mean.nc"),
        ("vwnd", "vwnd_mean.nc"),
    ] {
        let src = fixture(file);
        let v = add(&lib, name, &[src.clone()], IngestOptions::default());
        assert!(v.path.join("zarr.json").is_file());
        assert_identical(&v.path, "single", &[src]);
    }
}

#[test]
fn small_chunks_and_every_codec_read_identical() {
    // Chunks that do not divide the shape: edge chunks are padded with the fill value.
    let (_dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    for (i, codec) in [
        Codec::Zstd { level: 3 },
        Codec::Gzip { level: 6 },
        Codec::None,
    ]
    .into_iter()
    .enumerate()
    {
        let mut opts = chunks(&[("time", 7), ("longitude", 8), ("bound", 1)]);
        opts.codec = codec;
        let v = add(&lib, &format!("sst{i}"), &[src.clone()], opts);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(v.path.join("sst/zarr.json")).unwrap()).unwrap();
        assert_eq!(
            meta["chunk_grid"]["configuration"]["chunk_shape"],
            serde_json::json!([7, 18, 8])
        );
        assert_eq!(
            meta["dimension_names"],
            serde_json::json!(["time", "latitude", "longitude"])
        );
        assert!(
            v.path.join("sst/c/7/0/3").is_file(),
            "last edge chunk of sst"
        );
        assert_identical(&v.path, "single", &[src.clone()]);
    }
    // The uwnd file (NetCDF-4, float32, a scalar coordinate) with a chunk per month.
    let src = fixture("uwnd_mean.nc");
    let v = add(
        &lib,
        "uwnd",
        &[src.clone()],
        chunks(&[("time", 1), ("latitude", 10)]),
    );
    assert_identical(&v.path, "single", &[src]);
}

#[test]
fn default_chunks_are_whole_small_variables() {
    let (_dir, lib) = library();
    let v = add(
        &lib,
        "hgt",
        &[fixture("hgt_djf.nc")],
        IngestOptions::default(),
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v.path.join("z/zarr.json")).unwrap()).unwrap();
    // 65*1*29*49*8 bytes = 739 KiB < 4 MiB: one chunk.
    assert_eq!(
        meta["chunk_grid"]["configuration"]["chunk_shape"],
        serde_json::json!([65, 1, 29, 49])
    );
    assert_eq!(meta["codecs"][1]["name"], "zstd");
    // CF missing_value stays an attribute; the NetCDF had no _FillValue, so none is invented.
    assert_eq!(meta["attributes"]["missing_value"], serde_json::json!(1e20));
    assert!(meta["attributes"].get("_FillValue").is_none());
    assert_eq!(meta["fill_value"], "NaN");
}

#[test]
fn merge_of_uwnd_and_vwnd_has_both_variables() {
    let (_dir, lib) = library();
    let u = fixture("uwnd_mean.nc");
    let w = fixture("vwnd_mean.nc");
    let v = add(
        &lib,
        "wind",
        &[u.clone(), w.clone()],
        IngestOptions::default(),
    );
    assert!(v.path.join("uwnd/zarr.json").is_file());
    assert!(v.path.join("vwnd/zarr.json").is_file());
    assert_identical(&v.path, "merge", &[u, w]);
}

#[test]
fn concat_of_three_time_slices_equals_the_original() {
    let (dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    let parts: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("part{i}.nc")))
        .collect();
    py(
        "import sys, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1])\n\
         for i, (a, b) in enumerate([(0, 17), (17, 30), (30, 50)]):\n\
         \x20   ds.isel(time=slice(a, b)).to_netcdf(sys.argv[2 + i])\n",
        &[&src, &parts[0], &parts[1], &parts[2]],
    );
    // Chunks across the file boundaries (17, 30): blocks are stitched from two files.
    let opts = IngestOptions {
        concat: Some("time".into()),
        chunks: vec![("time".into(), 8)],
        ..Default::default()
    };
    let v = lib.add("sst", &parts, opts, &|_| {}).expect("concat");
    assert_identical(&v.path, "single", &[src.clone()]);
    assert_identical(&v.path, "concat=time", &parts);
    // Default chunking: one chunk made of three files.
    let v = add(
        &lib,
        "sst2",
        &parts,
        IngestOptions {
            concat: Some("time".into()),
            ..Default::default()
        },
    );
    assert_identical(&v.path, "single", &[src]);
}

#[test]
fn zarr_v2_store_from_zarr_python_ingests_to_v3() {
    let (dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    let v2 = dir.path().join("sst_v2.zarr");
    py(
        "import sys, xarray as xr\n\
         xr.open_dataset(sys.argv[1]).to_zarr(sys.argv[2], zarr_format=2, consolidated=False)\n",
        &[&src, &v2],
    );
    assert!(v2.join(".zgroup").is_file());
    let v = add(&lib, "sstz", &[v2.clone()], chunks(&[("time", 16)]));
    assert_identical(&v.path, "zarr", &[v2]);
    assert_identical(&v.path, "single", &[src.clone()]);
    // A v3 store written by xarray (consolidated metadata, encoded _FillValue attributes).
    let v3 = dir.path().join("sst_v3.zarr");
    py(
        "import sys, xarray as xr\n\
         xr.open_dataset(sys.argv[1]).to_zarr(sys.argv[2], zarr_format=3)\n",
        &[&src, &v3],
    );
    let x = add(&lib, "sstx", &[v3.clone()], IngestOptions::default());
    assert_identical(&x.path, "zarr", &[v3]);
    assert_identical(&x.path, "single", &[src.clone()]);
    // A sharded v3 store and a zlib-compressed v2 store (zarr-python), ingested to plain v3.
    let sharded = dir.path().join("sst_sharded.zarr");
    let zlib = dir.path().join("sst_zlib.zarr");
    py(
        "import sys, numcodecs, xarray as xr\n\
         ds = xr.open_dataset(sys.argv[1])\n\
         ds.to_zarr(sys.argv[2], zarr_format=3, encoding={'sst': {'chunks': (5, 18, 30), 'shards': (10, 18, 30)}})\n\
         ds.to_zarr(sys.argv[3], zarr_format=2, consolidated=False, encoding={'sst': {'compressors': [numcodecs.Zlib(level=4)], 'chunks': (7, 18, 30)}})\n",
        &[&src, &sharded, &zlib],
    );
    let meta = std::fs::read_to_string(sharded.join("sst/zarr.json")).unwrap();
    assert!(meta.contains("sharding_indexed"), "{meta}");
    for (name, store) in [("sharded", &sharded), ("zlib", &zlib)] {
        let x = add(&lib, name, &[store.clone()], IngestOptions::default());
        assert_identical(&x.path, "zarr", &[store.clone()]);
        assert_identical(&x.path, "single", &[src.clone()]);
    }
    // And a v3 store (ours) as a source gives the same content back.
    let again = add(&lib, "sstz3", &[v.path.clone()], chunks(&[("time", 16)]));
    assert_eq!(again.id(), v.id());
}

#[test]
fn progress_reports_every_chunk() {
    let (_dir, lib) = library();
    let seen = std::sync::Mutex::new(Vec::new());
    let v = lib
        .add(
            "sst",
            &[fixture("sst_ndjfm_anom.nc")],
            chunks(&[("time", 10)]),
            &|p| seen.lock().unwrap().push(p),
        )
        .unwrap();
    let seen = seen.into_inner().unwrap();
    let last = *seen.last().unwrap();
    assert_eq!(last.chunks_done, last.chunks_total);
    assert_eq!(last.bytes_done, last.bytes_total);
    assert_eq!(last.bytes_total, v.record.logical_bytes);
    // sst: 5 chunks; time, bounds_time: 5 each; latitude, longitude and their bounds: 1 each.
    assert_eq!(last.chunks_total, 19);
    assert_eq!(seen.len() as u64, last.chunks_total + 1);
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
}

#[test]
fn packed_int16_stays_packed_and_decodes_identically() {
    // CF packed data (CF conventions §8.1): int16 with scale_factor, add_offset and _FillValue,
    // in a NetCDF-4 file and a classic file, with double and with float scale factors.
    // Float32 scale factors: JSON attributes have no float32, so xarray decodes to float64
    // from Zarr (float32 from NetCDF): same values to float32 precision (see DESIGN.md).
    let (dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    let cases = [
        ("packed64.nc", "NETCDF4", "0.001", "-0.5", "single"),
        (
            "packed32.nc",
            "NETCDF3_64BIT",
            "np.float32(0.001)",
            "np.float32(-0.5)",
            "single-close",
        ),
    ];
    for (file, format, scale, offset, mode) in cases {
        let out = dir.path().join(file);
        py(
            &format!(
                "import sys, numpy as np, xarray as xr\n\
                 ds = xr.open_dataset(sys.argv[1])\n\
                 enc = {{'sst': {{'dtype': 'int16', 'scale_factor': {scale}, 'add_offset': {offset}, '_FillValue': np.int16(-32767)}}}}\n\
                 ds.to_netcdf(sys.argv[2], format='{format}', encoding=enc)\n"
            ),
            &[&src, &out],
        );
        let v = add(
            &lib,
            file.trim_end_matches(".nc"),
            &[out.clone()],
            chunks(&[("time", 9)]),
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(v.path.join("sst/zarr.json")).unwrap()).unwrap();
        assert_eq!(meta["data_type"], "int16", "{file}: stays packed");
        assert_eq!(meta["fill_value"], -32767);
        assert_eq!(meta["attributes"]["_FillValue"], -32767);
        assert_identical(&v.path, mode, &[out]);
        let stats = lib.inspect(file.trim_end_matches(".nc")).unwrap();
        let s = stats
            .variables
            .iter()
            .find(|x| x.name == "sst")
            .unwrap()
            .stats
            .unwrap();
        assert!(
            s.missing > 0 && s.min > -10.0 && s.max < 10.0,
            "{file}: decoded stats {s:?}"
        );
    }
}
