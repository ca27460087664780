//! Quicklook PNGs of real data.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use berth_data::{DataError, IngestOptions, MISSING_COLOUR};
use common::*;

#[test]
fn sst_map_with_missing_land_and_legend() {
    let (dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    add(&lib, "sst", &[src.clone()], IngestOptions::default());
    let png = dir.path().join("sst.png");
    let q = lib
        .render_png("sst", "sst", &[("time".into(), 3)], &png)
        .unwrap();
    assert_eq!(
        (q.row_dim.as_str(), q.col_dim.as_str()),
        ("latitude", "longitude")
    );
    assert_eq!((q.rows, q.cols), (18, 30));
    assert!(q.flipped, "latitude increases: north up");
    assert!(q.legend_text, "a font was found (fonts-dejavu-core)");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (q.width, q.height));

    // Missing cells and value range from xarray.
    let out = py(
        "import sys, numpy as np, xarray as xr\n\
         v = xr.open_dataset(sys.argv[1]).sst.isel(time=3)\n\
         m = np.argwhere(v.isnull().values)[0]\n\
         a = np.unravel_index(int(v.argmax()), v.shape)\n\
         b = np.unravel_index(int(v.argmin()), v.shape)\n\
         print(int(v.isnull().sum()), float(v.min()), float(v.max()), *m, *a, *b)\n",
        &[&src],
    );
    let w: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(q.missing, w[0] as u64);
    assert!(
        (q.min - w[1]).abs() < 1e-12 && (q.max - w[2]).abs() < 1e-12,
        "{q:?} vs {w:?}"
    );
    let pixel = |r: f64, c: f64| {
        let (r, c) = (r as u32, c as u32);
        let ry = if q.flipped { q.rows as u32 - 1 - r } else { r };
        img.get_pixel(
            q.map_x + c * q.cell_px + q.cell_px / 2,
            q.map_y + ry * q.cell_px + q.cell_px / 2,
        )
        .0
    };
    assert_eq!(
        pixel(w[3], w[4]),
        MISSING_COLOUR,
        "a missing cell is light grey"
    );
    let hi = colorous::VIRIDIS.eval_continuous(1.0).as_tuple();
    let lo = colorous::VIRIDIS.eval_continuous(0.0).as_tuple();
    assert_eq!(
        pixel(w[5], w[6]),
        [hi.0, hi.1, hi.2],
        "the maximum is viridis yellow"
    );
    assert_eq!(
        pixel(w[7], w[8]),
        [lo.0, lo.1, lo.2],
        "the minimum is viridis dark blue"
    );
    // The legend has dark text pixels below the colour bar.
    let legend_rows = (q.map_y + q.rows as u32 * q.cell_px + 30)..q.height;
    let dark = legend_rows
        .flat_map(|y| (0..q.width).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(dark > 20, "legend text drawn ({dark} dark pixels)");
}

#[test]
fn bad_selections() {
    let (dir, lib) = library();
    add(
        &lib,
        "hgt",
        &[fixture("hgt_djf.nc")],
        IngestOptions::default(),
    );
    let png = dir.path().join("x.png");
    // z(time, pressure, latitude, longitude): pressure has length 1 and is fixed at 0.
    let q = lib
        .render_png("hgt", "z", &[("time".into(), 0)], &png)
        .unwrap();
    assert_eq!(
        q.at,
        vec![("time".to_string(), 0), ("pressure".to_string(), 0)]
    );
    assert!(matches!(
        lib.render_png("hgt", "nope", &[], &png),
        Err(DataError::UnknownVariable { .. })
    ));
    let e = lib.render_png("hgt", "z", &[], &png).unwrap_err();
    assert!(e.to_string().contains("time=0"), "{e}");
    assert!(matches!(
        lib.render_png("hgt", "z", &[("time".into(), 65)], &png),
        Err(DataError::Render(_))
    ));
    assert!(matches!(
        lib.render_png("hgt", "z", &[("level".into(), 0)], &png),
        Err(DataError::Render(_))
    ));
}
