//! The real fixture repositories (bare git repos under /work/shared/fixtures/repos): checkout
//! facts, and snapshots of their plans and rendered Dockerfiles.

use berth_builder::{Checkout, FetchError, RepoCache, DEFAULT_MAX_REPO_BYTES};
use berth_buildpacks::{plan, render_dockerfile, BuildPlan, PlanOptions, RenderOptions};

macro_rules! fixture {
    ($name:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/repos/",
            $name,
            ".git"
        )
    };
}

const CONDA: &str = fixture!("conda");
const REQUIREMENTS: &str = fixture!("requirements");
const APT_INSTALL: &str = fixture!("apt_install");
const SETUP_PY: &str = fixture!("setup.py");

fn checkout_in(
    cache: &std::path::Path,
    source: &str,
    reference: Option<&str>,
) -> Result<Checkout, FetchError> {
    RepoCache::new(cache).checkout(source, reference, DEFAULT_MAX_REPO_BYTES, &mut |_| {})
}

fn checkout(source: &str, reference: Option<&str>) -> Result<Checkout, FetchError> {
    let dir = tempfile::tempdir().unwrap();
    checkout_in(dir.path(), source, reference)
}

fn plan_options() -> PlanOptions {
    PlanOptions {
        available_pythons: vec!["3.11".into()],
        python_fallback: true,
        ..PlanOptions::default()
    }
}

/// Checks out a fixture at HEAD, plans and renders it.
fn plan_and_render(source: &str) -> (Checkout, BuildPlan, String) {
    let co = checkout(source, None).unwrap_or_else(|e| panic!("{source}: {e}"));
    let p = plan(&co.files, &plan_options()).unwrap_or_else(|e| panic!("{source}: {e}"));
    let dockerfile = render_dockerfile(&p, &co.files, &RenderOptions::default());
    (co, p, dockerfile)
}

fn is_hex40(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What `git rev-parse <rev>` prints for a fixture.
fn rev_parse(source: &str, rev: &str) -> String {
    let repo = git2::Repository::open_bare(source).unwrap();
    let id = repo.revparse_single(rev).unwrap().id();
    id.to_string()
}

// ---------------------------------------------------------------------------------------------
// Snapshots.
// ---------------------------------------------------------------------------------------------

#[test]
fn conda_fixture() {
    let (co, p, dockerfile) = plan_and_render(CONDA);
    assert!(is_hex40(&co.commit) && is_hex40(&co.tree));
    assert_eq!(p.buildpack, "conda");
    assert_eq!(p.python.as_ref().unwrap().version, "3.11");
    insta::assert_json_snapshot!("conda_plan", p);
    insta::assert_snapshot!("conda_dockerfile", dockerfile);
}

#[test]
fn requirements_fixture() {
    let (co, p, dockerfile) = plan_and_render(REQUIREMENTS);
    assert!(is_hex40(&co.commit));
    assert_eq!(p.buildpack, "requirements");
    let py = p.python.as_ref().unwrap();
    assert_eq!(py.requested.as_deref(), Some("3.10"));
    assert_eq!(py.version, "3.11");
    assert!(py.fallback);
    assert_eq!(p.warnings.len(), 1);
    // Without --python-fallback the same repository is refused.
    assert!(plan(&co.files, &PlanOptions::default()).is_err());
    insta::assert_json_snapshot!("requirements_plan", p);
    insta::assert_snapshot!("requirements_dockerfile", dockerfile);
}

#[test]
fn apt_install_fixture() {
    let (co, p, dockerfile) = plan_and_render(APT_INSTALL);
    assert!(is_hex40(&co.commit));
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.apt_packages, vec!["lolcat", "cowsay"]);
    assert_eq!(p.post_build.as_deref(), Some("postBuild"));
    assert!(p.whole_repo);
    // postBuild is executable in git, and the checkout keeps that.
    assert!(matches!(
        co.files.get("postBuild"),
        Some(berth_buildpacks::FileEntry::File {
            executable: true,
            ..
        })
    ));
    insta::assert_json_snapshot!("apt_install_plan", p);
    insta::assert_snapshot!("apt_install_dockerfile", dockerfile);
}

#[test]
fn setup_py_fixture() {
    let (co, p, dockerfile) = plan_and_render(SETUP_PY);
    assert!(is_hex40(&co.commit));
    assert_eq!(p.buildpack, "setup.py");
    assert_eq!(
        p.local_install,
        Some(berth_buildpacks::LocalInstall::Editable)
    );
    assert!(
        co.files.get("mypackage/core.py").is_some(),
        "nested folders are read"
    );
    insta::assert_json_snapshot!("setup_py_plan", p);
    insta::assert_snapshot!("setup_py_dockerfile", dockerfile);
}

// ---------------------------------------------------------------------------------------------
// Checkout facts.
// ---------------------------------------------------------------------------------------------

#[test]
fn head_resolves_to_the_fixture_head() {
    let head = rev_parse(CONDA, "HEAD");
    let co = checkout(CONDA, None).unwrap();
    assert_eq!(co.commit, head);
    assert_eq!(co.reference, "HEAD");
    assert_eq!(co.tree, rev_parse(CONDA, "HEAD^{tree}"));
    // The URL of a local path is its canonical absolute path.
    let canonical = std::fs::canonicalize(CONDA).unwrap();
    assert_eq!(co.url, canonical.to_string_lossy());

    let co = checkout(CONDA, Some("HEAD")).unwrap();
    assert_eq!(co.commit, head);
}

#[test]
fn files_match_the_tree() {
    let co = checkout(CONDA, None).unwrap();
    let paths: Vec<&str> = co.files.iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        vec![
            ".github/workflows/binder-badge.yml",
            "LICENSE",
            "README.md",
            "environment.yml",
            "index.ipynb"
        ]
    );
    let repo = git2::Repository::open_bare(CONDA).unwrap();
    let tree = repo.head().unwrap().peel_to_tree().unwrap();
    let entry = tree
        .get_path(std::path::Path::new("environment.yml"))
        .unwrap();
    let blob = repo.find_blob(entry.id()).unwrap();
    assert_eq!(co.files.read("environment.yml"), Some(blob.content()));
}

#[test]
fn short_commit_and_branch_resolve_to_the_same_commit() {
    let head = rev_parse(CONDA, "HEAD");
    let dir = tempfile::tempdir().unwrap();
    let by_short = checkout_in(dir.path(), CONDA, Some(&head[..7])).unwrap();
    assert_eq!(by_short.commit, head);
    let by_full = checkout_in(dir.path(), CONDA, Some(&head)).unwrap();
    assert_eq!(by_full.commit, head);
    let by_branch = checkout_in(dir.path(), CONDA, Some("main")).unwrap();
    assert_eq!(by_branch.commit, head);
    assert_eq!(by_branch.reference, "main");
    assert_eq!(by_branch.tree, by_short.tree);

    // An older commit by its short id.
    let parent = rev_parse(CONDA, "HEAD~1");
    let old = checkout_in(dir.path(), CONDA, Some(&parent[..7])).unwrap();
    assert_eq!(old.commit, parent);

    // The other fixtures' default branch is master.
    let head = rev_parse(SETUP_PY, "HEAD");
    assert_eq!(checkout(SETUP_PY, Some("master")).unwrap().commit, head);
}

#[test]
fn unknown_ref() {
    for r in [
        "no-such-branch",
        "v9.9.9",
        "deadbeefdeadbeef",
        "refs/heads/nope",
    ] {
        match checkout(CONDA, Some(r)) {
            Err(FetchError::UnknownRef { reference, url }) => {
                assert_eq!(reference, r);
                assert!(url.ends_with("conda.git"), "{url}");
            }
            other => panic!("{r}: expected UnknownRef, got {other:?}"),
        }
    }
    // The branch of another fixture is not a branch of this one.
    assert!(matches!(
        checkout(CONDA, Some("master")),
        Err(FetchError::UnknownRef { .. })
    ));
}

#[test]
fn invalid_ref() {
    for r in ["-x", "--upload-pack=touch /tmp/pwned", "a b", "", "main\n"] {
        match checkout(CONDA, Some(r)) {
            Err(FetchError::InvalidRef(got)) => assert_eq!(got, r),
            other => panic!("{r:?}: expected InvalidRef, got {other:?}"),
        }
    }
}

#[test]
fn not_a_repository() {
    let plain = tempfile::tempdir().unwrap();
    std::fs::write(plain.path().join("README.md"), "not a repo\n").unwrap();
    let source = plain.path().to_str().unwrap();
    match checkout(source, None) {
        Err(e @ FetchError::NotARepository(_)) => {
            assert!(e.to_string().contains("is not a git repository"), "{e}");
        }
        other => panic!("expected NotARepository, got {other:?}"),
    }
    let missing = plain.path().join("does-not-exist");
    assert!(matches!(
        checkout(missing.to_str().unwrap(), None),
        Err(FetchError::NotARepository(_))
    ));
}

#[test]
fn too_large() {
    let dir = tempfile::tempdir().unwrap();
    let cache = RepoCache::new(dir.path());
    match cache.checkout(CONDA, None, 100, &mut |_| {}) {
        Err(FetchError::TooLarge { limit }) => assert_eq!(limit, 100),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The exact size of the tree fits.
    let co = checkout(CONDA, None).unwrap();
    let size = co.files.total_bytes();
    assert!(cache.checkout(CONDA, None, size, &mut |_| {}).is_ok());
    assert!(matches!(
        cache.checkout(CONDA, None, size - 1, &mut |_| {}),
        Err(FetchError::TooLarge { .. })
    ));
}

#[test]
fn second_checkout_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = RepoCache::new(dir.path());
    let first = cache
        .checkout(REQUIREMENTS, None, DEFAULT_MAX_REPO_BYTES, &mut |_| {})
        .unwrap();
    let clone = cache.path_for(&first.url);
    assert!(
        clone.join("HEAD").exists(),
        "{} is a bare clone",
        clone.display()
    );

    let second = cache
        .checkout(REQUIREMENTS, None, DEFAULT_MAX_REPO_BYTES, &mut |_| {})
        .unwrap();
    assert_eq!(second.commit, first.commit);
    assert_eq!(second.tree, first.tree);
    assert_eq!(second.files, first.files);
    assert_eq!(cache.path_for(&second.url), clone);

    // Another URL gets its own clone in the same cache.
    let other = cache
        .checkout(CONDA, None, DEFAULT_MAX_REPO_BYTES, &mut |_| {})
        .unwrap();
    assert_ne!(cache.path_for(&other.url), clone);
    assert_eq!(other.commit, rev_parse(CONDA, "HEAD"));

    // A broken cached clone is replaced rather than trusted.
    std::fs::remove_dir_all(&clone).unwrap();
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::write(clone.join("garbage"), "x").unwrap();
    let third = cache
        .checkout(REQUIREMENTS, None, DEFAULT_MAX_REPO_BYTES, &mut |_| {})
        .unwrap();
    assert_eq!(third.commit, first.commit);
}
