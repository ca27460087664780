//! Bounded memory: a variable much larger than a chunk is ingested (and inspected) chunk by
//! chunk. One test in its own binary, so the process's peak RSS is its own.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use berth_data::IngestOptions;
use common::*;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

#[test]
fn a_256_mib_variable_is_ingested_in_bounded_memory() {
    let (dir, lib) = library();
    let big = dir.path().join("big.nc");
    // 64 x 1024 x 1024 float32 = 256 MiB, written one time step at a time.
    py(
        "import sys, numpy as np, netCDF4\n\
         d = netCDF4.Dataset(sys.argv[1], 'w', format='NETCDF3_64BIT_OFFSET')\n\
         d.createDimension('time', 64); d.createDimension('y', 1024); d.createDimension('x', 1024)\n\
         v = d.createVariable('field', 'f4', ('time', 'y', 'x'))\n\
         v.units = 'K'\n\
         row = np.arange(1024, dtype='f4') * np.float32(1e-3)\n\
         for i in range(64):\n\
         \x20   v[i] = np.float32(i) + row[None, :] + row[:, None]\n\
         d.close()\n",
        &[&big],
    );
    // Reset the peak RSS (Linux >= 4.0: writing 5 to clear_refs resets VmHWM).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let base = status_kib("VmRSS:");
    let v = lib
        .add("big", &[big.clone()], IngestOptions::default(), &|_| {})
        .expect("ingest");
    let peak = status_kib("VmHWM:");
    let grown_mib = peak.saturating_sub(base) / 1024;
    eprintln!("peak RSS growth: {grown_mib} MiB");
    assert_eq!(v.record.logical_bytes, 256 << 20);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v.path.join("field/zarr.json")).unwrap()).unwrap();
    // 4 MiB rows: one per chunk.
    assert_eq!(
        meta["chunk_grid"]["configuration"]["chunk_shape"],
        serde_json::json!([1, 1024, 1024])
    );
    assert!(
        grown_mib < 96,
        "peak RSS grew by {grown_mib} MiB while ingesting a 256 MiB variable in 4 MiB chunks"
    );
    std::fs::remove_file(&big).unwrap();

    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let base = status_kib("VmRSS:");
    let info = lib.inspect("big").unwrap();
    let peak = status_kib("VmHWM:");
    let grown_mib = peak.saturating_sub(base) / 1024;
    eprintln!("peak RSS growth: {grown_mib} MiB");
    let s = info.variables[0].stats.unwrap();
    assert_eq!(s.count, 64 << 20);
    assert_eq!(s.min, 0.0);
    assert!((s.max - (63.0 + 2.0 * 1.023)).abs() < 1e-4, "{s:?}");
    assert!(
        grown_mib < 96,
        "peak RSS grew by {grown_mib} MiB while inspecting"
    );
}
