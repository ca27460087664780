//! `/data`: the data library ([`berth_data::Library`] at [`crate::Config::data_root`]) over
//! HTTP, read-only.
//!
//! * `GET /data`: an HTML catalog (name, newest version, variables, size of each data set);
//!   `GET /data/<spec>`: a data set's page (variables with dimensions, shapes, types, units;
//!   attributes; versions; quicklooks), where `<spec>` is `NAME` (the newest version) or
//!   `NAME@<hex prefix>` as in [`berth_data::Library::resolve`];
//!   `GET /data/<spec>/quicklook/<VAR>.png`: the first 2-D slice of a variable (every
//!   dimension but the last two at index 0) drawn by [`berth_data::Library::render_png`],
//!   kept in memory per version and variable.
//! * A STAC 1.0 catalog: `GET /data/catalog.json` (a Catalog with one `child` link per data
//!   set) and `GET /data/<spec>/collection.json` (a Collection with the datacube extension
//!   v2.2.0's `cube:dimensions` and `cube:variables`, spatial and temporal extents, and a
//!   `zarr` asset: the version's store over HTTP, `application/vnd+zarr`, roles `["data"]`).
//!   URLs in them are absolute: the configured `public_url`, else `http://` and the request's
//!   `Host`.
//! * The stores: `GET`/`HEAD /data/zarr/<spec>/<key>`, one file of the version's Zarr v3 store
//!   per key (Zarr v3 spec, "stores": `zarr.json`, `sst/zarr.json`, `sst/c/0/0/0`). A
//!   directory key (the store itself included) answers an HTML listing of links, which
//!   fsspec's `HTTPFileSystem` reads to list a directory (zarr-python's `list_dir`, needed by
//!   `xr.open_zarr(url, consolidated=False)`). Files are served by tower-http's `ServeFile`
//!   (byte ranges, RFC 9110 §14: one range → 206 with `Content-Range`, an unsatisfiable one
//!   → 416); this module adds the validators: a strong `ETag` made of the version id and the
//!   key (so equal across `NAME` and `NAME@…`, and across servers), `If-None-Match` → 304,
//!   `If-Match` → 412, `If-Range` honoured (RFC 9110 §13). `NAME@…` responses are
//!   `Cache-Control: public, max-age=31536000, immutable` (a version never changes);
//!   `NAME` responses `no-cache` (the newest version may change: revalidate with the ETag).
//!   Unknown names, versions and keys are 404 (Zarr readers take 404 as a missing key). A key
//!   segment that is empty, `.`, `..`, or decodes to something holding `/`, `\` or NUL is
//!   refused (400); symbolic links in a store are never followed (404), so nothing outside
//!   the version's directory can be read.
//!
//! Who may read: everyone who can reach the server, like the launch form; berth's server has
//! no user accounts (only the session tokens of the proxy), so an operator who does not want
//! a library published points `data_dir` at an empty folder or keeps the server on loopback
//! (the default `listen`). Responses carry `Access-Control-Allow-Origin: *` so browser-based
//! Zarr and STAC readers can use them (no cookies are involved).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth_data::{DataError, Inspection, Library, Version};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use crate::{AppState, WebError};

/// The STAC datacube extension's schema (version 2.2.0), as listed in `stac_extensions`.
pub const DATACUBE_SCHEMA: &str = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json";

/// The media type of a Zarr store asset (STAC best practices, "Common media types").
pub const ZARR_MEDIA_TYPE: &str = "application/vnd+zarr";

/// `Cache-Control` of everything under `NAME@<prefix>`: one year, never revalidated.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

const INDEX_HTML: &str = include_str!("../templates/data_index.html");
const SET_HTML: &str = include_str!("../templates/data_set.html");

/// What the `/data` handlers keep between requests: the library (opened on first use, once its
/// `names/` folder exists), and per version id (immutable content) the inspection and the
/// quicklook PNGs drawn so far.
#[derive(Default)]
pub(crate) struct DataCache {
    library: OnceLock<Library>,
    inspections: Mutex<HashMap<String, Arc<Inspection>>>,
    quicklooks: Mutex<HashMap<(String, String), axum::body::Bytes>>,
}

/// The routes under `/data`.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/data", get(index))
        .route("/data/", get(index))
        .route("/data/catalog.json", get(catalog))
        .route("/data/zarr/{*rest}", get(zarr))
        .route("/data/{spec}", get(data_set))
        .route("/data/{spec}/collection.json", get(collection))
        .route("/data/{spec}/quicklook/{file}", get(quicklook))
}

/// The library, or `None` while its root has no `names/` folder (nothing to serve; nothing is
/// created by reading).
fn library(state: &AppState) -> Result<Option<Library>, WebError> {
    if let Some(lib) = state.data.library.get() {
        return Ok(Some(lib.clone()));
    }
    let root = state.config.data_root();
    if !root.join("names").is_dir() {
        return Ok(None);
    }
    let lib = Library::open(&root).map_err(data_error)?;
    Ok(Some(state.data.library.get_or_init(|| lib).clone()))
}

/// The HTTP side of a library error: unknown things are 404, an ambiguous prefix 400, the
/// rest 500 (logged; the message names server paths, so it is not sent).
fn data_error(e: DataError) -> WebError {
    match e {
        DataError::InvalidName { .. }
        | DataError::UnknownName(_)
        | DataError::UnknownVersion { .. }
        | DataError::UnknownVariable { .. } => WebError::DataNotFound(e.to_string()),
        DataError::AmbiguousVersion { .. } | DataError::Render(_) => {
            WebError::DataBadRequest(e.to_string())
        }
        other => {
            tracing::warn!(error = %other, "the data library could not be read");
            WebError::DataUnavailable
        }
    }
}

/// Runs library work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(WebError::DataUnavailable))
}

fn resolve(state: &AppState, spec: &str) -> Result<(Library, Version), WebError> {
    let lib = library(state)?.ok_or_else(|| {
        WebError::DataNotFound(format!(
            "unknown data set {:?}",
            spec.split('@').next().unwrap_or(spec)
        ))
    })?;
    let v = lib.resolve(spec).map_err(data_error)?;
    Ok((lib, v))
}

/// The inspection of a version, computed once per version id (it reads every chunk for the
/// statistics).
async fn inspection(state: &Arc<AppState>, spec: &str) -> Result<Arc<Inspection>, WebError> {
    let s = state.clone();
    let spec = spec.to_string();
    blocking(move || {
        let (lib, v) = resolve(&s, &spec)?;
        if let Some(i) = lock(&s.data.inspections).get(v.id()) {
            return Ok(i.clone());
        }
        let i = Arc::new(
            lib.inspect(&format!("{}@{}", v.name, v.id()))
                .map_err(data_error)?,
        );
        lock(&s.data.inspections).insert(v.id().to_string(), i.clone());
        Ok(i)
    })
    .await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The absolute URL of the server: the configured `public_url`, else `http://` and the
/// request's `Host` when it is a plausible host (letters, digits, `.-:[]`), else the `listen`
/// address.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if state.config.public_url.is_some() {
        return state.config.public_url();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        });
    match host {
        Some(h) => format!("http://{h}"),
        None => state.config.public_url(),
    }
}

/// Bytes in binary units, one decimal (`1.5 MiB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// Variables of a store from its root `zarr.json`'s inline consolidated metadata (written by
/// berth-data for zarr-python), without reading any chunk: `(name, dims, shape, dtype)`,
/// sorted by name. Empty when the metadata has none.
fn consolidated_variables(store: &Path) -> Vec<(String, Vec<String>, Vec<u64>, String)> {
    let Ok(bytes) = std::fs::read(store.join("zarr.json")) else {
        return Vec::new();
    };
    let Ok(root) = serde_json::from_slice::<Value>(&bytes) else {
        return Vec::new();
    };
    let Some(Value::Object(meta)) = root.pointer("/consolidated_metadata/metadata") else {
        return Vec::new();
    };
    let mut out: Vec<_> = meta
        .iter()
        .filter(|(_, m)| m.get("node_type").and_then(Value::as_str) == Some("array"))
        .map(|(name, m)| {
            let dims = m
                .get("dimension_names")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|d| d.as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            let shape = m
                .get("shape")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let dtype = m
                .get("data_type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            (name.clone(), dims, shape, dtype)
        })
        .collect();
    out.sort();
    out
}

fn render(template: &str, ctx: minijinja::Value) -> Response {
    crate::render(template, ctx)
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    let s = state.clone();
    let sets = blocking(move || {
        let Some(lib) = library(&s)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for n in lib.ls().map_err(data_error)? {
            let path = lib.root().join("versions").join(&n.newest.version);
            let dims: Vec<String> = consolidated_variables(&path)
                .iter()
                .flat_map(|v| v.1.clone())
                .collect();
            let variables: Vec<String> = consolidated_variables(&path)
                .into_iter()
                .filter(|v| !dims.contains(&v.0))
                .map(|v| v.0)
                .collect();
            out.push(json!({
                "href": format!("/data/{}", quote(&n.name)),
                "name": n.name,
                "version": n.newest.version.get(..12).unwrap_or(&n.newest.version),
                "versions": n.versions,
                "created": n.newest.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "variables": variables,
                "size": human_bytes(n.newest.stored_bytes),
                "logical_size": human_bytes(n.newest.logical_bytes),
            }));
        }
        Ok(out)
    })
    .await;
    match sets {
        Ok(sets) => render(
            INDEX_HTML,
            minijinja::context! { sets => sets, root => state.config.data_root().display().to_string() },
        ),
        Err(e) => e.into_response(),
    }
}

/// The dimensions (not themselves variables), data variables and auxiliary variables (bounds
/// and other coordinates named by a `bounds` or `coordinates` attribute) of an inspection.
fn roles(i: &Inspection) -> (Vec<String>, Vec<String>, Vec<String>) {
    let dims: Vec<String> = i.dimensions.iter().map(|(d, _)| d.clone()).collect();
    let mut referenced: Vec<String> = Vec::new();
    for v in &i.variables {
        for key in ["bounds", "coordinates"] {
            if let Some(s) = v.attributes.get(key).and_then(Value::as_str) {
                referenced.extend(s.split_whitespace().map(str::to_string));
            }
        }
    }
    let (mut data, mut aux) = (Vec::new(), Vec::new());
    for v in &i.variables {
        if dims.contains(&v.name) {
            continue;
        }
        if referenced.contains(&v.name) {
            aux.push(v.name.clone());
        } else {
            data.push(v.name.clone());
        }
    }
    (dims, data, aux)
}

/// The default quicklook selection of a variable: every dimension but the last two at 0;
/// `None` for a variable with fewer than two dimensions longer than 1 among its last two.
fn default_slice(v: &berth_data::VariableInfo) -> Option<Vec<(String, usize)>> {
    let n = v.dims.len();
    if n < 2 || v.shape.get(n - 2..)?.iter().any(|&l| l < 2) {
        return None;
    }
    Some(v.dims[..n - 2].iter().map(|d| (d.clone(), 0)).collect())
}

async fn data_set(
    State(state): State<Arc<AppState>>,
    UrlPath(spec): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&state, &headers);
    let i = match inspection(&state, &spec).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let s = state.clone();
    let name = i.name.clone();
    let history = match blocking(move || {
        let lib = library(&s)?.ok_or(WebError::DataUnavailable)?;
        lib.history(&name).map_err(data_error)
    })
    .await
    {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let (_, data, _) = roles(&i);
    let pinned = format!("{}@{}", i.name, i.version.get(..12).unwrap_or(&i.version));
    let variables: Vec<Value> = i
        .variables
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "dims": v.dims,
                "shape": v.shape,
                "dtype": v.dtype,
                "chunks": v.chunk_shape,
                "units": v.attributes.get("units").and_then(Value::as_str).unwrap_or(""),
                "long_name": v.attributes.get("long_name").and_then(Value::as_str).unwrap_or(""),
                "min": v.stats.map(|s| shown_value(v, s.min)),
                "max": v.stats.map(|s| shown_value(v, s.max)),
                "missing": v.stats.map(|s| s.missing),
                "size": human_bytes(v.stored_bytes),
                "quicklook": (data.contains(&v.name) && default_slice(v).is_some()).then(|| {
                    format!("/data/{}/quicklook/{}.png", quote(&pinned), quote(&v.name))
                }),
            })
        })
        .collect();
    let attributes: Vec<(String, String)> = i
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), attr_text(v)))
        .collect();
    let versions: Vec<Value> = history
        .iter()
        .rev()
        .map(|v| {
            json!({
                "id": v.id(),
                "short": v.id().get(..12).unwrap_or(v.id()),
                "href": format!("/data/{}@{}", quote(&v.name), v.id().get(..12).unwrap_or(v.id())),
                "created": v.record.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "size": human_bytes(v.record.stored_bytes),
                // File names only: the server's folders are not published.
                "sources": v.record.sources.iter().map(|p| {
                    p.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    render(
        SET_HTML,
        minijinja::context! {
            name => i.name,
            version => i.version,
            pinned => pinned,
            zarr => format!("{base}/data/zarr/{}@{}", quote(&i.name), i.version),
            zarr_latest => format!("{base}/data/zarr/{}", quote(&i.name)),
            collection => format!("/data/{}/collection.json", quote(&i.name)),
            dimensions => i.dimensions,
            variables => variables,
            attributes => attributes,
            versions => versions,
            size => human_bytes(i.stored_bytes),
            logical_size => human_bytes(i.logical_bytes),
        },
    )
}

/// A value of a variable for the page: a time coordinate's as RFC 3339 when it decodes, else
/// the number with 6 decimals.
fn shown_value(v: &berth_data::VariableInfo, x: f64) -> String {
    let attr = |k: &str| v.attributes.get(k).and_then(Value::as_str);
    if cf_axis(v) == Some('T') {
        if let Some(t) = decode_cf_time(x, attr("units").unwrap_or(""), attr("calendar")) {
            return t;
        }
    }
    format!("{x:.6}")
}

/// An attribute value as text: strings as they are, anything else as JSON.
fn attr_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters stay).
fn quote(s: &str) -> String {
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'@');
    utf8_percent_encode(s, SEGMENT).to_string()
}

async fn quicklook(
    State(state): State<Arc<AppState>>,
    UrlPath((spec, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(var) = file.strip_suffix(".png").map(str::to_string) else {
        return WebError::DataNotFound(format!("no quicklook {file:?}: expected VAR.png"))
            .into_response();
    };
    let pinned = spec.contains('@');
    let i = match inspection(&state, &spec).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let Some(info) = i.variables.iter().find(|v| v.name == var) else {
        return data_error(DataError::UnknownVariable { spec, var }).into_response();
    };
    let Some(at) = default_slice(info) else {
        return WebError::DataBadRequest(format!(
            "variable {var:?} has no 2-D slice to draw (its last two dimensions must each be longer than 1)"
        ))
        .into_response();
    };
    let etag = etag(&i.version, &format!("quicklook/{var}.png"));
    let cache_control = if pinned { IMMUTABLE } else { "no-cache" };
    if none_match(&headers, &etag) {
        return not_modified(&etag, cache_control);
    }
    let key = (i.version.clone(), var.clone());
    let cached = lock(&state.data.quicklooks).get(&key).cloned();
    let png = match cached {
        Some(p) => p,
        None => {
            let s = state.clone();
            let id = format!("{}@{}", i.name, i.version);
            let drawn = blocking(move || {
                let lib = library(&s)?.ok_or(WebError::DataUnavailable)?;
                let dir = tempfile::tempdir().map_err(|e| {
                    tracing::warn!(error = %e, "no temporary folder for a quicklook");
                    WebError::DataUnavailable
                })?;
                let out = dir.path().join("quicklook.png");
                lib.render_png(&id, &var, &at, &out).map_err(data_error)?;
                let bytes = std::fs::read(&out).map_err(|e| {
                    tracing::warn!(error = %e, "reading a quicklook");
                    WebError::DataUnavailable
                })?;
                Ok(axum::body::Bytes::from(bytes))
            })
            .await;
            match drawn {
                Ok(p) => {
                    lock(&state.data.quicklooks).insert(key, p.clone());
                    p
                }
                Err(e) => return e.into_response(),
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            ),
            (header::ETAG, header_value(&etag)),
        ],
        png,
    )
        .into_response()
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// A STAC JSON response (`application/json`, readable from any origin).
fn stac(body: Value) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn catalog(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    let s = state.clone();
    let names = blocking(move || match library(&s)? {
        Some(lib) => lib.ls().map_err(data_error),
        None => Ok(Vec::new()),
    })
    .await;
    let names = match names {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let mut links = vec![
        json!({"rel": "self", "href": format!("{base}/data/catalog.json"), "type": "application/json"}),
        json!({"rel": "root", "href": format!("{base}/data/catalog.json"), "type": "application/json"}),
    ];
    for n in &names {
        links.push(json!({
            "rel": "child",
            "href": format!("{base}/data/{}/collection.json", quote(&n.name)),
            "type": "application/json",
            "title": n.name,
        }));
    }
    stac(json!({
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "berth-data",
        "title": "berth data library",
        "description": "The data sets of this berth server's data library: one Collection per data set (its newest version), each with a Zarr v3 store.",
        "links": links,
    }))
}

/// Which CF axis a coordinate variable is: `X`, `Y`, `Z` or `T`, from its `axis` attribute,
/// else its `standard_name`, `units` or name (CF conventions §4).
fn cf_axis(v: &berth_data::VariableInfo) -> Option<char> {
    let attr = |k: &str| v.attributes.get(k).and_then(Value::as_str).unwrap_or("");
    match attr("axis").to_ascii_uppercase().as_str() {
        "X" => return Some('X'),
        "Y" => return Some('Y'),
        "Z" => return Some('Z'),
        "T" => return Some('T'),
        _ => {}
    }
    let units = attr("units");
    match attr("standard_name") {
        "longitude" => return Some('X'),
        "latitude" => return Some('Y'),
        "time" => return Some('T'),
        "air_pressure" | "altitude" | "height" | "depth" => return Some('Z'),
        _ => {}
    }
    if units.starts_with("degrees_east") || units == "degree_east" {
        return Some('X');
    }
    if units.starts_with("degrees_north") || units == "degree_north" {
        return Some('Y');
    }
    if units.contains(" since ") {
        return Some('T');
    }
    match v.name.to_ascii_lowercase().as_str() {
        "lon" | "longitude" | "x" => Some('X'),
        "lat" | "latitude" | "y" => Some('Y'),
        "time" | "t" => Some('T'),
        "lev" | "level" | "plev" | "pressure" | "depth" | "height" | "z" => Some('Z'),
        _ => None,
    }
}

/// Decodes a CF time value (`<units> since <reference>`, CF conventions §4.4) to RFC 3339 UTC,
/// for the `standard`/`gregorian` (mixed Julian–Gregorian: a reference date before
/// 1582-10-15 is a Julian date), `proleptic_gregorian` calendars and none (standard). `None`
/// for other calendars, unparsable units or out-of-range values.
pub fn decode_cf_time(value: f64, units: &str, calendar: Option<&str>) -> Option<String> {
    let cal = calendar.unwrap_or("standard").to_ascii_lowercase();
    let julian_before_reform = match cal.as_str() {
        "standard" | "gregorian" => true,
        "proleptic_gregorian" => false,
        _ => return None,
    };
    let (unit, reference) = units.trim().split_once(" since ")?;
    let seconds_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "days" | "day" | "d" => 86_400.0,
        "hours" | "hour" | "hrs" | "hr" | "h" => 3_600.0,
        "minutes" | "minute" | "mins" | "min" => 60.0,
        "seconds" | "second" | "secs" | "sec" | "s" => 1.0,
        "milliseconds" | "millisecond" | "msec" | "ms" => 1e-3,
        "microseconds" | "microsecond" | "usec" | "us" => 1e-6,
        _ => return None,
    };
    let reference = reference.trim().replace('T', " ");
    let mut parts = reference.split_whitespace();
    let date = parts.next()?;
    let mut ymd = date.splitn(3, '-');
    let (y, m, d): (i32, u32, u32) = (
        ymd.next()?.parse().ok()?,
        ymd.next()?.parse().ok()?,
        ymd.next()?.parse().ok()?,
    );
    let mut secs_of_day = 0.0;
    if let Some(t) = parts.next() {
        let t = t.trim_end_matches('Z');
        let mut hms = t.split(':');
        let h: f64 = hms.next()?.parse().ok()?;
        let mi: f64 = hms.next().unwrap_or("0").parse().ok()?;
        let s: f64 = hms.next().unwrap_or("0").parse().ok()?;
        secs_of_day = h * 3600.0 + mi * 60.0 + s;
    }
    // A time zone other than UTC is not handled.
    if let Some(tz) = parts.next() {
        if !matches!(tz, "UTC" | "Z" | "+00:00" | "00:00" | "+0000" | "0") {
            return None;
        }
    }
    let gregorian = chrono::NaiveDate::from_ymd_opt(y, m, d)?;
    let reform = chrono::NaiveDate::from_ymd_opt(1582, 10, 15)?;
    let date = if julian_before_reform && gregorian < reform {
        // The Julian calendar date's day number (Julian Day Number), placed on the proleptic
        // Gregorian calendar chrono counts in (JDN 1721426 is 0001-01-01 there).
        let a = (14 - m as i64) / 12;
        let yy = y as i64 + 4800 - a;
        let mm = m as i64 + 12 * a - 3;
        let jdn = d as i64 + (153 * mm + 2) / 5 + 365 * yy + yy / 4 - 32083;
        chrono::NaiveDate::from_num_days_from_ce_opt(i32::try_from(jdn - 1_721_425).ok()?)?
    } else {
        gregorian
    };
    let offset = value * seconds_per_unit + secs_of_day;
    if !offset.is_finite() || offset.abs() > 1e13 {
        return None;
    }
    let millis = (offset * 1000.0).round() as i64;
    let t = date.and_hms_opt(0, 0, 0)?.and_utc() + chrono::Duration::try_milliseconds(millis)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The STAC Collection of a version: STAC 1.0 Collection fields, the datacube extension
/// v2.2.0 (`cube:dimensions`: X/Y as `spatial` with `axis` `x`/`y` and `reference_system`
/// 4326, Z as `spatial` `z`, T as `temporal` with RFC 3339 extent, others with their
/// coordinate's extent or their index range; `cube:variables`: every variable that is not a
/// dimension's coordinate, `data` or `auxiliary`), and one `zarr` asset.
pub(crate) fn collection_json(i: &Inspection, base: &str) -> Value {
    let (dims, data, _aux) = roles(i);
    let var = |n: &str| i.variables.iter().find(|v| v.name == n);
    let mut cube_dims = Map::new();
    let (mut bbox_x, mut bbox_y, mut interval) = (None, None, None);
    for (d, len) in &i.dimensions {
        let coord = var(d);
        let axis = coord.and_then(cf_axis);
        let range = coord.and_then(|c| c.stats).map(|s| (s.min, s.max));
        let attr = |k: &str| {
            coord
                .and_then(|c| c.attributes.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let mut o = Map::new();
        match (axis, range) {
            (Some(a @ ('X' | 'Y')), Some((lo, hi))) => {
                o.insert("type".into(), json!("spatial"));
                o.insert("axis".into(), json!(a.to_ascii_lowercase().to_string()));
                o.insert("extent".into(), json!([lo, hi]));
                o.insert("reference_system".into(), json!(4326));
                if a == 'X' {
                    bbox_x = Some((lo, hi, *len));
                } else {
                    bbox_y = Some((lo, hi));
                }
            }
            (Some('Z'), Some((lo, hi))) => {
                o.insert("type".into(), json!("spatial"));
                o.insert("axis".into(), json!("z"));
                o.insert("extent".into(), json!([lo, hi]));
                if let Some(u) = attr("units") {
                    o.insert("unit".into(), json!(u));
                }
            }
            (Some('T'), range) => {
                let units = attr("units").unwrap_or_default();
                let cal = attr("calendar");
                let ext = range.map(|(lo, hi)| {
                    (
                        decode_cf_time(lo, &units, cal.as_deref()),
                        decode_cf_time(hi, &units, cal.as_deref()),
                    )
                });
                let (start, end) = ext.unwrap_or((None, None));
                o.insert("type".into(), json!("temporal"));
                o.insert("extent".into(), json!([start, end]));
                if start.is_some() || end.is_some() {
                    interval = Some((start, end));
                }
            }
            (_, Some((lo, hi))) => {
                // An additional dimension's type is free text, but never `spatial` or
                // `temporal` (datacube extension, "Additional Dimension Object").
                let kind = if matches!(d.as_str(), "spatial" | "temporal") {
                    "other"
                } else {
                    d.as_str()
                };
                o.insert("type".into(), json!(kind));
                o.insert("extent".into(), json!([lo, hi]));
                if let Some(u) = attr("units") {
                    o.insert("unit".into(), json!(u));
                }
            }
            (_, None) => {
                o.insert("type".into(), json!("index"));
                o.insert(
                    "description".into(),
                    json!(format!(
                        "dimension {d} of length {len} without a coordinate variable: indices"
                    )),
                );
                o.insert("extent".into(), json!([0, len.saturating_sub(1)]));
                o.insert("step".into(), json!(1));
            }
        }
        if let Some(ln) = attr("long_name") {
            o.entry("description").or_insert(json!(ln));
        }
        cube_dims.insert(d.clone(), Value::Object(o));
    }
    let mut cube_vars = Map::new();
    for v in &i.variables {
        if dims.contains(&v.name) {
            continue;
        }
        let mut o = Map::new();
        o.insert("dimensions".into(), json!(v.dims));
        o.insert(
            "type".into(),
            json!(if data.contains(&v.name) {
                "data"
            } else {
                "auxiliary"
            }),
        );
        if let Some(d) = v.attributes.get("long_name").and_then(Value::as_str) {
            o.insert("description".into(), json!(d));
        }
        if let Some(u) = v.attributes.get("units").and_then(Value::as_str) {
            o.insert("unit".into(), json!(u));
        }
        if let Some(s) = v.stats {
            o.insert("extent".into(), json!([s.min, s.max]));
        }
        cube_vars.insert(v.name.clone(), Value::Object(o));
    }
    let bbox = match (bbox_x, bbox_y) {
        (Some((w, e, n)), Some((s, north))) => {
            let step = if n > 1 { (e - w) / (n - 1) as f64 } else { 0.0 };
            let norm = |x: f64| {
                let y = (x + 180.0).rem_euclid(360.0) - 180.0;
                if y == -180.0 && x > 0.0 {
                    180.0
                } else {
                    y
                }
            };
            let (w, e) = if e - w + step >= 360.0 {
                (-180.0, 180.0)
            } else {
                (norm(w), norm(e))
            };
            [w, s.max(-90.0), e, north.min(90.0)]
        }
        _ => [-180.0, -90.0, 180.0, 90.0],
    };
    let title = i
        .attributes
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or(&i.name)
        .to_string();
    let description = ["summary", "description", "comment", "title", "history"]
        .iter()
        .find_map(|k| i.attributes.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| format!("Data set {} of berth's data library.", i.name));
    let license = i
        .attributes
        .get("license")
        .and_then(Value::as_str)
        .filter(|l| {
            !l.is_empty()
                && l.len() <= 64
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        })
        .unwrap_or("proprietary");
    let name = quote(&i.name);
    let (start, end) = interval.unwrap_or((None, None));
    json!({
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [DATACUBE_SCHEMA],
        "id": i.name,
        "title": title,
        "description": description,
        "license": license,
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[start, end]]},
        },
        "cube:dimensions": cube_dims,
        "cube:variables": cube_vars,
        "assets": {
            "zarr": {
                "href": format!("{base}/data/zarr/{name}@{}", i.version),
                "type": ZARR_MEDIA_TYPE,
                "title": format!("Zarr v3 store of version {}", i.version),
                "roles": ["data"],
            }
        },
        "links": [
            {"rel": "self", "href": format!("{base}/data/{name}/collection.json"), "type": "application/json"},
            {"rel": "root", "href": format!("{base}/data/catalog.json"), "type": "application/json"},
            {"rel": "parent", "href": format!("{base}/data/catalog.json"), "type": "application/json"},
            {"rel": "alternate", "href": format!("{base}/data/{name}"), "type": "text/html"},
        ],
    })
}

async fn collection(
    State(state): State<Arc<AppState>>,
    UrlPath(spec): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    match inspection(&state, &spec).await {
        Ok(i) => {
            let mut body = collection_json(&i, &base_url(&state, &headers));
            if spec.contains('@') {
                // A pinned version's own URL.
                body["links"][0]["href"] = json!(format!(
                    "{}/data/{}/collection.json",
                    base_url(&state, &headers),
                    quote(&spec)
                ));
            }
            stac(body)
        }
        Err(e) => e.into_response(),
    }
}

/// The strong entity tag of `key` in version `version`: `"<version>/<key>"`, the key
/// percent-encoded (RFC 9110 §8.8.3).
fn etag(version: &str, key: &str) -> String {
    const TAG: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    format!("\"{version}/{}\"", utf8_percent_encode(key, TAG))
}

/// The entity tags of an `If-None-Match`/`If-Match` header; `*` as itself.
fn tags(headers: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let all: Vec<String> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    (!all.is_empty()).then_some(all)
}

/// `If-None-Match` matches `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    tags(headers, header::IF_NONE_MATCH).is_some_and(|ts| {
        ts.iter()
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
    })
}

fn not_modified(etag: &str, cache_control: &'static str) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [
            (header::ETAG, header_value(etag)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
    )
        .into_response()
}

/// What a key of a store is on disk.
enum Entry {
    File(PathBuf),
    Dir(PathBuf),
}

/// Decodes the key of `/data/zarr/<spec>/<key>` into path segments: each segment
/// percent-decoded; an empty, `.` or `..` segment, or one decoding to `/`, `\` or NUL, is
/// refused. A trailing `/` (a directory) is allowed.
fn key_segments(raw: &str) -> Result<Vec<String>, WebError> {
    let raw = raw.strip_suffix('/').unwrap_or(raw);
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    raw.split('/')
        .map(|seg| {
            let s = percent_decode_str(seg)
                .decode_utf8()
                .map_err(|_| WebError::DataBadRequest("a store key must be UTF-8".into()))?;
            if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
                return Err(WebError::DataBadRequest(format!(
                    "invalid store key segment {seg:?}"
                )));
            }
            Ok(s.into_owned())
        })
        .collect()
}

/// The file or directory of `segments` inside `store`, never through a symbolic link (every
/// component is checked with `symlink_metadata`); `None` for anything missing or special.
fn locate(store: &Path, segments: &[String]) -> Option<Entry> {
    let mut p = store.to_path_buf();
    let meta = std::fs::symlink_metadata(&p).ok()?;
    if !meta.is_dir() {
        return None;
    }
    for (k, seg) in segments.iter().enumerate() {
        p.push(seg);
        let meta = std::fs::symlink_metadata(&p).ok()?;
        let last = k + 1 == segments.len();
        if meta.file_type().is_symlink() {
            return None;
        }
        if !last && !meta.is_dir() {
            return None;
        }
        if last && meta.is_file() {
            return Some(Entry::File(p));
        }
        if last && !meta.is_dir() {
            return None;
        }
    }
    Some(Entry::Dir(p))
}

/// Escapes text for HTML element content and double-quoted attributes (`&`, `<`, `>`, `"`,
/// `'`); unlike minijinja's HTML escaping it leaves `/` alone, so fsspec reads the links as
/// they are.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML page of links to the entries of a store directory (regular files and
/// directories; directories end in `/`; absolute paths), as fsspec's `HTTPFileSystem.ls`
/// reads it.
fn listing(dir: &Path, url_path: &str) -> Response {
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().to_string();
            let href = format!("{}/{}", url_path.trim_end_matches('/'), quote(&name));
            if ft.is_dir() {
                entries.push((format!("{name}/"), format!("{href}/")));
            } else if ft.is_file() {
                entries.push((name, href));
            }
        }
    }
    entries.sort();
    let path = html_escape(url_path);
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{path}</title></head>\n<body>\n<h1>{path}</h1>\n<ul>\n"
    );
    for (text, href) in entries {
        html.push_str(&format!(
            "<li><a href=\"{}\">{}</a></li>\n",
            html_escape(&href),
            html_escape(&text)
        ));
    }
    html.push_str("</ul>\n</body>\n</html>\n");
    axum::response::Html(html).into_response()
}

async fn zarr(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let raw = uri.path().strip_prefix("/data/zarr/").unwrap_or("");
    let (raw_spec, raw_key) = raw.split_once('/').unwrap_or((raw, ""));
    let spec = match percent_decode_str(raw_spec).decode_utf8() {
        Ok(s) => s.into_owned(),
        Err(_) => return WebError::DataNotFound("unknown data set".into()).into_response(),
    };
    let segments = match key_segments(raw_key) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let key = segments.join("/");
    let wants_dir = raw_key.is_empty() || raw_key.ends_with('/');
    let s = state.clone();
    let spec2 = spec.clone();
    let found = blocking(move || {
        let (_, v) = resolve(&s, &spec2)?;
        let entry = locate(&v.path, &segments);
        Ok((v, entry))
    })
    .await;
    let (version, entry) = match found {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let cache_control = if spec.contains('@') {
        IMMUTABLE
    } else {
        "no-cache"
    };
    let entry = entry.filter(|e| !(wants_dir && matches!(e, Entry::File(_))));
    let mut response = match entry {
        None => return WebError::DataNotFound(format!("no key {key:?} in {spec}")).into_response(),
        Some(Entry::Dir(dir)) => {
            let shown = uri.path().to_string();
            let mut r = blocking(move || Ok(listing(&dir, &shown)))
                .await
                .unwrap_or_else(IntoResponse::into_response);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            r
        }
        Some(Entry::File(path)) => {
            let tag = etag(version.id(), &key);
            match serve_file(&path, method, uri, headers, &tag).await {
                Ok(r) => {
                    let mut r = r;
                    let h = r.headers_mut();
                    h.insert(header::ETAG, header_value(&tag));
                    h.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static(cache_control),
                    );
                    r
                }
                Err(r) => r,
            }
        }
    };
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// Serves one store file with tower-http's `ServeFile` (ranges, `HEAD`, `Last-Modified`),
/// evaluating the entity-tag preconditions itself against `tag` (RFC 9110 §13.2.2):
/// `If-Match` not matching → 412; `If-None-Match` matching → 304 (and `If-Modified-Since` is
/// then ignored); `If-Range` not equal to `tag` → the whole file (200).
async fn serve_file(
    path: &Path,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    tag: &str,
) -> Result<Response, Response> {
    let cache = HeaderValue::from_static("no-cache");
    let mut h = headers;
    if let Some(ts) = tags(&h, header::IF_MATCH) {
        if !ts.iter().any(|t| t == "*" || t == tag) {
            return Err((
                StatusCode::PRECONDITION_FAILED,
                [
                    (header::ETAG, header_value(tag)),
                    (header::CACHE_CONTROL, cache),
                ],
            )
                .into_response());
        }
        h.remove(header::IF_MATCH);
        h.remove(header::IF_UNMODIFIED_SINCE);
    }
    if h.contains_key(header::IF_NONE_MATCH) {
        if none_match(&h, tag) {
            return Err(not_modified(tag, "no-cache"));
        }
        h.remove(header::IF_NONE_MATCH);
        h.remove(header::IF_MODIFIED_SINCE);
    }
    if let Some(ir) = h.remove(header::IF_RANGE) {
        if ir.to_str().ok().map(str::trim) != Some(tag) {
            h.remove(header::RANGE);
        }
    }
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(hs) = req.headers_mut() {
        *hs = h;
    }
    let req = req
        .body(Body::empty())
        .map_err(|_| WebError::DataUnavailable.into_response())?;
    // Reads of 1 MiB: a 4 MiB chunk in 4 trips to the blocking pool, not 64 of the default
    // 64 KiB.
    let mut serve = tower_http::services::ServeFile::new(path).with_buf_chunk_size(1 << 20);
    match serve.try_call(req).await {
        Ok(r) => Ok(r.map(Body::new)),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "serving a store file");
            Err(WebError::DataUnavailable.into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cf_times_decode_like_xarray() {
        // hgt_djf.nc: hours since 1-1-1 in the standard (mixed) calendar.
        assert_eq!(
            decode_cf_time(17067420.0, "hours since 1-1-1 00:00:0.0", Some("gregorian")).as_deref(),
            Some("1948-01-15T12:00:00Z")
        );
        assert_eq!(
            decode_cf_time(0.0, "days since 1970-01-01 00:00:0.0", Some("standard")).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            decode_cf_time(1.5, "days since 1800-1-1 00:00:00", None).as_deref(),
            Some("1800-01-02T12:00:00Z")
        );
        assert_eq!(
            decode_cf_time(0.0, "days since 2000-01-01", Some("noleap")),
            None
        );
        assert_eq!(decode_cf_time(0.0, "furlongs since 2000-01-01", None), None);
        assert_eq!(decode_cf_time(0.0, "days after 2000-01-01", None), None);
        assert_eq!(
            decode_cf_time(f64::NAN, "days since 2000-01-01", None),
            None
        );
    }

    #[test]
    fn keys_refuse_traversal() {
        assert_eq!(key_segments("").unwrap(), Vec::<String>::new());
        assert_eq!(key_segments("sst/").unwrap(), vec!["sst".to_string()]);
        assert_eq!(
            key_segments("sst/c/0").unwrap(),
            vec!["sst".to_string(), "c".into(), "0".into()]
        );
        for bad in [
            "..",
            "sst/../..",
            "%2e%2e",
            "%2E%2E/x",
            "a%2fb",
            "a%5Cb",
            "a//b",
            ".",
            "%00",
            "%ff",
        ] {
            assert!(key_segments(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn etags_are_strong_and_quoted() {
        assert_eq!(etag("ab12", "sst/c/0/0/0"), "\"ab12/sst/c/0/0/0\"");
        assert_eq!(etag("ab12", "a \"b\""), "\"ab12/a%20%22b%22\"");
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            "\"x\", W/\"ab12/k\"".parse().unwrap(),
        );
        assert!(none_match(&h, "\"ab12/k\""));
        assert!(!none_match(&h, "\"ab12/j\""));
    }
}
