//! Quicklook PNG rendering of a 2-D slice: viridis colours, missing values in light grey, a
//! legend with the value range and units.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{Rgb, RgbImage};
use serde::Serialize;
use serde_json::Value;

use crate::dtype::CfDecode;
use crate::inspect::{array_meta, array_names, for_each_chunk};
use crate::{DataError, Version};

/// Colour of missing values (CSS `lightgray`).
pub const MISSING_COLOUR: [u8; 3] = [211, 211, 211];

/// Fonts tried for the legend, in order, after `$BERTH_FONT` (Debian `fonts-dejavu-core`).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The layout of a rendered quicklook, to map data cells to pixels (e.g. for a web page that
/// shows the value under the pointer). Data cell `(r, c)` of the slice (`r` along
/// `row_dim`, `c` along `col_dim`) is the `cell_px`×`cell_px` square whose top-left pixel is
/// `(map_x + c*cell_px, map_y + R*cell_px)` with `R = rows-1-r` if `flipped` else `r`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quicklook {
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// Left edge of the map, pixels.
    pub map_x: u32,
    /// Top edge of the map, pixels.
    pub map_y: u32,
    /// Side of one data cell, pixels.
    pub cell_px: u32,
    /// Dimension along the image's rows.
    pub row_dim: String,
    /// Dimension along the image's columns.
    pub col_dim: String,
    /// Number of data rows.
    pub rows: u64,
    /// Number of data columns.
    pub cols: u64,
    /// Rows drawn bottom-up (an increasing latitude/Y coordinate: north is up).
    pub flipped: bool,
    /// The selection fixing the other dimensions (given, plus length-1 dimensions at 0).
    pub at: Vec<(String, usize)>,
    /// Smallest valid (CF-decoded) value: the colour scale's low end (viridis dark blue).
    pub min: f64,
    /// Largest valid value: the colour scale's high end (viridis yellow).
    pub max: f64,
    /// The variable's `units` attribute.
    pub units: Option<String>,
    /// Number of missing cells (drawn in [`MISSING_COLOUR`]).
    pub missing: u64,
    /// Whether the legend text was drawn (a font was found).
    pub legend_text: bool,
}

fn load_font() -> Option<FontVec> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("BERTH_FONT") {
        candidates.push(f.into());
    }
    candidates.extend(FONTS.iter().map(PathBuf::from));
    candidates.into_iter().find_map(|p| {
        std::fs::read(p)
            .ok()
            .and_then(|b| FontVec::try_from_vec(b).ok())
    })
}

fn draw_text(
    img: &mut RgbImage,
    font: &FontVec,
    px: f32,
    x: f32,
    baseline: f32,
    text: &str,
) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    let mut pen = x;
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        let glyph = id.with_scale_and_position(px, ab_glyph::point(pen, baseline));
        pen += scaled.h_advance(id);
        if let Some(og) = font.outline_glyph(glyph) {
            let b = og.px_bounds();
            og.draw(|gx, gy, cov| {
                let x = b.min.x as i64 + i64::from(gx);
                let y = b.min.y as i64 + i64::from(gy);
                if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                    let p = img.get_pixel_mut(x as u32, y as u32);
                    for k in 0..3 {
                        p.0[k] = (f32::from(p.0[k]) * (1.0 - cov)) as u8;
                    }
                }
            });
        }
    }
    pen - x
}

fn text_width(font: &FontVec, px: f32, text: &str) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    text.chars()
        .map(|c| scaled.h_advance(font.glyph_id(c)))
        .sum()
}

fn fmt_value(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub(crate) fn render(
    v: &Version,
    spec: &str,
    var: &str,
    at: &[(String, usize)],
    path: &Path,
) -> Result<Quicklook, DataError> {
    let _span = tracing::info_span!("quicklook", spec, var).entered();
    if !array_names(&v.path)?.iter().any(|n| n == var) {
        return Err(DataError::UnknownVariable {
            spec: spec.to_string(),
            var: var.to_string(),
        });
    }
    let meta = array_meta(&v.path, var)?;
    for (d, i) in at {
        let Some(k) = meta.dims.iter().position(|x| x == d) else {
            return Err(DataError::Render(format!(
                "{var} has no dimension {d:?} (its dimensions: {})",
                meta.dims.join(", ")
            )));
        };
        if *i as u64 >= meta.shape[k] {
            return Err(DataError::Render(format!(
                "index {i} is out of range for dimension {d:?} of length {}",
                meta.shape[k]
            )));
        }
    }
    let mut sel: Vec<(String, usize)> = at.to_vec();
    let mut free: Vec<usize> = (0..meta.dims.len())
        .filter(|&k| !at.iter().any(|(d, _)| *d == meta.dims[k]))
        .collect();
    if free.len() > 2 {
        // Length-1 dimensions (a single level, say) are fixed at 0.
        let ones: Vec<usize> = free
            .iter()
            .copied()
            .filter(|&k| meta.shape[k] == 1)
            .collect();
        for k in ones {
            if free.len() > 2 {
                sel.push((meta.dims[k].clone(), 0));
                free.retain(|&x| x != k);
            }
        }
    }
    if free.len() != 2 {
        return Err(DataError::Render(format!(
            "{var}({}) with {} fixed leaves {} dimensions; fix all but two (e.g. {}=0)",
            meta.dims.join(", "),
            if at.is_empty() {
                "nothing".to_string()
            } else {
                at.iter()
                    .map(|(d, i)| format!("{d}={i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            free.len(),
            meta.dims.first().map(String::as_str).unwrap_or("time")
        )));
    }
    let (rk, ck) = (free[0], free[1]);
    let (rows, cols) = (meta.shape[rk], meta.shape[ck]);
    if rows == 0 || cols == 0 {
        return Err(DataError::Render(format!("{var} has an empty slice")));
    }
    let ranges: Vec<std::ops::Range<u64>> = (0..meta.dims.len())
        .map(|k| match sel.iter().find(|(d, _)| *d == meta.dims[k]) {
            Some((_, i)) => *i as u64..*i as u64 + 1,
            None => 0..meta.shape[k],
        })
        .collect();
    let store = Arc::new(
        zarrs::filesystem::FilesystemStore::new(&v.path).map_err(|e| DataError::zarr("/", e))?,
    );
    let array = zarrs::array::Array::open(store.clone(), &format!("/{var}"))
        .map_err(|e| DataError::zarr(var, e))?;
    let bytes: zarrs::array::ArrayBytes<'static> = array
        .retrieve_array_subset(&zarrs::array::ArraySubset::new_with_ranges(&ranges))
        .map_err(|e| DataError::zarr(var, e))?;
    let raw = bytes.into_fixed().map_err(|e| DataError::zarr(var, e))?;
    let cf = CfDecode::from_attrs(&meta.attrs);
    // Row-major over the selection: the free dims keep their order (rk < ck).
    let values: Vec<Option<f64>> = meta
        .dtype
        .to_f64(&raw)
        .into_iter()
        .map(|x| cf.decode(x))
        .collect();
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in values.iter().flatten() {
        min = min.min(*x);
        max = max.max(*x);
    }
    if !min.is_finite() || !max.is_finite() {
        return Err(DataError::Render(format!(
            "{var}: no valid value in the slice"
        )));
    }
    let missing = values.iter().filter(|x| x.is_none()).count() as u64;

    // North up: flip when the row coordinate is an increasing latitude / Y axis.
    let row_dim = meta.dims[rk].clone();
    let mut flipped = false;
    if let Ok(cm) = array_meta(&v.path, &row_dim) {
        let is_y = cm.attrs.get("axis").and_then(Value::as_str) == Some("Y")
            || cm.attrs.get("standard_name").and_then(Value::as_str) == Some("latitude")
            || cm
                .attrs
                .get("units")
                .and_then(Value::as_str)
                .is_some_and(|u| u.starts_with("degrees_north"));
        if is_y && cm.shape.len() == 1 {
            let mut coord = Vec::new();
            for_each_chunk(&store, &cm, |a| coord.extend(a.iter().copied()))?;
            flipped = coord.len() > 1 && coord.windows(2).all(|w| w[0] < w[1]);
        }
    }

    let cell = (600 / cols.max(1))
        .clamp(1, 16)
        .min((900 / rows.max(1)).max(1)) as u32;
    let margin = 10u32;
    let title_h = 28u32;
    let map_w = cols as u32 * cell;
    let map_h = rows as u32 * cell;
    let width = margin * 2 + map_w.max(320);
    let bar_y = margin + title_h + map_h + 10;
    let bar_h = 16u32;
    let height = bar_y + bar_h + 22 + margin;
    let (map_x, map_y) = (margin, margin + title_h);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let span = if max > min { max - min } else { 1.0 };
    let colour = |x: f64| {
        let t = if max > min { (x - min) / span } else { 0.5 };
        let (r, g, b) = colorous::VIRIDIS
            .eval_continuous(t.clamp(0.0, 1.0))
            .as_tuple();
        Rgb([r, g, b])
    };
    for r in 0..rows {
        let ry = if flipped { rows - 1 - r } else { r };
        for c in 0..cols {
            let px = match values[(r * cols + c) as usize] {
                Some(x) => colour(x),
                None => Rgb(MISSING_COLOUR),
            };
            for dy in 0..cell {
                for dx in 0..cell {
                    img.put_pixel(
                        map_x + c as u32 * cell + dx,
                        map_y + ry as u32 * cell + dy,
                        px,
                    );
                }
            }
        }
    }
    // Colour bar.
    let bar_w = width - 2 * margin;
    for x in 0..bar_w {
        let t = f64::from(x) / f64::from((bar_w - 1).max(1));
        let (r, g, b) = colorous::VIRIDIS.eval_continuous(t).as_tuple();
        for y in 0..bar_h {
            img.put_pixel(margin + x, bar_y + y, Rgb([r, g, b]));
        }
    }
    let units = meta
        .attrs
        .get("units")
        .and_then(Value::as_str)
        .map(str::to_string);
    let font = load_font();
    if let Some(font) = &font {
        let long = meta
            .attrs
            .get("long_name")
            .and_then(Value::as_str)
            .unwrap_or(var);
        let title = match &units {
            Some(u) => format!("{long} [{u}]"),
            None => long.to_string(),
        };
        draw_text(
            &mut img,
            font,
            15.0,
            margin as f32,
            (margin + 13) as f32,
            &title,
        );
        let sub = format!(
            "{}@{}  {}{}",
            v.name,
            &v.id()[..12],
            sel.iter()
                .map(|(d, i)| format!("{d}={i} "))
                .collect::<String>(),
            if missing > 0 { "  grey: missing" } else { "" }
        );
        draw_text(
            &mut img,
            font,
            11.0,
            margin as f32,
            (margin + 26) as f32,
            &sub,
        );
        let lo = fmt_value(min);
        let hi = fmt_value(max);
        let label_y = (bar_y + bar_h + 14) as f32;
        draw_text(&mut img, font, 12.0, margin as f32, label_y, &lo);
        let w = text_width(font, 12.0, &hi);
        draw_text(
            &mut img,
            font,
            12.0,
            (width - margin) as f32 - w,
            label_y,
            &hi,
        );
        if let Some(u) = &units {
            let w = text_width(font, 12.0, u);
            draw_text(&mut img, font, 12.0, (width as f32 - w) / 2.0, label_y, u);
        }
    } else {
        tracing::warn!(
            "no font found (install fonts-dejavu-core or set BERTH_FONT): legend without text"
        );
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| match e {
            image::ImageError::IoError(io) => {
                DataError::io(format!("writing {}", path.display()), io)
            }
            other => DataError::Render(format!("encoding {}: {other}", path.display())),
        })?;
    Ok(Quicklook {
        width,
        height,
        map_x,
        map_y,
        cell_px: cell,
        row_dim,
        col_dim: meta.dims[ck].clone(),
        rows,
        cols,
        flipped,
        at: sel,
        min,
        max,
        units,
        missing,
        legend_text: font.is_some(),
    })
}
