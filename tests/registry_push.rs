//! End to end: `berth build --push` to a real registry (Debian's `docker-registry`, the CNCF
//! Distribution registry) through the real Docker engine, with a real fixture repository.

mod common;

use common::registry::{TestRegistry, MANIFEST_V2};
use common::*;

/// The fixture the tests push: the smallest environment (a `setup.py` without dependencies).
const FIXTURE: &str = "setup.py";

/// `berth build FIXTURE --json --push --registry ADDR`, which must succeed.
fn build_push(reg: &TestRegistry) -> Built {
    build(
        &fixture(FIXTURE),
        &["--push", "--registry", reg.addr.as_str()],
    )
}

/// `berth build FIXTURE --push --registry REGISTRY` (without `--json`), which must fail: its
/// stderr's error line (the last line, the only one starting with `error:`), and all of stderr.
fn failed_push_stderr(registry: &str) -> (String, String) {
    let _g = build_lock();
    let out = run_berth(&[
        "build",
        fixture(FIXTURE).to_str().unwrap(),
        "--push",
        "--registry",
        registry,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the push succeeded:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    (errors[0].to_string(), stderr.clone())
}

/// As [`failed_push_stderr`], the error line only.
fn failed_push(registry: &str) -> String {
    failed_push_stderr(registry).0
}

/// `(name, tag)` of a reference `127.0.0.1:PORT/name:tag`, as the registry's API takes them.
fn name_and_tag<'a>(reg: &TestRegistry, reference: &'a str) -> (&'a str, &'a str) {
    let local = reference
        .strip_prefix(&format!("{}/", reg.addr))
        .unwrap_or_else(|| panic!("{reference} is not under {}", reg.addr));
    local.rsplit_once(':').unwrap()
}

/// The number of layers of a local image (its root file system's diff ids).
fn layer_count(image: &str) -> usize {
    let out = docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", image]);
    serde_json::from_str::<Vec<String>>(out.trim())
        .unwrap()
        .len()
}

fn image_id(image: &str) -> String {
    docker(&["image", "inspect", "-f", "{{.Id}}", image])
        .trim()
        .to_string()
}

/// sha256 of a file, as `sha256:<hex>` (through `sha256sum`: layers are large).
fn file_digest(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// Checks that the registry lists `reference`, serves its schema 2 manifest with `digest`, and
/// stores every blob the manifest names, with the manifest's size and digest. Returns the
/// manifest's layer digests.
fn assert_in_registry(reg: &TestRegistry, reference: &str, digest: &str) -> Vec<String> {
    let (name, tag) = name_and_tag(reg, reference);
    let catalog = reg.json("/v2/_catalog", None);
    assert!(
        catalog["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == name),
        "{name} is not in the catalog: {catalog}"
    );
    let tags = reg.json(&format!("/v2/{name}/tags/list"), None);
    assert!(
        tags["tags"].as_array().unwrap().iter().any(|t| t == tag),
        "{tag} is not among {name}'s tags: {tags}"
    );
    let (status, headers, body) = reg
        .get(&format!("/v2/{name}/manifests/{tag}"), Some(MANIFEST_V2))
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], MANIFEST_V2);
    assert_eq!(headers["docker-content-digest"], digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    let mut blobs = vec![manifest["config"].clone()];
    blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    for b in &blobs {
        let d = b["digest"].as_str().unwrap();
        let size = b["size"].as_u64().unwrap();
        let (status, h) = reg.head(&format!("/v2/{name}/blobs/{d}"));
        assert_eq!(status, 200, "blob {d} of {reference}");
        assert_eq!(h["content-length"], size.to_string().as_str());
        let path = reg.blob_path(d);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "{d}");
        assert_eq!(file_digest(&path), d, "the stored blob's bytes");
    }
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn build_push_puts_both_images_in_the_registry_and_pushing_again_uploads_nothing() {
    let reg = TestRegistry::start(false);
    let b = build_push(&reg);
    let p = b.pushed.clone().expect("the outcome records the push");
    assert_eq!(p.registry, reg.addr);
    assert_eq!(p.env_image, format!("{}/{}", reg.addr, b.env_image));
    assert_eq!(p.image, format!("{}/{}", reg.addr, b.image));
    assert_ne!(p.image, p.env_image);
    // The environment first, so the repository image's lower layers are mounted, not sent.
    assert_eq!(p.images.len(), 2);
    let (env, repo) = (&p.images[0], &p.images[1]);
    assert_eq!(env.reference, p.env_image);
    assert_eq!(repo.reference, p.image);

    let env_layers = assert_in_registry(&reg, &env.reference, env.digest.as_deref().unwrap());
    let repo_layers = assert_in_registry(&reg, &repo.reference, repo.digest.as_deref().unwrap());
    assert_eq!(env_layers.len(), layer_count(&b.env_image));
    assert_eq!(repo_layers.len(), layer_count(&b.image));
    assert_eq!(
        repo_layers[..env_layers.len()],
        env_layers[..],
        "the repository image sits on the environment's layers"
    );

    // Every layer and the config were uploaded once into the environment's repository; the
    // repository image's repository received its own layers and config only.
    let own = repo_layers.len() - env_layers.len();
    let env_name = name_and_tag(&reg, &env.reference).0;
    let repo_name = name_and_tag(&reg, &repo.reference).0;
    assert_eq!(
        reg.uploads(env_name),
        env_layers.len() + 1,
        "{:?}",
        reg.requests()
    );
    assert_eq!(reg.uploads(repo_name), own + 1, "{:?}", reg.requests());
    assert_eq!(env.stats.layers_pushed as usize, env_layers.len());
    assert_eq!(repo.stats.layers_pushed as usize, own);
    assert_eq!(
        (repo.stats.layers_mounted + repo.stats.layers_existing) as usize,
        env_layers.len()
    );
    let first_bytes: u64 = reg.blobs().iter().map(|(_, s)| s).sum();
    let first_seconds = env.seconds + repo.seconds;

    // The same images again: no blob is uploaded, no byte sent.
    let before = reg.all_uploads();
    let blobs_before = reg.blobs();
    let again = build_push(&reg);
    let q = again.pushed.expect("the second outcome records the push");
    assert_eq!(q.image, p.image);
    assert_eq!(reg.all_uploads(), before, "{:?}", reg.requests());
    assert_eq!(reg.blobs(), blobs_before);
    for (i, j) in q.images.iter().zip(&p.images) {
        assert_eq!(i.stats.layers_pushed, 0, "{i:?}");
        assert_eq!(i.digest, j.digest, "the same manifest");
    }
    // Without --json, stdout is the pushed references: the runnable image's, then the
    // environment's.
    let out = {
        let _g = build_lock();
        run_berth(&[
            "build",
            fixture(FIXTURE).to_str().unwrap(),
            "--push",
            "--registry",
            reg.addr.as_str(),
        ])
    };
    let stdout = stdout_of(&out);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [p.image.as_str(), p.env_image.as_str()]
    );
    eprintln!(
        "figures: first push {first_seconds:.1} s, {:.1} MiB in {} blobs; second push {:.1} s, 0 blobs",
        first_bytes as f64 / 1048576.0,
        blobs_before.len(),
        q.images.iter().map(|i| i.seconds).sum::<f64>()
    );

    // The pushed image is complete: without the local registry tag, the engine pulls it back,
    // as the same image.
    docker(&["rmi", "--no-prune", &p.image]);
    docker(&["pull", "-q", &p.image]);
    assert_eq!(image_id(&p.image), image_id(&b.image));
}

#[test]
fn a_registry_that_refuses_pushes_fails_in_one_line_and_leaves_no_tag() {
    // The images exist (or are built now), so the refusal comes from the push.
    let b = build(&fixture(FIXTURE), &[]);
    let reg = TestRegistry::start(true);
    let line = failed_push(&reg.addr);
    assert!(
        line.starts_with("error: cannot push the images of ")
            && line.contains(&format!(
                "registry {} refused the push of {}/",
                reg.addr, reg.addr
            )),
        "{line}"
    );
    assert_eq!(reg.local_tags(), Vec::<String>::new(), "{line}");
    assert_eq!(
        reg.json("/v2/_catalog", None)["repositories"],
        serde_json::json!([])
    );
    // berth's own images are still there.
    assert!(all_images().contains(&b.image));

    // Nothing listens: refused before anything is fetched or built.
    let closed = format!("127.0.0.1:{}", registry::free_port());
    let (line, stderr) = failed_push_stderr(&closed);
    assert!(
        line.contains(&format!("registry {closed} is unreachable")),
        "{line}"
    );
    assert!(
        !stderr.contains("fetching"),
        "checked before the fetch: {stderr}"
    );
    assert!(
        !all_images().iter().any(|i| i.starts_with(&closed)),
        "a tag under {closed} was left"
    );

    // A push cut short by --build-timeout (the images are cached, so the time runs out while
    // the environment's layers are being sent): the tags it added are removed too.
    let slow = TestRegistry::start(false);
    let out = {
        let _g = build_lock();
        run_berth(&[
            "build",
            fixture(FIXTURE).to_str().unwrap(),
            "--push",
            "--registry",
            slow.addr.as_str(),
            "--build-timeout",
            "6s",
        ])
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("timed out after 6 s"),
        "{stderr}"
    );
    assert!(stderr.contains("pushing "), "the push had begun: {stderr}");
    assert_eq!(slow.local_tags(), Vec::<String>::new(), "{stderr}");

    // Bad settings: one line each, before anything else.
    let line = failed_push("http://127.0.0.1:5000");
    assert!(
        line.contains("invalid registry") && line.contains("scheme"),
        "{line}"
    );
    let line = failed_push("myregistry");
    assert!(line.contains("Docker Hub"), "{line}");
    let out = run_berth(&["build", fixture(FIXTURE).to_str().unwrap(), "--push"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--push needs a registry"), "{stderr}");
}

#[test]
fn scripts_registry_starts_once_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let port = registry::free_port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/registry");
    let run = |args: &[&str]| {
        std::process::Command::new(script)
            .args(args)
            .output()
            .unwrap()
    };
    let d = dir.path().to_str().unwrap();
    let first = run(&["start", &port, d]);
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        format!("127.0.0.1:{port}"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let pid = std::fs::read_to_string(dir.path().join("registry.pid")).unwrap();
    // Idempotent: the same registry, not a second one.
    let second = run(&["start", &port, d]);
    assert!(second.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("registry.pid")).unwrap(),
        pid
    );
    let status = run(&["status", d]);
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).trim(),
        format!("127.0.0.1:{port}")
    );
    assert!(run(&["stop", d]).status.success());
    assert!(!run(&["status", d]).status.success());
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

/// The events of `GET /build/gh/binder-examples/setup.py/master` on `web`.
fn web_build(web: &common::web::WebServer) -> Vec<serde_json::Value> {
    let _g = build_lock();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/build/gh/binder-examples/{FIXTURE}/master", web.url);
    rt.block_on(common::web::events(&c, &url))
}

#[test]
fn the_servers_builds_push_to_its_registry() {
    // A registry that refuses: the launch fails with the registry's reason, and starts nothing.
    let ro = TestRegistry::start(true);
    let web = common::web::WebServer::start(&format!("registry: {}\n", ro.addr));
    let ev = web_build(&web);
    let last = ev.last().unwrap();
    assert_eq!(last["phase"], "failed", "{ev:?}");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("registry {} refused the push", ro.addr)),
        "{message}"
    );
    assert!(
        !common::web::phases(&ev).contains(&"launching".to_string()),
        "{ev:?}"
    );
    assert_eq!(ro.local_tags(), Vec::<String>::new());
    drop(web);

    // A registry that takes it: the launch goes on, and the registry has both images.
    let reg = TestRegistry::start(false);
    let web = common::web::WebServer::start(&format!("registry: {}\n", reg.addr));
    let ev = web_build(&web);
    let last = ev.last().unwrap().clone();
    assert_eq!(last["phase"], "ready", "{ev:?}");
    let _stop = StopOnDrop(session_of_url(last["url"].as_str().unwrap()));
    assert!(
        ev.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Pushing the images"))),
        "{ev:?}"
    );
    // The session runs the registry's reference, which every node can pull.
    let image = last["image"].as_str().unwrap();
    let local = image
        .strip_prefix(&format!("{}/", reg.addr))
        .unwrap_or_else(|| panic!("the session runs the pushed image: {image}"));
    let (name, tag) = local.rsplit_once(':').unwrap();
    let tags = reg.json(&format!("/v2/{name}/tags/list"), None);
    assert_eq!(tags["tags"], serde_json::json!([tag]), "{image}");
    let catalog = reg.json("/v2/_catalog", None);
    let mut repos: Vec<&str> = catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    repos.sort();
    assert_eq!(repos, ["berth-env", name], "{catalog}");
    // What a launcher on another node will ask before it starts a session there.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = berth_builder::Registry::parse(&reg.addr).unwrap();
    assert!(rt.block_on(r.has_manifest(&r.reference(image))).unwrap());
    assert!(!rt
        .block_on(r.has_manifest(&r.reference("berth/none:0")))
        .unwrap());
}
