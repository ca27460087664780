//! `/data` in process: a temporary library holding the real NetCDF fixtures, served on loopback;
//! read by xarray + zarr-python over HTTP and by pystac (`data_readers.py` through
//! `$BERTH_TEST_PYTHON`), and checked for HTTP semantics (ETag, 304, ranges, immutable
//! versions, 404s, path traversal, HEAD) and the HTML pages and quicklooks.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use berth_data::Library;
use berth_web::Config;
use common::*;

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/data"
    ))
    .join(name);
    assert!(
        p.is_file(),
        "fixture {} is missing (see ../shared/fixtures/data/README.md)",
        p.display()
    );
    p
}

fn python() -> PathBuf {
    let p = std::env::var_os("BERTH_TEST_PYTHON").unwrap_or_else(|| {
        panic!(
            "BERTH_TEST_PYTHON is not set. These tests read /data with xarray and pystac: run \
             scripts/data-test-env and then export BERTH_TEST_PYTHON=$PWD/target/pyenv/bin/python"
        )
    });
    PathBuf::from(p)
}

/// A library with `sst` (NetCDF-3) and `uwnd` (NetCDF-4), and the server on it.
async fn serve() -> (tempfile::TempDir, Library, Server, Vec<(String, PathBuf)>) {
    let dir = tempfile::tempdir().unwrap();
    let lib = Library::open(dir.path()).unwrap();
    let sets = vec![
        ("sst".to_string(), fixture("sst_ndjfm_anom.nc")),
        ("uwnd".to_string(), fixture("uwnd_mean.nc")),
    ];
    for (name, nc) in &sets {
        lib.add(name, std::slice::from_ref(nc), Default::default(), &|_| {})
            .unwrap();
    }
    let config = Config {
        data_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let server = Server::start(
        config,
        Arc::new(FakeBackend::default()),
        Arc::new(FakeBuilder::default()),
    )
    .await;
    (dir, lib, server, sets)
}

/// A raw HTTP/1.1 request (the path sent exactly as given, no client-side normalisation of
/// `..`); returns the status code and the whole response text.
async fn raw(url: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let text = String::from_utf8_lossy(&got).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// minijinja's HTML escaping writes `/` as `&#x2f;`.
fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
}

#[tokio::test(flavor = "multi_thread")]
async fn xarray_and_pystac_read_the_library_over_http() {
    let (_dir, _lib, server, sets) = serve().await;
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data_readers.py"
    ))
    .arg(&server.url);
    for (name, nc) in &sets {
        cmd.arg(format!("{name}={}", nc.display()));
    }
    let out = cmd.output().await.expect("running BERTH_TEST_PYTHON");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "data_readers.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_speak_http_caching_ranges_and_refuse_traversal() {
    let (dir, lib, server, _) = serve().await;
    let c = client();
    let v = lib.resolve("sst").unwrap();
    let id = v.id().to_string();
    let key = "sst/zarr.json";
    let on_disk = std::fs::read(v.path.join(key)).unwrap();
    let latest = format!("{}/data/zarr/sst/{key}", server.url);
    let pinned = format!("{}/data/zarr/sst@{}/{key}", server.url, &id[..10]);

    // The file as stored, with a strong ETag of version and key; the newest is revalidated.
    let r = c.get(&latest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{id}/{key}\""));
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &on_disk[..]);

    // A version prefix: the same bytes and ETag, cached for good.
    let r = c.get(&pinned).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &on_disk[..]);

    // If-None-Match: 304 with the validator, no body; another tag gets the file.
    for url in [&latest, &pinned] {
        let r = c
            .get(url.as_str())
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{url}");
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = c
        .get(&latest)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&latest)
        .header("if-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);

    // Ranges: one range → 206 with its bytes; past the end → 416; a stale If-Range → 200.
    let r = c
        .get(&latest)
        .header("range", "bytes=5-14")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 5-14/{}", on_disk.len())
    );
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &on_disk[5..15]);
    let r = c
        .get(&latest)
        .header("range", format!("bytes=-{}", 7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &on_disk[on_disk.len() - 7..]
    );
    let r = c
        .get(&latest)
        .header("range", format!("bytes={}-", on_disk.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{}", on_disk.len())
    );
    let r = c
        .get(&latest)
        .header("range", "bytes=0-3")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), on_disk.len());
    let r = c
        .get(&latest)
        .header("range", "bytes=0-3")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);

    // HEAD: the headers of a GET, no body.
    let r = c.head(&latest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        on_disk.len().to_string()
    );
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());

    // Unknown data set, version, key: 404 (what Zarr readers expect for a missing key).
    for path in [
        "/data/zarr/nope/zarr.json".to_string(),
        "/data/zarr/sst@ffffffffff/zarr.json".to_string(),
        "/data/zarr/sst/nope/zarr.json".to_string(),
        "/data/zarr/sst/.zattrs".to_string(),
        "/data/zarr/sst/sst/c/9/9/9".to_string(),
        "/data/zarr/sst/zarr.json/".to_string(),
        "/data/zarr/..%2Fnames/sst.json".to_string(),
    ] {
        let r = c.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(
        c.head(format!("{}/data/zarr/sst/nope", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Traversal, sent raw: `..`, encoded dots and slashes, backslashes are refused; a store
    // key never reaches outside its version's folder.
    let names_file = format!("{}/names/sst.json", dir.path().display());
    assert!(std::path::Path::new(&names_file).is_file());
    for path in [
        "/data/zarr/sst/../../names/sst.json",
        "/data/zarr/sst/%2e%2e/%2e%2e/names/sst.json",
        "/data/zarr/sst/..%2f..%2fnames%2fsst.json",
        "/data/zarr/sst/sst%2F..%2F..%2F..%2Fnames%2Fsst.json",
        "/data/zarr/sst/..%5c..%5cnames%5csst.json",
        "/data/zarr/sst//etc/passwd",
        "/data/zarr/sst/%2Fetc%2Fpasswd",
        "/data/zarr/sst@../names/sst.json",
    ] {
        let (code, text) = raw(&server.url, path).await;
        assert!(code == 400 || code == 404, "{path}: {code}\n{text}");
        assert!(!text.contains("\"versions\""), "{path} leaked:\n{text}");
    }

    // A symbolic link inside a store (pointing out of it) is never followed.
    std::os::unix::fs::symlink(&names_file, v.path.join("escape.json")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("names"), v.path.join("escape")).unwrap();
    for path in [
        "/data/zarr/sst/escape.json",
        "/data/zarr/sst/escape/sst.json",
    ] {
        let (code, text) = raw(&server.url, path).await;
        assert_eq!(code, 404, "{path}:\n{text}");
    }
    let (_, listing) = raw(&server.url, "/data/zarr/sst/").await;
    assert!(!listing.contains("escape"), "{listing}");
    std::fs::remove_file(v.path.join("escape.json")).unwrap();
    std::fs::remove_file(v.path.join("escape")).unwrap();

    // A directory lists its entries as links (what fsspec's HTTP file system reads).
    let r = c
        .get(format!("{}/data/zarr/sst", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for entry in [
        "href=\"/data/zarr/sst/zarr.json\"",
        "href=\"/data/zarr/sst/sst/\"",
        "href=\"/data/zarr/sst/time/\"",
    ] {
        assert!(text.contains(entry), "{entry} missing:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_list_data_sets_variables_and_quicklooks() {
    let (_dir, lib, server, _) = serve().await;
    let c = client();
    let page = c.get(format!("{}/data", server.url)).send().await.unwrap();
    let status = page.status();
    let html = unescape(&page.text().await.unwrap());
    assert_eq!(status, 200, "{html}");
    let sst = lib.resolve("sst").unwrap();
    for want in [
        "href=\"/data/sst\"",
        "href=\"/data/uwnd\"",
        &sst.id()[..12],
        "sst</td>",
        "uwnd",
    ] {
        assert!(html.contains(want), "{want} missing from /data:\n{html}");
    }

    let r = c
        .get(format!("{}/data/uwnd", server.url))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let html = unescape(&r.text().await.unwrap());
    assert_eq!(status, 200, "{html}");
    for want in [
        "<strong>uwnd</strong>",
        "time, latitude, longitude",
        "12 × 73 × 144",
        "float32",
        "m/s",
        "air_pressure",
        "Conventions",
        "quicklook/uwnd.png",
    ] {
        assert!(
            html.contains(want),
            "{want} missing from /data/uwnd:\n{html}"
        );
    }
    // Times decoded; absolute store URLs; the server's folders are not shown.
    assert!(html.contains("1970-01-01T00:00:00Z"), "{html}");
    assert!(
        html.contains(&format!("\"{}/data/zarr/uwnd\")", server.url)),
        "{html}"
    );
    assert!(html.contains("uwnd_mean.nc"), "{html}");
    assert!(!html.contains("shared/fixtures"), "{html}");
    // The quicklook linked from the page is a PNG of the drawn size.
    let src = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = c.get(format!("{}{src}", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let png = r.bytes().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(width >= 144 && height >= 73, "{width}x{height}");
    let r = c
        .get(format!("{}{src}", server.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Unknown things are 404, as plain text (a name with markup is never rendered as HTML).
    for path in [
        "/data/%3Cscript%3E",
        "/data/nope",
        "/data/nope/collection.json",
        "/data/sst/quicklook/nope.png",
        "/data/sst/quicklook/sst.gif",
    ] {
        let r = c.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{path}"
        );
    }
    // A 1-D variable has no 2-D slice.
    let r = c
        .get(format!("{}/data/sst/quicklook/time.png", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn stac_urls_follow_the_host_or_the_public_url() {
    let (dir, _lib, server, _) = serve().await;
    let c = client();
    let cat: serde_json::Value = c
        .get(format!("{}/data/catalog.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cat["type"], "Catalog");
    assert_eq!(cat["stac_version"], "1.0.0");
    let children: Vec<&str> = cat["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["rel"] == "child")
        .map(|l| l["href"].as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        vec![
            format!("{}/data/sst/collection.json", server.url),
            format!("{}/data/uwnd/collection.json", server.url)
        ]
    );

    // With a configured public URL, that one.
    let config = Config {
        data_dir: Some(dir.path().to_path_buf()),
        public_url: Some("https://data.example.org/".into()),
        ..Config::default()
    };
    let public = Server::start(
        config,
        Arc::new(FakeBackend::default()),
        Arc::new(FakeBuilder::default()),
    )
    .await;
    let coll: serde_json::Value = c
        .get(format!("{}/data/sst/collection.json", public.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let href = coll["assets"]["zarr"]["href"].as_str().unwrap();
    assert!(
        href.starts_with("https://data.example.org/data/zarr/sst@"),
        "{href}"
    );
    assert_eq!(coll["stac_extensions"][0], berth_web::data::DATACUBE_SCHEMA);

    // An empty folder: an empty catalog, and nothing created in it.
    let empty = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: Some(empty.path().join("none")),
        ..Config::default()
    };
    let bare = Server::start(
        config,
        Arc::new(FakeBackend::default()),
        Arc::new(FakeBuilder::default()),
    )
    .await;
    let r = c
        .get(format!("{}/data/catalog.json", bare.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cat: serde_json::Value = r.json().await.unwrap();
    assert_eq!(cat["links"].as_array().unwrap().len(), 2);
    assert_eq!(
        c.get(format!("{}/data", bare.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/data/zarr/sst/zarr.json", bare.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(!empty.path().join("none").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_gets_a_new_url_and_the_old_one_keeps_its_bytes() {
    let (_dir, lib, server, sets) = serve().await;
    let c = client();
    let key = "sst/zarr.json";
    let old = lib.resolve("sst").unwrap();
    let get = |url: String| {
        let c = c.clone();
        async move {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            let etag = r.headers()["etag"].to_str().unwrap().to_string();
            (etag, r.bytes().await.unwrap().to_vec())
        }
    };
    let (old_etag, old_bytes) = get(format!("{}/data/zarr/sst/{key}", server.url)).await;

    // The same source chunked otherwise: another store, so another version.
    let opts = berth_data::IngestOptions {
        chunks: vec![("time".into(), 10)],
        ..Default::default()
    };
    let new = lib
        .add("sst", std::slice::from_ref(&sets[0].1), opts, &|_| {})
        .unwrap();
    assert_ne!(new.id(), old.id());

    let (etag, bytes) = get(format!("{}/data/zarr/sst/{key}", server.url)).await;
    assert_ne!(etag, old_etag);
    assert_ne!(bytes, old_bytes);
    assert_eq!(bytes, std::fs::read(new.path.join(key)).unwrap());
    let (etag, bytes) = get(format!(
        "{}/data/zarr/sst@{}/{key}",
        server.url,
        &old.id()[..12]
    ))
    .await;
    assert_eq!((etag, bytes), (old_etag, old_bytes));
    // And the old version's chunks are still there, byte for byte.
    let chunk = "sst/c/0/0/0";
    let (_, bytes) = get(format!(
        "{}/data/zarr/sst@{}/{chunk}",
        server.url,
        &old.id()[..12]
    ))
    .await;
    assert_eq!(bytes, std::fs::read(old.path.join(chunk)).unwrap());
}
