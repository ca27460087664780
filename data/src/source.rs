//! Sources: NetCDF files and Zarr stores read block by block, and the plan that joins
//! several of them (merge, or concatenation along one dimension).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::dtype::{
    encode_fill_attr, float_fill_json, json_number, netcdf_attr_json, netcdf_attr_number, Dtype,
};
use crate::DataError;

/// One variable of a source, with its attributes already in the Zarr v3 form this library
/// writes (xarray's convention, see `DESIGN.md`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VarMeta {
    pub(crate) name: String,
    pub(crate) dims: Vec<String>,
    pub(crate) shape: Vec<u64>,
    pub(crate) dtype: Dtype,
    pub(crate) attrs: Map<String, Value>,
    /// The Zarr v3 `fill_value` (array metadata).
    pub(crate) fill_value: Value,
}

impl VarMeta {
    pub(crate) fn logical_bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size() as u64
    }
}

/// What a source holds.
#[derive(Debug, Clone)]
pub(crate) struct SourceMeta {
    pub(crate) attrs: Map<String, Value>,
    pub(crate) vars: Vec<VarMeta>,
}

enum Backend {
    NetCdf(netcdf::File),
    Zarr(Arc<zarrs::filesystem::FilesystemStore>),
}

/// An opened source.
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) meta: SourceMeta,
    backend: Backend,
}

impl Source {
    /// Opens a NetCDF file (classic, 64-bit offset or NetCDF-4/HDF5) or a Zarr store directory
    /// (v2 or v3).
    pub(crate) fn open(path: &Path) -> Result<Source, DataError> {
        let md = std::fs::metadata(path)
            .map_err(|e| DataError::io(format!("reading source {}", path.display()), e))?;
        if md.is_dir() {
            open_zarr(path)
        } else {
            open_netcdf(path)
        }
    }

    /// Reads the block `start..start+count` of `var` as native-endian element bytes, row-major.
    pub(crate) fn read(
        &self,
        var: &VarMeta,
        start: &[u64],
        count: &[u64],
    ) -> Result<Vec<u8>, DataError> {
        match &self.backend {
            Backend::NetCdf(file) => {
                let v = file
                    .variable(&var.name)
                    .ok_or_else(|| DataError::UnreadableSource {
                        path: self.path.clone(),
                        reason: format!("variable {:?} disappeared", var.name),
                    })?;
                let ext: Vec<std::ops::Range<usize>> = start
                    .iter()
                    .zip(count)
                    .map(|(&s, &c)| s as usize..(s + c) as usize)
                    .collect();
                v.get_raw_values(ext)
                    .map_err(|e| DataError::UnreadableSource {
                        path: self.path.clone(),
                        reason: format!("reading variable {:?}: {e}", var.name),
                    })
            }
            Backend::Zarr(store) => {
                let array = zarrs::array::Array::open(store.clone(), &format!("/{}", var.name))
                    .map_err(|e| DataError::UnreadableSource {
                        path: self.path.clone(),
                        reason: format!("array {:?}: {e}", var.name),
                    })?;
                let ranges: Vec<std::ops::Range<u64>> =
                    start.iter().zip(count).map(|(&s, &c)| s..s + c).collect();
                let subset = zarrs::array::ArraySubset::new_with_ranges(&ranges);
                let bytes: zarrs::array::ArrayBytes<'static> = array
                    .retrieve_array_subset(&subset)
                    .map_err(|e| DataError::UnreadableSource {
                        path: self.path.clone(),
                        reason: format!("reading array {:?}: {e}", var.name),
                    })?;
                let raw = bytes
                    .into_fixed()
                    .map_err(|e| DataError::UnreadableSource {
                        path: self.path.clone(),
                        reason: format!("array {:?}: {e}", var.name),
                    })?;
                Ok(raw.into_owned())
            }
        }
    }
}

fn nc_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::UnreadableSource {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn open_netcdf(path: &Path) -> Result<Source, DataError> {
    crate::classic::check_truncation(path)?;
    let file = netcdf::open(path).map_err(|e| nc_err(path, e))?;
    if file.groups().map_err(|e| nc_err(path, e))?.next().is_some() {
        return Err(DataError::Unsupported {
            path: path.to_path_buf(),
            what: "a NetCDF-4 file with groups".into(),
        });
    }
    let mut attrs = Map::new();
    for a in file.attributes() {
        let v = a
            .value()
            .map_err(|e| nc_err(path, format!("global attribute {:?}: {e}", a.name())))?;
        attrs.insert(a.name().to_string(), netcdf_attr_json(&v));
    }
    let mut vars = Vec::new();
    for v in file.variables() {
        let name = v.name();
        let vt = v.vartype();
        let dtype = Dtype::from_netcdf(&vt).ok_or_else(|| DataError::Unsupported {
            path: path.to_path_buf(),
            what: format!(
                "variable {name:?} of NetCDF type {vt:?} (only numeric types are converted)"
            ),
        })?;
        let dims: Vec<String> = v.dimensions().iter().map(|d| d.name()).collect();
        let shape: Vec<u64> = v.dimensions().iter().map(|d| d.len() as u64).collect();
        let mut vattrs = Map::new();
        let mut fill_value = dtype.default_fill();
        for a in v.attributes() {
            let val = a
                .value()
                .map_err(|e| nc_err(path, format!("attribute {:?} of {name:?}: {e}", a.name())))?;
            if a.name() == "_FillValue" {
                // CF conventions §2.5.1: `_FillValue` marks missing data. xarray keeps it in the
                // Zarr v3 attributes (encoded) and in the array's `fill_value`.
                if let Some((f, int)) = netcdf_attr_number(&val) {
                    vattrs.insert("_FillValue".into(), encode_fill_attr(dtype, f, int));
                    fill_value = if dtype.is_float() {
                        float_fill_json(f)
                    } else {
                        encode_fill_attr(dtype, f, int)
                    };
                    continue;
                }
            }
            vattrs.insert(a.name().to_string(), netcdf_attr_json(&val));
        }
        vars.push(VarMeta {
            name,
            dims,
            shape,
            dtype,
            attrs: vattrs,
            fill_value,
        });
    }
    Ok(Source {
        path: path.to_path_buf(),
        meta: SourceMeta { attrs, vars },
        backend: Backend::NetCdf(file),
    })
}

fn read_json(path: &Path) -> Result<Value, DataError> {
    let text =
        std::fs::read(path).map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| nc_err(path, format!("not JSON: {e}")))
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    }
}

fn open_zarr(path: &Path) -> Result<Source, DataError> {
    let v3 = path.join("zarr.json").is_file();
    let v2 = path.join(".zgroup").is_file();
    if !v3 && !v2 {
        return Err(nc_err(
            path,
            "a directory without zarr.json (Zarr v3) or .zgroup (Zarr v2) is not a Zarr group",
        ));
    }
    let attrs = if v3 {
        let root = read_json(&path.join("zarr.json"))?;
        if root.get("node_type").and_then(Value::as_str) != Some("group") {
            return Err(DataError::Unsupported {
                path: path.to_path_buf(),
                what: "a Zarr store whose root is not a group".into(),
            });
        }
        obj(root.get("attributes"))
    } else {
        let p = path.join(".zattrs");
        if p.is_file() {
            obj(Some(&read_json(&p)?))
        } else {
            Map::new()
        }
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DataError::io(format!("listing {}", path.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    let mut vars = Vec::new();
    for dir in entries {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let var = if v3 {
            let p = dir.join("zarr.json");
            if !p.is_file() {
                continue;
            }
            let m = read_json(&p)?;
            if m.get("node_type").and_then(Value::as_str) != Some("array") {
                return Err(DataError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("the nested group {name:?}"),
                });
            }
            zarr_v3_var(path, &name, &m)?
        } else {
            let p = dir.join(".zarray");
            if !p.is_file() {
                if dir.join(".zgroup").is_file() {
                    return Err(DataError::Unsupported {
                        path: path.to_path_buf(),
                        what: format!("the nested group {name:?}"),
                    });
                }
                continue;
            }
            let m = read_json(&p)?;
            let za = dir.join(".zattrs");
            let a = if za.is_file() {
                obj(Some(&read_json(&za)?))
            } else {
                Map::new()
            };
            zarr_v2_var(path, &name, &m, a)?
        };
        vars.push(var);
    }
    let store = zarrs::filesystem::FilesystemStore::new(path).map_err(|e| nc_err(path, e))?;
    Ok(Source {
        path: path.to_path_buf(),
        meta: SourceMeta { attrs, vars },
        backend: Backend::Zarr(Arc::new(store)),
    })
}

fn shape_of(path: &Path, name: &str, v: Option<&Value>) -> Result<Vec<u64>, DataError> {
    v.and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| nc_err(path, format!("array {name:?} has no valid shape")))
}

fn zarr_v3_var(path: &Path, name: &str, m: &Value) -> Result<VarMeta, DataError> {
    let shape = shape_of(path, name, m.get("shape"))?;
    let dt = m.get("data_type").and_then(Value::as_str).unwrap_or("?");
    let dtype = Dtype::from_zarr_name(dt).ok_or_else(|| DataError::Unsupported {
        path: path.to_path_buf(),
        what: format!("array {name:?} of data type {dt:?} (only numeric types are converted)"),
    })?;
    let dims: Vec<String> = match m.get("dimension_names") {
        Some(Value::Array(a)) if a.len() == shape.len() => a
            .iter()
            .map(|d| d.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| nc_err(path, format!("array {name:?} has unnamed dimensions")))?,
        _ if shape.is_empty() => Vec::new(),
        _ => {
            return Err(nc_err(
                path,
                format!("array {name:?} has no dimension_names"),
            ))
        }
    };
    let fill_value = m
        .get("fill_value")
        .cloned()
        .unwrap_or_else(|| dtype.default_fill());
    Ok(VarMeta {
        name: name.to_string(),
        dims,
        shape,
        dtype,
        attrs: obj(m.get("attributes")),
        fill_value,
    })
}

fn zarr_v2_var(
    path: &Path,
    name: &str,
    m: &Value,
    mut attrs: Map<String, Value>,
) -> Result<VarMeta, DataError> {
    let shape = shape_of(path, name, m.get("shape"))?;
    let dt = m.get("dtype").and_then(Value::as_str).unwrap_or("?");
    let dtype = Dtype::from_v2_dtype(dt).ok_or_else(|| DataError::Unsupported {
        path: path.to_path_buf(),
        what: format!("array {name:?} of dtype {dt:?} (only numeric types are converted)"),
    })?;
    // xarray's Zarr v2 convention: dimension names in the `_ARRAY_DIMENSIONS` attribute.
    let dims: Vec<String> = match attrs.remove("_ARRAY_DIMENSIONS") {
        Some(Value::Array(a)) if a.len() == shape.len() => a
            .iter()
            .map(|d| d.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| nc_err(path, format!("array {name:?}: bad _ARRAY_DIMENSIONS")))?,
        _ => {
            return Err(nc_err(
                path,
                format!(
                    "array {name:?} has no _ARRAY_DIMENSIONS attribute (not an xarray data set)"
                ),
            ))
        }
    };
    // In Zarr v2 xarray reads the array's fill_value as `_FillValue` (CF missing data); in
    // v3 it reads the `_FillValue` attribute: move it there.
    let fill_value = match m.get("fill_value") {
        None | Some(Value::Null) => dtype.default_fill(),
        Some(v) => {
            let f = json_number(v)
                .ok_or_else(|| nc_err(path, format!("array {name:?}: bad fill_value {v}")))?;
            let int = v
                .as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from));
            attrs.insert("_FillValue".into(), encode_fill_attr(dtype, f, int));
            if dtype.is_float() {
                float_fill_json(f)
            } else {
                encode_fill_attr(dtype, f, int)
            }
        }
    };
    Ok(VarMeta {
        name: name.to_string(),
        dims,
        shape,
        dtype,
        attrs,
        fill_value,
    })
}

/// Where the data of one output variable comes from.
#[derive(Debug, Clone)]
pub(crate) struct PlanVar {
    pub(crate) meta: VarMeta,
    /// `(source index, offset along the concat axis, length)`, in order.
    pub(crate) parts: Vec<(usize, u64, u64)>,
    /// The axis the parts are joined along (concatenation); `None`: one part.
    pub(crate) axis: Option<usize>,
}

/// The joined data set: global attributes and variables, in first-seen order.
pub(crate) struct Plan {
    pub(crate) attrs: Map<String, Value>,
    pub(crate) vars: Vec<PlanVar>,
}

/// Attributes that decode the stored values (CF §2.5.1 missing data, §8.1 packing, §4.4
/// time units and calendar): concatenated pieces must agree on them.
const DECODING_ATTRS: &[&str] = &[
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "units",
    "calendar",
];

/// A decoding attribute of a variable; for `units` and `calendar` of a bounds variable that
/// has none, its parent's (CF conventions §7.1: bounds inherit them).
fn decoding_attr<'a>(src: &'a Source, var: &str, key: &str) -> Option<&'a Value> {
    let v = src.meta.vars.iter().find(|v| v.name == var)?;
    v.attrs.get(key).or_else(|| {
        if key != "units" && key != "calendar" {
            return None;
        }
        src.meta
            .vars
            .iter()
            .find(|p| p.attrs.get("bounds").and_then(Value::as_str) == Some(var))
            .and_then(|p| p.attrs.get(key))
    })
}

/// Block size for comparing variables that must agree, bytes.
const COMPARE_BLOCK: u64 = 8 << 20;

fn digest_var(src: &Source, var: &VarMeta) -> Result<[u8; 32], DataError> {
    let mut h = Sha256::new();
    for (start, count) in blocks(&var.shape, var.dtype.size() as u64, COMPARE_BLOCK) {
        h.update(src.read(var, &start, &count)?);
    }
    Ok(h.finalize().into())
}

/// Blocks of at most about `target` bytes covering the array (the default chunk grid of
/// `ingest::default_chunk_shape`), in row-major order: `(start, count)` each.
pub(crate) fn blocks(shape: &[u64], item: u64, target: u64) -> Vec<(Vec<u64>, Vec<u64>)> {
    if shape.contains(&0) {
        return Vec::new();
    }
    let chunk = crate::ingest::default_chunk_shape(shape, item, target);
    let grid: Vec<u64> = shape
        .iter()
        .zip(&chunk)
        .map(|(n, c)| n.div_ceil(*c))
        .collect();
    let total: u64 = grid.iter().product();
    let mut out = Vec::new();
    for lin in 0..total {
        let mut rest = lin;
        let mut start = vec![0; shape.len()];
        let mut count = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            let i = rest % grid[k];
            rest /= grid[k];
            start[k] = i * chunk[k];
            count[k] = chunk[k].min(shape[k] - start[k]);
        }
        out.push((start, count));
    }
    out
}

fn describe(v: &VarMeta) -> String {
    let dims: Vec<String> = v
        .dims
        .iter()
        .zip(&v.shape)
        .map(|(d, n)| format!("{d}={n}"))
        .collect();
    format!("{} {}({})", v.dtype.zarr_name(), v.name, dims.join(", "))
}

/// Joins the sources. Without `concat`: a merge (the union of the variables; a variable in
/// several sources must be the same there: dims, type, attributes and values). With
/// `concat = Some(dim)`: the sources are concatenated along `dim` in the given order (Pangeo
/// Forge's file pattern); variables without `dim` must be the same in every source.
/// Global attributes and attributes of concatenated variables are taken from the first source
/// (xarray's `combine_attrs="override"`).
pub(crate) fn plan(sources: &[Source], concat: Option<&str>) -> Result<Plan, DataError> {
    let first = sources
        .first()
        .ok_or_else(|| DataError::InvalidOptions("no source given".into()))?;
    let attrs = first.meta.attrs.clone();
    let mut vars: Vec<PlanVar> = Vec::new();
    if let Some(dim) = concat {
        if !sources
            .iter()
            .all(|s| s.meta.vars.iter().any(|v| v.dims.iter().any(|d| d == dim)))
        {
            let missing: Vec<String> = sources
                .iter()
                .filter(|s| !s.meta.vars.iter().any(|v| v.dims.iter().any(|d| d == dim)))
                .map(|s| s.path.display().to_string())
                .collect();
            return Err(DataError::InvalidOptions(format!(
                "concatenation dimension {dim:?} is not a dimension of {}",
                missing.join(", ")
            )));
        }
    }
    for (si, src) in sources.iter().enumerate() {
        for v in &src.meta.vars {
            let axis = concat.and_then(|d| v.dims.iter().position(|x| x == d));
            match vars.iter_mut().find(|p| p.meta.name == v.name) {
                None => {
                    if si > 0 && concat.is_some() {
                        return Err(DataError::Incompatible(format!(
                            "variable {:?} is in {} but not in {}",
                            v.name,
                            src.path.display(),
                            first.path.display()
                        )));
                    }
                    vars.push(PlanVar {
                        meta: v.clone(),
                        parts: vec![(si, 0, axis.map(|a| v.shape[a]).unwrap_or(0))],
                        axis,
                    });
                }
                Some(p) => {
                    let ctx = || {
                        format!(
                            "variable {:?}: {} in {} but {} in {}",
                            v.name,
                            describe(&p.meta),
                            sources[p.parts[0].0].path.display(),
                            describe(v),
                            src.path.display()
                        )
                    };
                    if p.meta.dims != v.dims || p.meta.dtype != v.dtype {
                        return Err(DataError::Incompatible(ctx()));
                    }
                    match axis {
                        Some(a) => {
                            let same_other = p
                                .meta
                                .shape
                                .iter()
                                .zip(&v.shape)
                                .enumerate()
                                .all(|(i, (x, y))| i == a || x == y);
                            if !same_other {
                                return Err(DataError::Incompatible(format!(
                                    "{} (only {:?} may differ)",
                                    ctx(),
                                    concat.unwrap_or_default()
                                )));
                            }
                            // The raw values are joined: what decodes them must agree.
                            let first = &sources[p.parts[0].0];
                            for key in DECODING_ATTRS {
                                let (x, y) = (
                                    decoding_attr(first, &p.meta.name, key),
                                    decoding_attr(src, &v.name, key),
                                );
                                if x != y {
                                    let show = |a: Option<&Value>| {
                                        a.map(Value::to_string).unwrap_or_else(|| "none".into())
                                    };
                                    return Err(DataError::Incompatible(format!(
                                        "variable {:?}: attribute {key} is {} in {} but {} in {} \
                                         (the encoded values cannot be joined)",
                                        v.name,
                                        show(x),
                                        sources[p.parts[0].0].path.display(),
                                        show(y),
                                        src.path.display()
                                    )));
                                }
                            }
                            let off = p.meta.shape[a];
                            p.parts.push((si, off, v.shape[a]));
                            p.meta.shape[a] += v.shape[a];
                        }
                        None => {
                            if p.meta.shape != v.shape {
                                return Err(DataError::Incompatible(ctx()));
                            }
                            if p.meta.attrs != v.attrs || p.meta.fill_value != v.fill_value {
                                return Err(DataError::Incompatible(format!(
                                    "variable {:?} has different attributes in {} and {}",
                                    v.name,
                                    sources[p.parts[0].0].path.display(),
                                    src.path.display()
                                )));
                            }
                            let a = digest_var(&sources[p.parts[0].0], &p.meta)?;
                            let b = digest_var(src, v)?;
                            if a != b {
                                return Err(DataError::Incompatible(format!(
                                    "variable {:?} has different values in {} and {}",
                                    v.name,
                                    sources[p.parts[0].0].path.display(),
                                    src.path.display()
                                )));
                            }
                        }
                    }
                }
            }
        }
        if concat.is_some() && si > 0 {
            for p in &vars {
                if !src.meta.vars.iter().any(|v| v.name == p.meta.name) {
                    return Err(DataError::Incompatible(format!(
                        "variable {:?} is in {} but not in {}",
                        p.meta.name,
                        first.path.display(),
                        src.path.display()
                    )));
                }
            }
        }
    }
    // One dimension, one length.
    let mut lens: Vec<(&str, u64, &str)> = Vec::new();
    for p in &vars {
        for (d, &n) in p.meta.dims.iter().zip(&p.meta.shape) {
            match lens.iter().find(|(x, _, _)| x == d) {
                Some((_, m, other)) if *m != n => {
                    return Err(DataError::Incompatible(format!(
                        "dimension {d:?} has length {m} for {other:?} but {n} for {:?}",
                        p.meta.name
                    )))
                }
                Some(_) => {}
                None => lens.push((d, n, &p.meta.name)),
            }
        }
    }
    Ok(Plan { attrs, vars })
}

impl PlanVar {
    /// Reads `start..start+count` of the joined variable, as native-endian bytes.
    pub(crate) fn read(
        &self,
        sources: &[Source],
        start: &[u64],
        count: &[u64],
    ) -> Result<Vec<u8>, DataError> {
        let Some(a) = self.axis.filter(|_| self.parts.len() > 1) else {
            return sources[self.parts[0].0].read(&self.meta, start, count);
        };
        let item = self.meta.dtype.size() as u64;
        let outer: u64 = count[..a].iter().product();
        let inner: u64 = count[a + 1..].iter().product::<u64>() * item;
        let (lo, hi) = (start[a], start[a] + count[a]);
        let mut pieces = Vec::new();
        for &(si, off, len) in &self.parts {
            let (s, e) = (lo.max(off), hi.min(off + len));
            if s >= e {
                continue;
            }
            let mut st = start.to_vec();
            st[a] = s - off;
            let mut ct = count.to_vec();
            ct[a] = e - s;
            let mut meta = self.meta.clone();
            meta.shape[a] = len;
            pieces.push((e - s, sources[si].read(&meta, &st, &ct)?));
        }
        if pieces.len() == 1 {
            return Ok(pieces.pop().map(|p| p.1).unwrap_or_default());
        }
        let mut out = Vec::with_capacity((outer * count[a] * inner) as usize);
        for o in 0..outer {
            for (n, bytes) in &pieces {
                let row = (n * inner) as usize;
                let o = o as usize;
                out.extend_from_slice(&bytes[o * row..(o + 1) * row]);
            }
        }
        Ok(out)
    }
}
