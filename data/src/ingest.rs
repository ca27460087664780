//! Writing a joined data set as a Zarr v3 store, chunk by chunk, in parallel.

use std::path::Path;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::dtype::{json_number, Dtype};
use crate::source::{Plan, PlanVar, Source};
use crate::{Codec, DataError, IngestOptions, IngestProgress};

/// Default chunk size target along the leading dimension, bytes (4 MiB; a chunk is between
/// one leading-dimension row and about this size, unless a row alone is larger).
pub(crate) const TARGET_CHUNK_BYTES: u64 = 4 << 20;

/// The chunk shape of a variable. Default rule: whole extent on every dimension except the
/// leading one, which gets as many indices as fit in [`TARGET_CHUNK_BYTES`] (at least one).
/// If one index of the leading dimension alone is larger than that, the leading dimension's
/// chunk is 1 and the rule applies to the next dimension, and so on, so a default chunk is
/// never much larger than the target (bounded memory). Then `overrides` by dimension name.
/// Every entry is at least 1 and at most the dimension's length (Zarr chunk shapes are
/// positive; a zero-length dimension gets 1).
pub(crate) fn chunk_shape(var: &PlanVar, overrides: &[(String, u64)]) -> Vec<u64> {
    let mut chunk = default_chunk_shape(
        &var.meta.shape,
        var.meta.dtype.size() as u64,
        TARGET_CHUNK_BYTES,
    );
    let shape = &var.meta.shape;
    for (i, d) in var.meta.dims.iter().enumerate() {
        if let Some((_, n)) = overrides.iter().find(|(name, _)| name == d) {
            chunk[i] = (*n).clamp(1, shape[i].max(1));
        }
    }
    chunk
}

pub(crate) fn default_chunk_shape(shape: &[u64], item: u64, target: u64) -> Vec<u64> {
    let mut chunk: Vec<u64> = shape.iter().map(|&n| n.max(1)).collect();
    for k in 0..shape.len() {
        let inner: u64 = chunk[k + 1..].iter().product::<u64>().saturating_mul(item);
        if inner <= target || k + 1 == shape.len() {
            chunk[k] = (target / inner.max(1)).clamp(1, chunk[k]);
            break;
        }
        chunk[k] = 1;
    }
    chunk
}

/// Checks `--chunks`: every named dimension exists in the data set, every size is positive.
pub(crate) fn check_chunks(plan: &Plan, overrides: &[(String, u64)]) -> Result<(), DataError> {
    for (d, n) in overrides {
        if *n == 0 {
            return Err(DataError::InvalidOptions(format!(
                "chunk size 0 for dimension {d:?} (chunk sizes are positive)"
            )));
        }
        if !plan.vars.iter().any(|v| v.meta.dims.iter().any(|x| x == d)) {
            let mut dims: Vec<&str> = plan
                .vars
                .iter()
                .flat_map(|v| v.meta.dims.iter().map(String::as_str))
                .collect();
            dims.sort_unstable();
            dims.dedup();
            return Err(DataError::InvalidOptions(format!(
                "chunks for unknown dimension {d:?} (the dimensions are {})",
                dims.join(", ")
            )));
        }
    }
    Ok(())
}

fn codecs_json(dtype: Dtype, codec: Codec) -> Value {
    let bytes = if dtype.size() == 1 {
        json!({"name": "bytes"})
    } else {
        json!({"name": "bytes", "configuration": {"endian": "little"}})
    };
    match codec {
        Codec::Zstd { level } => {
            json!([bytes, {"name": "zstd", "configuration": {"level": level, "checksum": false}}])
        }
        Codec::Gzip { level } => {
            json!([bytes, {"name": "gzip", "configuration": {"level": level}}])
        }
        Codec::None => json!([bytes]),
    }
}

/// The Zarr v3 array metadata document (`zarr.json`) of a variable.
fn array_metadata(var: &PlanVar, chunk: &[u64], codec: Codec) -> Value {
    let m = &var.meta;
    let mut doc = Map::new();
    doc.insert("zarr_format".into(), json!(3));
    doc.insert("node_type".into(), json!("array"));
    doc.insert("shape".into(), json!(m.shape));
    doc.insert("data_type".into(), json!(m.dtype.zarr_name()));
    doc.insert(
        "chunk_grid".into(),
        json!({"name": "regular", "configuration": {"chunk_shape": chunk}}),
    );
    doc.insert(
        "chunk_key_encoding".into(),
        json!({"name": "default", "configuration": {"separator": "/"}}),
    );
    doc.insert("fill_value".into(), m.fill_value.clone());
    doc.insert("codecs".into(), codecs_json(m.dtype, codec));
    doc.insert("attributes".into(), Value::Object(m.attrs.clone()));
    if !m.dims.is_empty() {
        doc.insert("dimension_names".into(), json!(m.dims));
    }
    Value::Object(doc)
}

/// The native-endian bytes of the fill value (pads edge chunks).
fn fill_bytes(dtype: Dtype, fill: &Value) -> Vec<u8> {
    let f = json_number(fill).unwrap_or(0.0);
    let i = fill.as_i64();
    let u = fill.as_u64();
    match dtype {
        Dtype::F32 => (f as f32).to_ne_bytes().to_vec(),
        Dtype::F64 => f.to_ne_bytes().to_vec(),
        Dtype::I8 => (i.unwrap_or(0) as i8).to_ne_bytes().to_vec(),
        Dtype::U8 => (u.unwrap_or(0) as u8).to_ne_bytes().to_vec(),
        Dtype::I16 => (i.unwrap_or(0) as i16).to_ne_bytes().to_vec(),
        Dtype::U16 => (u.unwrap_or(0) as u16).to_ne_bytes().to_vec(),
        Dtype::I32 => (i.unwrap_or(0) as i32).to_ne_bytes().to_vec(),
        Dtype::U32 => (u.unwrap_or(0) as u32).to_ne_bytes().to_vec(),
        Dtype::I64 => i.unwrap_or(0).to_ne_bytes().to_vec(),
        Dtype::U64 => u.unwrap_or(0).to_ne_bytes().to_vec(),
    }
}

/// Copies a row-major block of shape `count` into a full chunk of shape `chunk` (origin at
/// the chunk's origin), the rest being `fill`.
fn pad(block: &[u8], count: &[u64], chunk: &[u64], fill: &[u8]) -> Vec<u8> {
    let item = fill.len();
    let n: u64 = chunk.iter().product();
    let mut out = fill.repeat(n as usize);
    if count.is_empty() {
        return block.to_vec();
    }
    let d = count.len();
    let row = count[d - 1] as usize * item;
    let rows: u64 = count[..d - 1].iter().product();
    let mut idx = vec![0u64; d - 1];
    for r in 0..rows as usize {
        // Offset of this row in the chunk.
        let mut off = 0u64;
        for k in 0..d - 1 {
            off = off * chunk[k] + idx[k];
        }
        let off = (off * chunk[d - 1]) as usize * item;
        out[off..off + row].copy_from_slice(&block[r * row..(r + 1) * row]);
        for k in (0..d - 1).rev() {
            idx[k] += 1;
            if idx[k] < count[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

fn write_json(path: &Path, v: &Value) -> Result<(), DataError> {
    let mut text = serde_json::to_vec_pretty(v).map_err(|e| DataError::Metadata {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push(b'\n');
    std::fs::write(path, text).map_err(|e| DataError::io(format!("writing {}", path.display()), e))
}

struct Task {
    var: usize,
    index: Vec<u64>,
    data: Vec<u8>,
    logical: u64,
}

/// Writes the store into the empty directory `dir`. Returns the logical (uncompressed) size
/// of all variables, bytes.
pub(crate) fn write_store(
    dir: &Path,
    sources: &[Source],
    plan: &Plan,
    opts: &IngestOptions,
    progress: &dyn Fn(IngestProgress),
) -> Result<u64, DataError> {
    let store = Arc::new(
        zarrs::filesystem::FilesystemStore::new(dir).map_err(|e| DataError::zarr("/", e))?,
    );
    let mut arrays = Vec::new();
    let mut chunks = Vec::new();
    let mut consolidated = Map::new();
    for v in &plan.vars {
        let chunk = chunk_shape(v, &opts.chunks);
        let vdir = dir.join(&v.meta.name);
        std::fs::create_dir(&vdir)
            .map_err(|e| DataError::io(format!("creating {}", vdir.display()), e))?;
        let doc = array_metadata(v, &chunk, opts.codec);
        write_json(&vdir.join("zarr.json"), &doc)?;
        consolidated.insert(v.meta.name.clone(), doc);
        let array = zarrs::array::Array::open(store.clone(), &format!("/{}", v.meta.name))
            .map_err(|e| DataError::zarr(&v.meta.name, e))?;
        arrays.push(array);
        chunks.push(chunk);
    }
    // The group, with zarr-python's inline consolidated metadata (not in the Zarr v3 spec;
    // `must_understand: false`, so other readers ignore it): `xr.open_zarr(store)` opens it
    // with one read and without a warning.
    write_json(
        &dir.join("zarr.json"),
        &json!({
            "zarr_format": 3,
            "node_type": "group",
            "attributes": plan.attrs,
            "consolidated_metadata": {
                "kind": "inline",
                "must_understand": false,
                "metadata": consolidated,
            },
        }),
    )?;
    // Every chunk of every variable, in order.
    let mut jobs: Vec<(usize, Vec<u64>)> = Vec::new();
    for (vi, v) in plan.vars.iter().enumerate() {
        for idx in crate::chunk_indices(&v.meta.shape, &chunks[vi]) {
            jobs.push((vi, idx));
        }
    }
    let bytes_total: u64 = plan.vars.iter().map(|v| v.meta.logical_bytes()).sum();
    let mut state = IngestProgress {
        bytes_done: 0,
        bytes_total,
        chunks_done: 0,
        chunks_total: jobs.len() as u64,
    };
    progress(state);

    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (task_tx, task_rx) = sync_channel::<Task>(workers * 2);
    let task_rx = Mutex::new(task_rx);
    let (done_tx, done_rx) = channel::<Result<u64, DataError>>();
    let arrays = &arrays;
    let plan_vars = &plan.vars;
    let mut first_error: Option<DataError> = None;
    std::thread::scope(|s| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let task_rx = &task_rx;
            s.spawn(move || loop {
                let task = match task_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok(task) = task else { break };
                let array = &arrays[task.var];
                let r = array
                    .store_chunk(&task.index, zarrs::array::ArrayBytes::new_flen(task.data))
                    .map(|()| task.logical)
                    .map_err(|e| DataError::zarr(&plan_vars[task.var].meta.name, e));
                if done_tx.send(r).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let handle = |r: Result<u64, DataError>,
                      state: &mut IngestProgress,
                      err: &mut Option<DataError>| match r {
            Ok(n) => {
                state.bytes_done += n;
                state.chunks_done += 1;
                progress(*state);
            }
            Err(e) => {
                if err.is_none() {
                    *err = Some(e);
                }
            }
        };
        for (vi, index) in &jobs {
            for r in done_rx.try_iter() {
                handle(r, &mut state, &mut first_error);
            }
            if first_error.is_some() {
                break;
            }
            let v = &plan.vars[*vi];
            let chunk = &chunks[*vi];
            let start: Vec<u64> = index.iter().zip(chunk).map(|(i, c)| i * c).collect();
            let count: Vec<u64> = start
                .iter()
                .zip(chunk)
                .zip(&v.meta.shape)
                .map(|((s, c), n)| (*c).min(n - s))
                .collect();
            let block = match v.read(sources, &start, &count) {
                Ok(b) => b,
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            };
            let logical = block.len() as u64;
            let data = if count == *chunk {
                block
            } else {
                pad(
                    &block,
                    &count,
                    chunk,
                    &fill_bytes(v.meta.dtype, &v.meta.fill_value),
                )
            };
            if task_tx
                .send(Task {
                    var: *vi,
                    index: index.clone(),
                    data,
                    logical,
                })
                .is_err()
            {
                break;
            }
        }
        drop(task_tx);
        for r in done_rx.iter() {
            handle(r, &mut state, &mut first_error);
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(bytes_total)
}

#[cfg(test)]
mod tests {
    use super::{default_chunk_shape, pad};

    #[test]
    fn default_chunks() {
        let mib = 1 << 20;
        // Small: one chunk.
        assert_eq!(
            default_chunk_shape(&[50, 18, 30], 8, 4 * mib),
            vec![50, 18, 30]
        );
        // Leading dimension split: a 1000 x 1000 f32 row is 4 MB, one fits in 4 MiB; 2 MB rows: 2.
        assert_eq!(
            default_chunk_shape(&[100, 1000, 1000], 4, 4 * mib),
            vec![1, 1000, 1000]
        );
        assert_eq!(
            default_chunk_shape(&[100, 500, 1000], 4, 4 * mib),
            vec![2, 500, 1000]
        );
        // One leading index too large: the next dimension is split too.
        assert_eq!(
            default_chunk_shape(&[3, 20000, 20000], 8, 4 * mib),
            vec![1, 26, 20000]
        );
        // Even one row of the last dimension too large: split the last dimension.
        assert_eq!(
            default_chunk_shape(&[2, 10_000_000], 8, 4 * mib),
            vec![1, 524288]
        );
        // Scalars and empty dimensions.
        assert_eq!(default_chunk_shape(&[], 8, 4 * mib), Vec::<u64>::new());
        assert_eq!(default_chunk_shape(&[0, 5], 8, 4 * mib), vec![1, 5]);
    }

    #[test]
    fn pad_places_rows() {
        // 2x2 block of u8 into a 3x3 chunk filled with 9.
        let out = pad(&[1, 2, 3, 4], &[2, 2], &[3, 3], &[9]);
        assert_eq!(out, vec![1, 2, 9, 3, 4, 9, 9, 9, 9]);
        let out = pad(&[1, 2], &[1, 2], &[2, 3], &[0]);
        assert_eq!(out, vec![1, 2, 0, 0, 0, 0]);
    }
}
