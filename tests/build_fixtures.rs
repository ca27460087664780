//! End to end: `berth build` on the real fixture repositories, with the real Docker engine.

mod common;

use common::*;

/// The image runs JupyterLab as uid 1000 with the repository at `$REPO_DIR`.
fn assert_jupyter_image(image: &str) {
    let out = in_image(image, "id -u; echo $REPO_DIR; jupyter lab --version");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000", "{out}");
    assert_eq!(lines[1], "/home/jovyan", "{out}");
    assert!(
        lines[2].starts_with('4'),
        "jupyter lab --version printed {out}"
    );
}

/// Executes a notebook of the repository inside the image (as a user would on a Binder).
fn execute_notebook(image: &str, notebook: &str) {
    let out = in_image(
        image,
        &format!(
            "jupyter nbconvert --to notebook --execute --output-dir /tmp {notebook} 2>&1 && echo EXECUTED"
        ),
    );
    assert!(
        out.contains("EXECUTED"),
        "notebook {notebook} failed:\n{out}"
    );
}

#[test]
fn conda_fixture_builds_a_working_environment() {
    let b = build(&fixture("conda"), &[]);
    assert_eq!(b.buildpack, "conda");
    assert_eq!(b.env_image, format!("berth-env:{}", b.env_hash));
    assert_eq!(b.commit.len(), 40);
    let out = in_image(
        &b.image,
        "python -c 'import numpy, pandas, bokeh, dask, distributed; print(\"IMPORTED\", dask.__version__)'",
    );
    assert!(out.starts_with("IMPORTED"), "{out}");
    assert_jupyter_image(&b.image);
    // The fixture's notebook uses pandas' removed "3M" offset alias, which fails with any
    // current pandas; check the same libraries do real work instead.
    let out = in_image(
        &b.image,
        "python -c 'import dask.array as da, dask.dataframe as dd, dask.datasets as ds; \
         print(int(da.ones((1000, 1000), chunks=(100, 100)).sum().compute())); \
         print(len(ds.timeseries(start=\"2000-01-01\", end=\"2000-01-03\", freq=\"1h\")))'",
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["1000000", "48"],
        "{out}"
    );
    let l = labels(&b.image);
    assert_eq!(l["berth.env_hash"], b.env_hash.as_str());
    assert_eq!(l["berth.commit"], b.commit.as_str());
    assert_eq!(l["berth.buildpack"], "conda");
    assert_eq!(l["berth.python.actual"], "3.11");
    assert_eq!(l["berth.repo_url"], fixture("conda").to_str().unwrap());

    // Nothing changed: the same images, no environment build.
    let again = build(&fixture("conda"), &[]);
    assert!(again.cached_env);
    assert_eq!(again.image, b.image);
    assert_eq!(again.env_hash, b.env_hash);

    // The same commit from another URL: the environment is reused, and the repository image
    // (same name, same tree) records where this build came from, not the earlier one.
    let dir = tempfile::tempdir().unwrap();
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            fixture("conda").to_str().unwrap(),
            "conda.git",
        ],
    );
    let elsewhere = dir.path().join("conda.git").canonicalize().unwrap();
    let moved = build(&elsewhere, &[]);
    assert!(moved.cached_env);
    assert_eq!(moved.commit, b.commit);
    assert_eq!(moved.image, b.image);
    assert_eq!(
        labels(&moved.image)["berth.repo_url"],
        elsewhere.to_str().unwrap()
    );
}

#[test]
fn requirements_fixture_needs_and_records_the_python_fallback() {
    let _g = build_lock();
    let out = run_berth(&["build", fixture("requirements").to_str().unwrap()]);
    drop(_g);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runtime.txt asks for Python 3.10"), "{err}");
    assert!(err.contains("--python-fallback"), "{err}");

    let b = build(&fixture("requirements"), &["--python-fallback"]);
    assert_eq!(b.buildpack, "requirements");
    let out = in_image(
        &b.image,
        "python -c 'import seaborn, numpy; print(\"IMPORTED\", numpy.__version__)'",
    );
    // The repository's pin wins over whatever the base packages would pull in.
    assert_eq!(out.trim(), "IMPORTED 2.2.2");
    assert_jupyter_image(&b.image);
    let l = labels(&b.image);
    assert_eq!(l["berth.python.requested"], "3.10");
    assert_eq!(l["berth.python.actual"], "3.11");
}

#[test]
fn apt_install_fixture_installs_packages_and_runs_post_build() {
    let b = build(&fixture("apt_install"), &[]);
    assert_eq!(b.buildpack, "python");
    assert_eq!(
        in_image(&b.image, "command -v cowsay").trim(),
        "/usr/games/cowsay"
    );
    assert!(in_image(&b.image, "cowsay moo").contains("moo"));
    assert_jupyter_image(&b.image);
    execute_notebook(&b.image, "index.ipynb");

    // postBuild runs as the user at build time, and start wraps the container's command.
    let dir = clone_fixture("apt_install");
    let repo = dir.path().join("repo");
    let mut post = std::fs::read_to_string(repo.join("postBuild")).unwrap();
    post.push_str("\nid -u > \"$HOME/.postbuild-ran\"\n");
    std::fs::write(repo.join("postBuild"), post).unwrap();
    std::fs::write(
        repo.join("start"),
        "#!/bin/bash\nexport BERTH_START_RAN=yes\nexec \"$@\"\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "commit",
            "-qm",
            "postBuild leaves a mark; start sets a variable",
        ],
    );
    let b2 = build(&repo, &[]);
    assert_ne!(
        b2.env_hash, b.env_hash,
        "postBuild changed, so the environment must change"
    );
    assert_eq!(
        in_image(&b2.image, "cat $HOME/.postbuild-ran").trim(),
        "1000"
    );
    assert_eq!(in_image(&b2.image, "echo $BERTH_START_RAN").trim(), "yes");
}

#[test]
fn setup_py_fixture_installs_the_local_package() {
    let b = build(&fixture("setup.py"), &[]);
    assert_eq!(b.buildpack, "setup.py");
    let out = in_image(
        &b.image,
        "cd /tmp && python -c 'import mypackage; print(\"IMPORTED\", mypackage.__file__)'",
    );
    assert!(out.starts_with("IMPORTED /home/jovyan/mypackage"), "{out}");
    assert_jupyter_image(&b.image);
    execute_notebook(&b.image, "example_notebook/import_mypackage.ipynb");
}

#[test]
fn notebook_only_commit_reuses_the_environment() {
    let first = build(&fixture("conda"), &[]);
    let dir = clone_fixture("conda");
    let repo = dir.path().join("repo");
    let nb = std::fs::read_to_string(repo.join("index.ipynb")).unwrap();
    let marker = "berth-notebook-only-change-7f3a";
    let edited = nb.replacen(
        "## Setup plotting",
        &format!("## Setup plotting {marker}"),
        1,
    );
    assert_ne!(edited, nb, "the notebook has the heading this test edits");
    std::fs::write(repo.join("index.ipynb"), edited).unwrap();
    git(&repo, &["commit", "-qam", "edit the notebook only"]);

    let second = build(&repo, &[]);
    assert_eq!(second.env_hash, first.env_hash);
    assert!(
        second.cached_env,
        "a notebook-only commit must not build the environment"
    );
    assert_ne!(second.image, first.image);
    assert_ne!(second.commit, first.commit);
    let grep = in_image(
        &second.image,
        &format!("grep -c {marker} $REPO_DIR/index.ipynb"),
    );
    assert_eq!(grep.trim(), "1");
    let old = in_image(
        &first.image,
        &format!("grep -c {marker} $REPO_DIR/index.ipynb || true"),
    );
    assert_eq!(old.trim(), "0");
}

#[test]
fn repository_without_spec_files_gets_python_with_the_kernel_and_dask() {
    let r = repo_with(&[
        ("README.md", "# Just a notebook\n"),
        ("analysis.ipynb", "{}\n"),
    ]);
    let b = build(r.path(), &[]);
    assert_eq!(b.buildpack, "python");
    assert_jupyter_image(&b.image);
    let out = in_image(
        &b.image,
        "python -c 'import dask, distributed, ipykernel; print(\"IMPORTED\")'; \
         python -c 'import bokeh' 2>/dev/null || echo 'no bokeh'; ls $REPO_DIR",
    );
    assert!(out.starts_with("IMPORTED"), "{out}");
    // The kernel holds what was asked for and the cluster's packages, nothing more: the
    // dashboard's bokeh lives in the scheduler's own folder.
    assert!(out.contains("no bokeh"), "{out}");
    assert!(out.contains("analysis.ipynb"), "{out}");
}
