//! Properties of the env hash: it depends on exactly what can change an environment.

use std::collections::BTreeMap;

use berth_builder::hash::env_hash;
use berth_buildpacks::{plan, BuildPlan, FileEntry, PlanOptions, RepoFiles};
use proptest::prelude::*;
use proptest::sample::{select, Index};

const BASE_ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const REPO_DIR: &str = "/home/jovyan";

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

/// A valid PEP 508 requirement, optionally pinned.
fn requirement() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9]{0,7}(-[a-z0-9]{1,4})?",
        proptest::option::of((0u8..30, 0u8..30)),
    )
        .prop_map(|(name, pin)| match pin {
            Some((a, b)) => format!("{name}=={a}.{b}"),
            None => name,
        })
}

/// A valid requirements.txt.
fn requirements_txt() -> impl Strategy<Value = String> {
    prop::collection::vec(requirement(), 1..8).prop_map(|lines| lines.join("\n") + "\n")
}

/// A valid apt.txt.
fn apt_txt() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z][a-z0-9+.-]{0,10}", 1..5).prop_map(|lines| lines.join("\n") + "\n")
}

/// A valid environment.yml without a Python pin (so runtime.txt counts too).
fn environment_yml() -> impl Strategy<Value = String> {
    prop::collection::vec(
        "[a-z][a-z0-9]{0,7}".prop_filter("YAML keywords are not strings", |n| {
            !matches!(n.as_str(), "true" | "false" | "null" | "python")
        }),
        1..6,
    )
    .prop_map(|names| {
        let mut s = String::from("name: test\nchannels:\n  - conda-forge\ndependencies:\n");
        for n in names {
            s.push_str(&format!("  - {n}\n"));
        }
        s
    })
}

/// A path of a file that only holds content: notebooks, data, docs, images.
fn content_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (
            select(vec!["", "data/", "notebooks/", "docs/img/"]),
            "[a-z0-9_]{1,10}",
            select(vec!["ipynb", "csv", "md", "png"]),
        )
            .prop_map(|(dir, stem, ext)| format!("{dir}{stem}.{ext}")),
        1 => Just("README.md".to_string()),
    ]
}

fn content_files(min: usize) -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(
        content_path(),
        prop::collection::vec(any::<u8>(), 0..64),
        min..8,
    )
}

/// One change to a byte string; every variant makes it differ.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Append(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<u8>().prop_map(Mutation::Append),
    ]
}

fn apply(m: &Mutation, data: &mut Vec<u8>) {
    match *m {
        Mutation::Flip(i, x) if !data.is_empty() => {
            let i = i.index(data.len());
            data[i] ^= x;
        }
        Mutation::Delete(i) if !data.is_empty() => {
            let i = i.index(data.len());
            data.remove(i);
        }
        Mutation::Insert(i, b) => {
            let i = i.index(data.len() + 1);
            data.insert(i, b);
        }
        Mutation::Append(b) => data.push(b),
        // Nothing to flip or delete in an empty file: grow it instead.
        Mutation::Flip(..) | Mutation::Delete(..) => data.push(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// A file as (path, bytes, executable).
type Entry = (String, Vec<u8>, bool);

fn repo_from(files: &[Entry]) -> RepoFiles {
    let mut repo = RepoFiles::new();
    for (path, data, executable) in files {
        repo.insert(
            path.clone(),
            FileEntry::File {
                data: data.clone(),
                executable: *executable,
            },
        );
    }
    repo
}

fn with_content(spec: &[(&str, &str)], content: &BTreeMap<String, Vec<u8>>) -> RepoFiles {
    let mut repo = RepoFiles::new();
    for (path, text) in spec {
        repo.insert_file(*path, text.as_bytes());
    }
    for (path, data) in content {
        repo.insert_file(path.clone(), data.clone());
    }
    repo
}

fn plan_ok(repo: &RepoFiles) -> BuildPlan {
    plan(repo, &PlanOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn hash(p: &BuildPlan, repo: &RepoFiles) -> String {
    env_hash(p, repo, BASE_ID, REPO_DIR)
}

/// Replaces the bytes of the regular file at `path`.
fn mutate_file(repo: &RepoFiles, path: &str, m: &Mutation) -> RepoFiles {
    let mut out = repo.clone();
    let mut data = repo.read(path).expect("a regular file").to_vec();
    apply(m, &mut data);
    out.insert_file(path, data);
    out
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

/// A repository as a list of entries, and the same entries shuffled.
fn shuffled_repo() -> impl Strategy<Value = (Vec<Entry>, Vec<Entry>)> {
    (
        requirements_txt(),
        any::<bool>(),
        prop::collection::btree_map(
            "[a-z]{1,6}(/[a-z]{1,6}){0,2}\\.(py|txt|md|ipynb|csv)",
            (prop::collection::vec(any::<u8>(), 0..32), any::<bool>()),
            0..12,
        ),
    )
        .prop_map(|(reqs, setup_py, others)| {
            let mut v: Vec<Entry> = others
                .into_iter()
                .map(|(p, (d, x))| (p, d, x))
                .filter(|(p, _, _)| !p.starts_with("binder/") && p != "setup.py")
                .collect();
            v.retain(|(p, _, _)| p != "requirements.txt" && p != "apt.txt" && p != "runtime.txt");
            v.push(("requirements.txt".into(), reqs.into_bytes(), false));
            if setup_py {
                v.push((
                    "setup.py".into(),
                    b"from setuptools import setup\nsetup()\n".to_vec(),
                    false,
                ));
            }
            v
        })
        .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The order files are inserted in does not matter, for the plan nor for the hash.
    #[test]
    fn insertion_order_does_not_matter((ordered, shuffled) in shuffled_repo()) {
        let a = repo_from(&ordered);
        let b = repo_from(&shuffled);
        let pa = plan_ok(&a);
        let pb = plan_ok(&b);
        prop_assert_eq!(&pa, &pb);
        let h = hash(&pa, &a);
        prop_assert_eq!(h.len(), 64);
        prop_assert!(h.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        prop_assert_eq!(h, hash(&pb, &b));
    }

    /// Notebooks, data and docs do not enter the hash of a requirements.txt repository, whether
    /// they are added, changed or removed.
    #[test]
    fn content_files_do_not_change_a_requirements_hash(
        reqs in requirements_txt(),
        apt in proptest::option::of(apt_txt()),
        before in content_files(0),
        after in content_files(0),
    ) {
        let mut spec = vec![("requirements.txt", reqs.as_str()), ("runtime.txt", "python-3.11\n")];
        if let Some(apt) = &apt {
            spec.push(("apt.txt", apt.as_str()));
        }
        let bare = with_content(&spec, &BTreeMap::new());
        let a = with_content(&spec, &before);
        let b = with_content(&spec, &after);
        let p = plan_ok(&bare);
        prop_assert!(!p.whole_repo);
        prop_assert_eq!(&plan_ok(&a), &p);
        prop_assert_eq!(&plan_ok(&b), &p);
        let h = hash(&p, &bare);
        prop_assert_eq!(&hash(&p, &a), &h);
        prop_assert_eq!(&hash(&p, &b), &h);
    }

    /// The same for an environment.yml repository.
    #[test]
    fn content_files_do_not_change_a_conda_hash(
        env in environment_yml(),
        before in content_files(0),
        after in content_files(1),
    ) {
        let spec = [("environment.yml", env.as_str())];
        let a = with_content(&spec, &before);
        let b = with_content(&spec, &after);
        let p = plan_ok(&a);
        prop_assert!(!p.whole_repo);
        prop_assert_eq!(&plan_ok(&b), &p);
        prop_assert_eq!(hash(&p, &a), hash(&p, &b));
    }

    /// Any change to a spec file of a requirements.txt repository changes the hash: with the
    /// plan kept, and with the plan made again whenever the changed repository still plans.
    #[test]
    fn changing_a_requirements_spec_file_changes_the_hash(
        reqs in requirements_txt(),
        apt in apt_txt(),
        content in content_files(0),
        which in select(vec!["requirements.txt", "apt.txt", "runtime.txt"]),
        m in mutation(),
    ) {
        let repo = with_content(
            &[("requirements.txt", &reqs), ("apt.txt", &apt), ("runtime.txt", "python-3.11\n")],
            &content,
        );
        let p = plan_ok(&repo);
        prop_assert!(p.env_files.iter().any(|f| f == which));
        let h = hash(&p, &repo);
        let changed = mutate_file(&repo, which, &m);
        prop_assert_ne!(&hash(&p, &changed), &h, "{} changed by {:?}", which, m);
        if let Ok(p2) = plan(&changed, &PlanOptions::default()) {
            prop_assert_ne!(&hash(&p2, &changed), &h);
        }
    }

    /// The same for an environment.yml repository.
    #[test]
    fn changing_a_conda_spec_file_changes_the_hash(
        env in environment_yml(),
        apt in apt_txt(),
        content in content_files(0),
        which in select(vec!["environment.yml", "apt.txt", "runtime.txt"]),
        m in mutation(),
    ) {
        let repo = with_content(
            &[("environment.yml", &env), ("apt.txt", &apt), ("runtime.txt", "python-3.11\n")],
            &content,
        );
        let p = plan_ok(&repo);
        prop_assert_eq!(&p.buildpack, "conda");
        prop_assert!(p.env_files.iter().any(|f| f == which));
        let h = hash(&p, &repo);
        let changed = mutate_file(&repo, which, &m);
        prop_assert_ne!(&hash(&p, &changed), &h, "{} changed by {:?}", which, m);
        if let Ok(p2) = plan(&changed, &PlanOptions::default()) {
            prop_assert_ne!(&hash(&p2, &changed), &h);
        }
    }

    /// Making a spec file executable (or not) changes the hash too.
    #[test]
    fn executable_bit_of_a_spec_file_changes_the_hash(reqs in requirements_txt()) {
        let mut repo = RepoFiles::new();
        repo.insert_file("requirements.txt", reqs.as_bytes());
        let p = plan_ok(&repo);
        let h = hash(&p, &repo);
        let data = reqs.into_bytes();
        repo.insert("requirements.txt", FileEntry::File { data, executable: true });
        prop_assert_ne!(hash(&p, &repo), h);
    }

    /// With setup.py the environment depends on the whole repository: changing, adding or
    /// removing a content file changes the hash.
    #[test]
    fn whole_repo_content_changes_change_the_hash(
        content in content_files(1),
        pick in any::<Index>(),
        m in mutation(),
        extra in content_path(),
    ) {
        let spec = [("setup.py", "from setuptools import setup\nsetup(name='x')\n")];
        let repo = with_content(&spec, &content);
        let p = plan_ok(&repo);
        prop_assert!(p.whole_repo);
        let h = hash(&p, &repo);

        let path = content.keys().nth(pick.index(content.len())).unwrap().clone();
        let changed = mutate_file(&repo, &path, &m);
        prop_assert_eq!(&plan_ok(&changed), &p);
        prop_assert_ne!(&hash(&p, &changed), &h, "{} changed by {:?}", path, m);

        let mut fewer = content.clone();
        fewer.remove(&path);
        prop_assert_ne!(&hash(&p, &with_content(&spec, &fewer)), &h, "{} removed", path);

        if !content.contains_key(&extra) {
            let mut more = content.clone();
            more.insert(extra.clone(), Vec::new());
            prop_assert_ne!(&hash(&p, &with_content(&spec, &more)), &h, "{} added", extra);
        }
    }

    /// A different base image, or a different $REPO_DIR, is a different environment.
    #[test]
    fn base_image_and_repo_dir_change_the_hash(
        reqs in requirements_txt(),
        a in "sha256:[0-9a-f]{64}|",
        b in "sha256:[0-9a-f]{64}|",
        dir in "/[a-z]{1,10}",
    ) {
        let mut repo = RepoFiles::new();
        repo.insert_file("requirements.txt", reqs.as_bytes());
        let p = plan_ok(&repo);
        let ha = env_hash(&p, &repo, &a, REPO_DIR);
        let hb = env_hash(&p, &repo, &b, REPO_DIR);
        prop_assert_eq!(a == b, ha == hb);
        prop_assert_eq!(&ha, &env_hash(&p, &repo, &a, REPO_DIR), "deterministic");
        prop_assert_eq!(dir == REPO_DIR, env_hash(&p, &repo, &a, &dir) == ha);
    }
}

/// The empty base id (the dockerfile buildpack's) differs from any real one, and fields cannot
/// be shifted into each other (the length prefixes keep `"ab" + "c"` apart from `"a" + "bc"`).
#[test]
fn fields_are_delimited() {
    let mut repo = RepoFiles::new();
    repo.insert_file("requirements.txt", "numpy\n");
    let p = plan_ok(&repo);
    assert_ne!(
        env_hash(&p, &repo, "", "/srv/x"),
        env_hash(&p, &repo, "/srv", "/x")
    );
    assert_ne!(
        env_hash(&p, &repo, "ab", "c"),
        env_hash(&p, &repo, "a", "bc")
    );
    assert_ne!(
        env_hash(&p, &repo, "", REPO_DIR),
        env_hash(&p, &repo, BASE_ID, REPO_DIR)
    );
}
