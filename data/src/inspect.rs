//! Describing a stored version, with per-variable statistics read chunk by chunk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::dtype::{CfDecode, Dtype};
use crate::{DataError, Version};

/// Statistics of a variable's valid values (CF-decoded: `_FillValue`, `missing_value` and NaN
/// left out; `scale_factor` and `add_offset` applied), in the variable's units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// Smallest valid value.
    pub min: f64,
    /// Mean of the valid values.
    pub mean: f64,
    /// Largest valid value.
    pub max: f64,
    /// Number of valid values.
    pub count: u64,
    /// Number of missing values.
    pub missing: u64,
}

/// One variable (Zarr array) of a version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariableInfo {
    /// Variable name (the array's key in the store).
    pub name: String,
    /// Dimension names (Zarr v3 `dimension_names`), empty for a scalar.
    pub dims: Vec<String>,
    /// Shape, elements per dimension.
    pub shape: Vec<u64>,
    /// Zarr v3 data type (`float64`, `int16`, ...).
    pub dtype: String,
    /// Chunk shape, elements per dimension.
    pub chunk_shape: Vec<u64>,
    /// Codec names in order (`bytes`, `zstd`).
    pub codecs: Vec<String>,
    /// The array's Zarr `fill_value`.
    pub fill_value: Value,
    /// Attributes (CF attributes in xarray's Zarr v3 convention).
    pub attributes: Map<String, Value>,
    /// Size of the array's files, bytes.
    pub stored_bytes: u64,
    /// Uncompressed size, bytes.
    pub logical_bytes: u64,
    /// Statistics; `None` if no value is valid (or the array is empty).
    pub stats: Option<Stats>,
}

/// The description of a version given by [`crate::Library::inspect`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// Data set name.
    pub name: String,
    /// Version id.
    pub version: String,
    /// Store directory.
    pub path: PathBuf,
    /// Global attributes (the root group's attributes).
    pub attributes: Map<String, Value>,
    /// Dimensions and their lengths, sorted by name.
    pub dimensions: Vec<(String, u64)>,
    /// Variables, sorted by name.
    pub variables: Vec<VariableInfo>,
    /// Size of the store's files, bytes.
    pub stored_bytes: u64,
    /// Uncompressed size of all variables, bytes.
    pub logical_bytes: u64,
}

pub(crate) fn read_json(path: &Path) -> Result<Value, DataError> {
    let b =
        std::fs::read(path).map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&b).map_err(|e| DataError::Metadata {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Metadata of one array of a store written by this library.
pub(crate) struct ArrayMeta {
    pub(crate) name: String,
    pub(crate) dims: Vec<String>,
    pub(crate) shape: Vec<u64>,
    pub(crate) dtype: Dtype,
    pub(crate) chunk: Vec<u64>,
    pub(crate) codecs: Vec<String>,
    pub(crate) fill_value: Value,
    pub(crate) attrs: Map<String, Value>,
}

fn u64s(v: Option<&Value>) -> Option<Vec<u64>> {
    v?.as_array()?.iter().map(Value::as_u64).collect()
}

pub(crate) fn array_meta(store: &Path, name: &str) -> Result<ArrayMeta, DataError> {
    let p = store.join(name).join("zarr.json");
    let m = read_json(&p)?;
    let bad = |what: &str| DataError::Metadata {
        path: p.clone(),
        message: format!("bad or missing {what}"),
    };
    let shape = u64s(m.get("shape")).ok_or_else(|| bad("shape"))?;
    let dtype = m
        .get("data_type")
        .and_then(Value::as_str)
        .and_then(Dtype::from_zarr_name)
        .ok_or_else(|| bad("data_type"))?;
    let chunk = u64s(m.pointer("/chunk_grid/configuration/chunk_shape"))
        .ok_or_else(|| bad("chunk_shape"))?;
    let dims = match m.get("dimension_names") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| d.as_str().unwrap_or("").to_string())
            .collect(),
        _ => Vec::new(),
    };
    let codecs = m
        .get("codecs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let attrs = match m.get("attributes") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    Ok(ArrayMeta {
        name: name.to_string(),
        dims,
        shape,
        dtype,
        chunk,
        codecs,
        fill_value: m.get("fill_value").cloned().unwrap_or(Value::Null),
        attrs,
    })
}

/// The array names of a store (sub-directories with a `zarr.json`), sorted.
pub(crate) fn array_names(store: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(store)
        .map_err(|e| DataError::io(format!("listing {}", store.display()), e))?
    {
        let e = e.map_err(|e| DataError::io(format!("listing {}", store.display()), e))?;
        if e.path().join("zarr.json").is_file() {
            names.push(e.file_name().to_string_lossy().to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads the in-bounds part of each chunk of an array and folds it.
pub(crate) fn for_each_chunk(
    store: &Arc<zarrs::filesystem::FilesystemStore>,
    meta: &ArrayMeta,
    mut f: impl FnMut(ndarray::ArrayD<f64>),
) -> Result<(), DataError> {
    let array = zarrs::array::Array::open(store.clone(), &format!("/{}", meta.name))
        .map_err(|e| DataError::zarr(&meta.name, e))?;
    for idx in crate::chunk_indices(&meta.shape, &meta.chunk) {
        let subset = array
            .chunk_subset_bounded(&idx)
            .map_err(|e| DataError::zarr(&meta.name, e))?;
        let bytes: zarrs::array::ArrayBytes<'static> = array
            .retrieve_array_subset(&subset)
            .map_err(|e| DataError::zarr(&meta.name, e))?;
        let raw = bytes
            .into_fixed()
            .map_err(|e| DataError::zarr(&meta.name, e))?;
        let shape: Vec<usize> = subset.shape().iter().map(|&n| n as usize).collect();
        let values = meta.dtype.to_f64(&raw);
        let a = ndarray::ArrayD::from_shape_vec(shape, values)
            .map_err(|e| DataError::zarr(&meta.name, e))?;
        f(a);
    }
    Ok(())
}

fn stats(
    store: &Arc<zarrs::filesystem::FilesystemStore>,
    meta: &ArrayMeta,
) -> Result<Option<Stats>, DataError> {
    let cf = CfDecode::from_attrs(&meta.attrs);
    let (mut min, mut max, mut sum, mut count, mut missing) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0u64, 0u64);
    for_each_chunk(store, meta, |a| {
        for &raw in a.iter() {
            match cf.decode(raw) {
                Some(x) => {
                    min = min.min(x);
                    max = max.max(x);
                    sum += x;
                    count += 1;
                }
                None => missing += 1,
            }
        }
    })?;
    Ok((count > 0).then(|| Stats {
        min,
        mean: sum / count as f64,
        max,
        count,
        missing,
    }))
}

pub(crate) fn inspect(v: &Version) -> Result<Inspection, DataError> {
    let root = read_json(&v.path.join("zarr.json"))?;
    let attributes = match root.get("attributes") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let store = Arc::new(
        zarrs::filesystem::FilesystemStore::new(&v.path).map_err(|e| DataError::zarr("/", e))?,
    );
    let mut variables = Vec::new();
    let mut dimensions: Vec<(String, u64)> = Vec::new();
    for name in array_names(&v.path)? {
        let m = array_meta(&v.path, &name)?;
        for (d, &n) in m.dims.iter().zip(&m.shape) {
            if !dimensions.iter().any(|(x, _)| x == d) {
                dimensions.push((d.clone(), n));
            }
        }
        let st = stats(&store, &m)?;
        variables.push(VariableInfo {
            stored_bytes: crate::dir_size(&v.path.join(&name))?,
            logical_bytes: m.shape.iter().product::<u64>() * m.dtype.size() as u64,
            name,
            dims: m.dims,
            shape: m.shape,
            dtype: m.dtype.zarr_name().to_string(),
            chunk_shape: m.chunk,
            codecs: m.codecs,
            fill_value: m.fill_value,
            attributes: m.attrs,
            stats: st,
        });
    }
    dimensions.sort();
    Ok(Inspection {
        name: v.name.clone(),
        version: v.id().to_string(),
        path: v.path.clone(),
        attributes,
        dimensions,
        logical_bytes: variables.iter().map(|x| x.logical_bytes).sum(),
        stored_bytes: crate::dir_size(&v.path)?,
        variables,
    })
}
