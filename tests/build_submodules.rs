//! End to end: a repository's submodules are in its image, at their recorded commits, and one
//! that cannot be fetched is a visible warning naming its path.

mod common;

use common::*;

#[test]
fn submodule_files_are_in_the_image_and_a_missing_one_is_a_warning() {
    let top = tempfile::tempdir().unwrap();
    let t = top.path();
    let file_ok = ["-c", "protocol.file.allow=always"];
    git(
        t,
        &[
            "clone",
            "-q",
            "--bare",
            fixture("requirements").to_str().unwrap(),
            "lib.git",
        ],
    );
    git(
        t,
        &[
            "clone",
            "-q",
            "--bare",
            fixture("setup.py").to_str().unwrap(),
            "gone.git",
        ],
    );
    git(t, &["init", "-q", "-b", "main", "parent"]);
    let parent = t.join("parent");
    std::fs::write(parent.join("requirements.txt"), "# no packages\n").unwrap();
    let add = |url: &str, path: &str| {
        let mut args = file_ok.to_vec();
        args.extend(["submodule", "add", "-q", url, path]);
        git(&parent, &args);
    };
    add("../lib.git", "vendor/lib");
    add(t.join("gone.git").to_str().unwrap(), "vendor/gone");
    git(&parent, &["commit", "-qm", "with submodules"]);
    std::fs::remove_dir_all(t.join("gone.git")).unwrap();

    let out = {
        let _g = build_lock();
        berth()
            .args(["build", parent.to_str().unwrap(), "--json"])
            .output()
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: submodule"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with("warning: submodule vendor/gone was not fetched"),
        "{}",
        warnings[0]
    );
    let built: Built = serde_json::from_slice(&out.stdout).unwrap();
    let listing = in_image(&built.image, "cd vendor/lib && ls -A | sort");
    let expected = git(
        &fixture("requirements"),
        &["ls-tree", "--name-only", "HEAD"],
    );
    let mut expected: Vec<&str> = expected.lines().collect();
    expected.sort();
    assert_eq!(listing.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        in_image(&built.image, "ls -A vendor/gone | wc -l").trim(),
        "0"
    );

    // --plan shows the same warning, without a Docker engine.
    let out = run_berth(&["build", parent.to_str().unwrap(), "--plan"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: submodule vendor/gone was not fetched"),
        "{stderr}"
    );
    docker(&["rmi", &built.image]);
}
