//! Detection, planning and rendering for every spec convention, on in-memory repositories.

use berth_buildpacks::{
    conda_to_pypi, plan, render_dockerfile, BuildPlan, BuildpackError, CondaMapping, FileEntry,
    LocalInstall, PlanOptions, RenderOptions, RepoFiles,
};

const DOCKERFILE: &str = "FROM python:3.11-slim\nRUN pip install numpy\nCOPY . /srv\n";
const ENV_YML: &str = "name: example\nchannels:\n  - conda-forge\ndependencies:\n  - numpy\n";
const PIPFILE: &str = "[packages]\nrequests = \"*\"\n";
const PIPFILE_LOCK: &str = r#"{
  "_meta": {"requires": {"python_version": "3.11"}},
  "default": {
    "numpy": {"version": "==2.2.2"},
    "requests": {"version": "==2.31.0"}
  },
  "develop": {
    "pytest": {"version": "==8.0.0"}
  }
}"#;
const REQUIREMENTS: &str = "numpy==2.2.2\npandas>=2\n";
const SETUP_PY: &str = "from setuptools import setup\nsetup(name='mypackage')\n";
const PYPROJECT: &str = "[project]\nname = \"mypackage\"\nversion = \"0.1\"\n\n\
                         [build-system]\nrequires = [\"hatchling\"]\n\
                         build-backend = \"hatchling.build\"\n";
const PYPROJECT_TOOL_ONLY: &str = "[tool.black]\nline-length = 100\n";
const APT: &str = "# tools\ncowsay\nlolcat  fortune\n";
const POST_BUILD: &str = "#!/bin/bash\nset -e\necho done\n";
const START: &str = "#!/bin/bash\nexport X=1\nexec \"$@\"\n";

fn repo(files: &[(&str, &str)]) -> RepoFiles {
    let mut repo = RepoFiles::new();
    for (path, text) in files {
        repo.insert_file(*path, text.as_bytes());
    }
    repo
}

fn try_plan(files: &[(&str, &str)]) -> Result<BuildPlan, BuildpackError> {
    plan(&repo(files), &PlanOptions::default())
}

fn plan_of(files: &[(&str, &str)]) -> BuildPlan {
    try_plan(files).unwrap_or_else(|e| panic!("{files:?}: {e}"))
}

fn err_of(files: &[(&str, &str)]) -> BuildpackError {
    match try_plan(files) {
        Ok(p) => panic!("{files:?} planned as {p:?}, expected an error"),
        Err(e) => e,
    }
}

fn fallback_opts() -> PlanOptions {
    PlanOptions {
        available_pythons: vec!["3.11".into()],
        python_fallback: true,
        ..PlanOptions::default()
    }
}

fn assert_sorted(v: &[String]) {
    let mut s = v.to_vec();
    s.sort();
    s.dedup();
    assert_eq!(v, s.as_slice(), "env_files must be sorted and unique");
}

// ---------------------------------------------------------------------------------------------
// Each buildpack alone.
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_alone() {
    let p = plan_of(&[("Dockerfile", DOCKERFILE)]);
    assert_eq!(p.buildpack, "dockerfile");
    assert_eq!(p.spec_dir, "");
    assert_eq!(p.dockerfile.as_deref(), Some("Dockerfile"));
    assert_eq!(p.env_files, vec!["Dockerfile"]);
    assert!(p.whole_repo);
    assert_eq!(p.python, None);
}

#[test]
fn environment_yml_alone() {
    let p = plan_of(&[("environment.yml", ENV_YML)]);
    assert_eq!(p.buildpack, "conda");
    assert_eq!(p.env_files, vec!["environment.yml"]);
    assert_eq!(p.packages, vec!["numpy"]);
    assert!(!p.whole_repo);
}

#[test]
fn environment_yaml_alone() {
    let p = plan_of(&[("environment.yaml", ENV_YML)]);
    assert_eq!(p.buildpack, "conda");
    assert_eq!(p.env_files, vec!["environment.yaml"]);
    assert_eq!(p.packages, vec!["numpy"]);
}

#[test]
fn pipfile_alone() {
    let p = plan_of(&[("Pipfile", PIPFILE)]);
    assert_eq!(p.buildpack, "pipfile");
    assert_eq!(p.env_files, vec!["Pipfile"]);
    assert_eq!(p.packages, vec!["requests"]);
}

#[test]
fn pipfile_lock_alone() {
    let p = plan_of(&[("Pipfile.lock", PIPFILE_LOCK)]);
    assert_eq!(p.buildpack, "pipfile");
    assert_eq!(p.env_files, vec!["Pipfile.lock"]);
}

#[test]
fn pipfile_and_lock() {
    let p = plan_of(&[("Pipfile", PIPFILE), ("Pipfile.lock", PIPFILE_LOCK)]);
    assert_eq!(p.buildpack, "pipfile");
    assert_eq!(p.env_files, vec!["Pipfile", "Pipfile.lock"]);
    // The lock's pins win over the Pipfile's loose `requests = "*"`.
    assert!(
        p.packages.contains(&"requests==2.31.0".to_string()),
        "{:?}",
        p.packages
    );
    assert!(
        !p.packages.contains(&"requests".to_string()),
        "{:?}",
        p.packages
    );
}

#[test]
fn requirements_alone() {
    let p = plan_of(&[("requirements.txt", REQUIREMENTS)]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(p.requirements_files, vec!["requirements.txt"]);
    assert_eq!(p.env_files, vec!["requirements.txt"]);
    assert_eq!(p.local_install, None);
    assert!(!p.whole_repo);
    assert!(p.packages.is_empty());
}

#[test]
fn setup_py_alone() {
    let p = plan_of(&[("setup.py", SETUP_PY)]);
    assert_eq!(p.buildpack, "setup.py");
    assert_eq!(p.local_install, Some(LocalInstall::Editable));
    assert_eq!(p.env_files, vec!["setup.py"]);
    assert!(p.whole_repo);
}

#[test]
fn pyproject_alone() {
    let p = plan_of(&[("pyproject.toml", PYPROJECT)]);
    assert_eq!(p.buildpack, "pyproject");
    assert_eq!(p.local_install, Some(LocalInstall::Package));
    assert_eq!(p.env_files, vec!["pyproject.toml"]);
    assert!(p.whole_repo);
}

#[test]
fn pyproject_without_project_tables_is_plain_python() {
    let p = plan_of(&[("pyproject.toml", PYPROJECT_TOOL_ONLY)]);
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.local_install, None);
    assert!(!p.whole_repo);
    assert!(p.env_files.is_empty());

    // Only one of the two tables is not enough either.
    let p = plan_of(&[(
        "pyproject.toml",
        "[project]\nname = \"x\"\nversion = \"1\"\n",
    )]);
    assert_eq!(p.buildpack, "python");
    let p = plan_of(&[("pyproject.toml", "[build-system]\nrequires = []\n")]);
    assert_eq!(p.buildpack, "python");
    // Unparseable pyproject.toml is not installable, not an error.
    let p = plan_of(&[("pyproject.toml", "[project\n")]);
    assert_eq!(p.buildpack, "python");
}

#[test]
fn nothing_is_plain_python() {
    let p = plan_of(&[]);
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.spec_dir, "");
    assert!(p.env_files.is_empty());
    assert!(!p.whole_repo);
    assert_eq!(p.dockerfile, None);
    assert_eq!(p.local_install, None);
    assert!(p.packages.is_empty() && p.requirements_files.is_empty() && p.apt_packages.is_empty());
    assert!(p.warnings.is_empty());
    let py = p.python.expect("python");
    assert_eq!(py.version, "3.11");
    assert_eq!(py.requested, None);
    assert!(!py.fallback);

    // Content-only files do not change that.
    let p = plan_of(&[
        ("README.md", "# hi\n"),
        ("index.ipynb", "{}"),
        ("data/x.csv", "a,b\n"),
    ]);
    assert_eq!(p.buildpack, "python");
    assert!(p.env_files.is_empty());
}

#[test]
fn default_python_is_the_first_available() {
    let opts = PlanOptions {
        available_pythons: vec!["3.12".into(), "3.11".into()],
        python_fallback: false,
        ..PlanOptions::default()
    };
    let p = plan(&repo(&[("requirements.txt", "numpy\n")]), &opts).unwrap();
    assert_eq!(p.python.unwrap().version, "3.12");
}

#[test]
fn runtime_txt_only() {
    let p = plan_of(&[("runtime.txt", "python-3.11\n")]);
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.env_files, vec!["runtime.txt"]);
    let py = p.python.unwrap();
    assert_eq!(py.requested.as_deref(), Some("3.11"));
    assert_eq!(py.version, "3.11");
    assert!(!py.fallback);

    let p = plan_of(&[("runtime.txt", "# comment\n\npython-3.11.4\n")]);
    assert_eq!(p.python.unwrap().requested.as_deref(), Some("3.11"));

    // An R runtime is no Python request.
    let p = plan_of(&[("runtime.txt", "r-4.1-2022-01-01\n")]);
    assert_eq!(p.python.unwrap().requested, None);
}

#[test]
fn runtime_txt_applies_to_requirements() {
    let p = plan_of(&[
        ("requirements.txt", REQUIREMENTS),
        ("runtime.txt", "python-3.11"),
    ]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(p.python.unwrap().requested.as_deref(), Some("3.11"));
    assert_eq!(p.env_files, vec!["requirements.txt", "runtime.txt"]);
}

// ---------------------------------------------------------------------------------------------
// Precedence.
// ---------------------------------------------------------------------------------------------

#[test]
fn precedence_as_repo2docker() {
    let ladder: &[(&str, &str, &str)] = &[
        ("Dockerfile", DOCKERFILE, "dockerfile"),
        ("environment.yml", ENV_YML, "conda"),
        ("Pipfile", PIPFILE, "pipfile"),
        ("requirements.txt", REQUIREMENTS, "requirements"),
        ("setup.py", SETUP_PY, "setup.py"),
        ("pyproject.toml", PYPROJECT, "pyproject"),
    ];
    for i in 0..ladder.len() {
        let files: Vec<(&str, &str)> = ladder[i..].iter().map(|(p, t, _)| (*p, *t)).collect();
        let p = plan_of(&files);
        assert_eq!(p.buildpack, ladder[i].2, "with {files:?}");
    }
    // Every pair, too: the higher one always wins.
    for i in 0..ladder.len() {
        for j in i + 1..ladder.len() {
            let files = [(ladder[j].0, ladder[j].1), (ladder[i].0, ladder[i].1)];
            assert_eq!(plan_of(&files).buildpack, ladder[i].2, "with {files:?}");
        }
    }
}

#[test]
fn environment_yml_beats_environment_yaml() {
    let p = plan_of(&[
        ("environment.yml", ENV_YML),
        ("environment.yaml", "dependencies:\n  - scipy\n"),
    ]);
    assert_eq!(p.env_files, vec!["environment.yml"]);
    assert_eq!(p.packages, vec!["numpy"]);
}

#[test]
fn requirements_with_setup_py_or_pyproject_installs_the_repo_too() {
    let p = plan_of(&[("requirements.txt", REQUIREMENTS), ("setup.py", SETUP_PY)]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(p.local_install, Some(LocalInstall::Editable));
    assert!(p.whole_repo);
    assert_eq!(p.env_files, vec!["requirements.txt", "setup.py"]);

    let p = plan_of(&[
        ("requirements.txt", REQUIREMENTS),
        ("pyproject.toml", PYPROJECT),
    ]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(p.local_install, Some(LocalInstall::Package));
    assert!(p.whole_repo);

    // setup.py wins over pyproject.toml for the local install.
    let p = plan_of(&[("setup.py", SETUP_PY), ("pyproject.toml", PYPROJECT)]);
    assert_eq!(p.buildpack, "setup.py");
    assert_eq!(p.local_install, Some(LocalInstall::Editable));
}

// ---------------------------------------------------------------------------------------------
// binder/ and .binder/.
// ---------------------------------------------------------------------------------------------

#[test]
fn binder_dir_is_the_only_place_read() {
    let p = plan_of(&[
        ("environment.yml", ENV_YML),
        ("binder/requirements.txt", REQUIREMENTS),
    ]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(p.spec_dir, "binder");
    assert_eq!(p.requirements_files, vec!["binder/requirements.txt"]);
    assert_eq!(p.env_files, vec!["binder/requirements.txt"]);
    assert!(!p.whole_repo);
}

#[test]
fn dot_binder_dir_works_the_same() {
    let p = plan_of(&[
        ("Dockerfile", DOCKERFILE),
        ("requirements.txt", "this is not read!\n"),
        (".binder/environment.yml", ENV_YML),
    ]);
    assert_eq!(p.buildpack, "conda");
    assert_eq!(p.spec_dir, ".binder");
    assert_eq!(p.env_files, vec![".binder/environment.yml"]);
}

#[test]
fn root_files_are_ignored_with_a_binder_dir() {
    // Root setup.py: no local install.
    let p = plan_of(&[
        ("setup.py", SETUP_PY),
        ("binder/requirements.txt", REQUIREMENTS),
    ]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(p.local_install, None);
    assert!(!p.whole_repo);
    assert_eq!(p.env_files, vec!["binder/requirements.txt"]);

    // Root setup.py and pyproject.toml do not select their buildpacks either.
    let p = plan_of(&[("setup.py", SETUP_PY), ("binder/README.md", "hi\n")]);
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.local_install, None);
    let p = plan_of(&[("pyproject.toml", PYPROJECT), ("binder/README.md", "hi\n")]);
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.spec_dir, "binder");

    // Nor do the root's Dockerfile, apt.txt, postBuild, start and runtime.txt.
    let p = plan_of(&[
        ("Dockerfile", DOCKERFILE),
        ("apt.txt", "$(id)\n"),
        ("postBuild", POST_BUILD),
        ("start", START),
        ("runtime.txt", "python-3.10\n"),
        ("binder/apt.txt", "cowsay\n"),
    ]);
    assert_eq!(p.buildpack, "python");
    assert_eq!(p.apt_packages, vec!["cowsay"]);
    assert_eq!(p.post_build, None);
    assert_eq!(p.start, None);
    assert_eq!(p.python.unwrap().requested, None);
    assert_eq!(p.env_files, vec!["binder/apt.txt"]);
}

#[test]
fn binder_dir_addons() {
    let p = plan_of(&[
        ("binder/requirements.txt", REQUIREMENTS),
        ("binder/apt.txt", APT),
        ("binder/postBuild", POST_BUILD),
        ("binder/start", START),
        ("binder/runtime.txt", "python-3.11\n"),
    ]);
    assert_eq!(p.post_build.as_deref(), Some("binder/postBuild"));
    assert_eq!(p.start.as_deref(), Some("binder/start"));
    assert_eq!(p.apt_packages, vec!["cowsay", "lolcat", "fortune"]);
    assert_eq!(
        p.env_files,
        vec![
            "binder/apt.txt",
            "binder/postBuild",
            "binder/requirements.txt",
            "binder/runtime.txt",
            "binder/start"
        ]
    );
    assert!(p.whole_repo);
}

#[test]
fn binder_file_is_not_a_binder_dir() {
    // A file called `binder` (or `binder.txt`) is no folder.
    let p = plan_of(&[
        ("binder", "x"),
        ("binder.txt", "x"),
        ("requirements.txt", REQUIREMENTS),
    ]);
    assert_eq!(p.spec_dir, "");
    assert_eq!(p.buildpack, "requirements");
}

#[test]
fn both_binder_dirs_are_ambiguous() {
    let e = err_of(&[
        ("binder/requirements.txt", REQUIREMENTS),
        (".binder/environment.yml", ENV_YML),
    ]);
    assert_eq!(e, BuildpackError::AmbiguousBinderDir);
    let e = err_of(&[("binder/a", "x"), (".binder/b", "y")]);
    assert_eq!(e, BuildpackError::AmbiguousBinderDir);
}

// ---------------------------------------------------------------------------------------------
// apt.txt, postBuild, start.
// ---------------------------------------------------------------------------------------------

/// A spec for every non-Dockerfile buildpack, with its expected name.
fn non_dockerfile_specs() -> Vec<(Vec<(&'static str, &'static str)>, &'static str)> {
    vec![
        (vec![("environment.yml", ENV_YML)], "conda"),
        (vec![("Pipfile", PIPFILE)], "pipfile"),
        (vec![("Pipfile.lock", PIPFILE_LOCK)], "pipfile"),
        (vec![("requirements.txt", REQUIREMENTS)], "requirements"),
        (vec![("setup.py", SETUP_PY)], "setup.py"),
        (vec![("pyproject.toml", PYPROJECT)], "pyproject"),
        (vec![], "python"),
    ]
}

#[test]
fn addons_apply_to_every_non_dockerfile_buildpack() {
    for (spec, name) in non_dockerfile_specs() {
        let mut files = spec.clone();
        files.extend([
            ("apt.txt", APT),
            ("postBuild", POST_BUILD),
            ("start", START),
        ]);
        let p = plan_of(&files);
        assert_eq!(p.buildpack, name);
        assert_eq!(
            p.apt_packages,
            vec!["cowsay", "lolcat", "fortune"],
            "{name}"
        );
        assert_eq!(p.post_build.as_deref(), Some("postBuild"), "{name}");
        assert_eq!(p.start.as_deref(), Some("start"), "{name}");
        assert!(
            p.whole_repo,
            "{name}: postBuild makes the whole repo the input"
        );
        for f in ["apt.txt", "postBuild", "start"] {
            assert!(
                p.env_files.iter().any(|e| e == f),
                "{name}: {f} in {:?}",
                p.env_files
            );
        }
        for (f, _) in &spec {
            assert!(
                p.env_files.iter().any(|e| e == f),
                "{name}: {f} in {:?}",
                p.env_files
            );
        }
        assert_sorted(&p.env_files);
    }
}

#[test]
fn apt_and_start_alone_do_not_make_whole_repo() {
    for (spec, name) in non_dockerfile_specs() {
        if matches!(name, "setup.py" | "pyproject") {
            continue;
        }
        let mut files = spec.clone();
        files.extend([("apt.txt", APT), ("start", START)]);
        let p = plan_of(&files);
        assert_eq!(p.buildpack, name);
        assert!(!p.whole_repo, "{name}");
        assert_eq!(p.post_build, None);
        assert_eq!(p.start.as_deref(), Some("start"));
        assert_eq!(p.apt_packages, vec!["cowsay", "lolcat", "fortune"]);
    }
}

#[test]
fn addons_are_ignored_with_a_dockerfile() {
    let p = plan_of(&[
        ("Dockerfile", DOCKERFILE),
        ("apt.txt", APT),
        ("postBuild", POST_BUILD),
        ("start", START),
        ("runtime.txt", "python-3.10\n"),
        ("requirements.txt", REQUIREMENTS),
    ]);
    assert_eq!(p.buildpack, "dockerfile");
    assert!(p.apt_packages.is_empty());
    assert_eq!(p.post_build, None);
    assert_eq!(p.start, None);
    assert_eq!(p.python, None);
    assert!(p.requirements_files.is_empty());
    assert_eq!(p.env_files, vec!["Dockerfile"]);

    // Not even a bad apt.txt matters then.
    let p = plan_of(&[
        ("Dockerfile", DOCKERFILE),
        ("apt.txt", "cowsay; rm -rf /\n"),
    ]);
    assert_eq!(p.buildpack, "dockerfile");
}

#[test]
fn apt_txt_parsing() {
    let p = plan_of(&[(
        "apt.txt",
        "# comment\n\n  cowsay   # trailing\nlibgdal-dev=3.6.2+dfsg-1 libc6:amd64\n",
    )]);
    assert_eq!(
        p.apt_packages,
        vec!["cowsay", "libgdal-dev=3.6.2+dfsg-1", "libc6:amd64"]
    );
}

// ---------------------------------------------------------------------------------------------
// env_files and whole_repo.
// ---------------------------------------------------------------------------------------------

#[test]
fn env_files_are_sorted_and_complete() {
    let p = plan_of(&[
        ("start", START),
        ("runtime.txt", "python-3.11\n"),
        ("requirements.txt", "-r dev-requirements.txt\nnumpy\n"),
        ("dev-requirements.txt", "-c constraints.txt\npytest\n"),
        ("constraints.txt", "pytest<9\n"),
        ("apt.txt", APT),
        ("README.md", "# content only\n"),
        ("index.ipynb", "{}"),
    ]);
    assert_eq!(p.buildpack, "requirements");
    assert_eq!(
        p.env_files,
        vec![
            "apt.txt",
            "constraints.txt",
            "dev-requirements.txt",
            "requirements.txt",
            "runtime.txt",
            "start"
        ]
    );
    assert_eq!(p.requirements_files, vec!["requirements.txt"]);
    assert!(!p.whole_repo);

    let p = plan_of(&[
        ("environment.yml", ENV_YML),
        ("apt.txt", APT),
        ("runtime.txt", "python-3.11"),
    ]);
    assert_eq!(
        p.env_files,
        vec!["apt.txt", "environment.yml", "runtime.txt"]
    );

    let p = plan_of(&[("setup.py", SETUP_PY), ("apt.txt", APT)]);
    assert_eq!(p.env_files, vec!["apt.txt", "setup.py"]);

    let p = plan_of(&[
        ("Pipfile.lock", PIPFILE_LOCK),
        ("Pipfile", PIPFILE),
        ("start", START),
    ]);
    assert_eq!(p.env_files, vec!["Pipfile", "Pipfile.lock", "start"]);
}

#[test]
fn whole_repo_rules() {
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("setup.py", SETUP_PY)], true),
        (&[("pyproject.toml", PYPROJECT)], true),
        (
            &[
                ("requirements.txt", REQUIREMENTS),
                ("postBuild", POST_BUILD),
            ],
            true,
        ),
        (
            &[("environment.yml", ENV_YML), ("postBuild", POST_BUILD)],
            true,
        ),
        (&[("postBuild", POST_BUILD)], true),
        (&[("requirements.txt", "-e .\n")], true),
        (&[("requirements.txt", "numpy\n-e .\n")], true),
        (&[("requirements.txt", "./mypkg\n")], true),
        (
            &[
                ("requirements.txt", "-r other.txt\n"),
                ("other.txt", "-e .\n"),
            ],
            true,
        ),
        (
            &[("environment.yml", "dependencies:\n  - pip:\n    - -e .\n")],
            true,
        ),
        (&[("Dockerfile", DOCKERFILE)], true),
        (&[("requirements.txt", REQUIREMENTS)], false),
        (
            &[(
                "requirements.txt",
                "-e git+https://example.org/x.git#egg=x\n",
            )],
            false,
        ),
        (&[("environment.yml", ENV_YML)], false),
        (&[("Pipfile", PIPFILE)], false),
        (
            &[(
                "Pipfile",
                "[packages]\nmine = {path = \".\", editable = true}\n",
            )],
            true,
        ),
        (&[], false),
        (&[("runtime.txt", "python-3.11\n"), ("apt.txt", APT)], false),
    ];
    for (files, whole) in cases {
        assert_eq!(plan_of(files).whole_repo, *whole, "{files:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------------------------

fn assert_invalid(files: &[(&str, &str)], prefix: &str) -> String {
    let e = err_of(files);
    assert!(
        matches!(e, BuildpackError::InvalidSpec { .. }),
        "{files:?}: {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(prefix),
        "{files:?}: {msg:?} should start with {prefix:?}"
    );
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    msg
}

#[test]
fn unparseable_environment_yml() {
    assert_invalid(
        &[("environment.yml", "dependencies: [numpy\n")],
        "environment.yml: ",
    );
    assert_invalid(
        &[("environment.yaml", "dependencies: [numpy\n")],
        "environment.yaml: ",
    );
    assert_invalid(
        &[("environment.yml", "dependencies: numpy\n")],
        "environment.yml: ",
    );
    assert_invalid(
        &[("binder/environment.yml", "dependencies:\n  - {conda: x}\n")],
        "binder/environment.yml: ",
    );
}

#[test]
fn invalid_requirements_line() {
    let msg = assert_invalid(
        &[("requirements.txt", "numpy\nthis is not a requirement!\n")],
        "requirements.txt: line 2:",
    );
    assert!(msg.contains("this is not a requirement!"), "{msg}");
    assert_invalid(
        &[("requirements.txt", "--frobnicate\n")],
        "requirements.txt: line 1:",
    );
    assert_invalid(
        &[("requirements.txt", "-r missing.txt\n")],
        "requirements.txt: line 1:",
    );
    assert_invalid(
        &[("requirements.txt", "-r ../../etc/passwd\n")],
        "requirements.txt: line 1:",
    );
    assert_invalid(
        &[("binder/requirements.txt", "\n\nnumpy===\n")],
        "binder/requirements.txt: line 3:",
    );
}

#[test]
fn invalid_included_requirements_names_the_including_file() {
    let msg = assert_invalid(
        &[
            ("requirements.txt", "-r more.txt\n"),
            ("more.txt", "ok\nnot valid!\n"),
        ],
        "requirements.txt: line 1:",
    );
    assert!(msg.contains("more.txt"), "{msg}");
}

#[test]
fn requirements_that_is_not_text_or_not_a_file() {
    let mut r = RepoFiles::new();
    r.insert_file("requirements.txt", vec![0xff, 0xfe, b'\n']);
    let e = plan(&r, &PlanOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "requirements.txt: is not valid UTF-8");

    let mut r = RepoFiles::new();
    r.insert(
        "requirements.txt",
        FileEntry::Symlink {
            target: "other.txt".into(),
        },
    );
    r.insert_file("other.txt", "numpy\n");
    let e = plan(&r, &PlanOptions::default()).unwrap_err();
    assert!(e.to_string().starts_with("requirements.txt: "), "{e}");
}

#[test]
fn apt_txt_with_shell_metacharacters() {
    for bad in [
        "cowsay; rm -rf /",
        "$(id)",
        "a|b",
        "`id`",
        "a&&b",
        "-y",
        "x>y",
        "'q'",
    ] {
        let text = format!("cowsay\n{bad}\n");
        let msg = assert_invalid(&[("apt.txt", &text)], "apt.txt: line 2:");
        assert!(msg.contains("not a Debian package name"), "{msg}");
        // With any buildpack, and in a binder folder.
        assert_invalid(
            &[("requirements.txt", REQUIREMENTS), ("apt.txt", bad)],
            "apt.txt: line 1:",
        );
        assert_invalid(&[("binder/apt.txt", bad)], "binder/apt.txt: line 1:");
    }
}

#[test]
fn invalid_pipfiles_and_runtime() {
    assert_invalid(&[("Pipfile", "[packages\n")], "Pipfile: ");
    assert_invalid(&[("Pipfile.lock", "{not json")], "Pipfile.lock: ");
    assert_invalid(
        &[("Pipfile", "[packages]\n\"bad name!\" = \"*\"\n")],
        "Pipfile: ",
    );
    assert_invalid(
        &[("Pipfile", "[packages]\nnumpy = \"not a version\"\n")],
        "Pipfile: ",
    );
    assert_invalid(&[("runtime.txt", "python-three\n")], "runtime.txt: ");
}

#[test]
fn unavailable_python_without_fallback() {
    let e = err_of(&[("runtime.txt", "python-3.10\n")]);
    assert_eq!(
        e,
        BuildpackError::PythonUnavailable {
            file: "runtime.txt".into(),
            requested: "3.10".into(),
            available: "3.11".into(),
            managed: "uv-managed Pythons were not tried".into(),
        }
    );
    assert!(
        e.to_string()
            .starts_with("runtime.txt asks for Python 3.10"),
        "{e}"
    );
    assert!(e.to_string().contains("--python-fallback"), "{e}");

    let e = err_of(&[(
        "environment.yml",
        "dependencies:\n  - python=3.10\n  - numpy\n",
    )]);
    assert!(
        matches!(&e, BuildpackError::PythonUnavailable { file, requested, .. }
            if file == "environment.yml" && requested == "3.10"),
        "{e:?}"
    );
    let e = err_of(&[("binder/runtime.txt", "python-3.9\n")]);
    assert!(e.to_string().starts_with("binder/runtime.txt "), "{e}");
}

#[test]
fn unavailable_python_with_fallback() {
    let r = repo(&[
        ("requirements.txt", REQUIREMENTS),
        ("runtime.txt", "python-3.10\n"),
    ]);
    let p = plan(&r, &fallback_opts()).unwrap();
    let py = p.python.clone().unwrap();
    assert_eq!(py.version, "3.11");
    assert!(py.fallback);
    assert_eq!(py.requested.as_deref(), Some("3.10"));
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(
        p.warnings[0].contains("3.10") && p.warnings[0].contains("3.11"),
        "{:?}",
        p.warnings
    );
    assert!(p.warnings[0].starts_with("runtime.txt"), "{:?}", p.warnings);

    // An available version is no fallback, even when fallback is allowed.
    let r = repo(&[("runtime.txt", "python-3.11\n")]);
    let p = plan(&r, &fallback_opts()).unwrap();
    assert!(!p.python.unwrap().fallback);
    assert!(p.warnings.is_empty());
}

// ---------------------------------------------------------------------------------------------
// environment.yml mapping.
// ---------------------------------------------------------------------------------------------

#[test]
fn environment_yml_mapping() {
    let p = plan_of(&[(
        "environment.yml",
        "name: t\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - numpy=1.26\n  \
         - matplotlib-base\n  - conda-forge::pytables\n  - nodejs\n  - r-base\n  - pip\n  - pip:\n    \
         - requests==2.31\n    - altair\n",
    )]);
    assert_eq!(p.buildpack, "conda");
    let py = p.python.clone().unwrap();
    assert_eq!(py.version, "3.11");
    assert_eq!(py.requested.as_deref(), Some("3.11"));
    assert!(!py.fallback);
    assert_eq!(
        p.packages,
        vec![
            "numpy==1.26.*",
            "matplotlib",
            "tables",
            "requests==2.31",
            "altair"
        ]
    );
    assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    assert!(
        p.warnings.iter().filter(|w| w.contains("nodejs")).count() == 1,
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings.iter().filter(|w| w.contains("r-base")).count() == 1,
        "{:?}",
        p.warnings
    );
    assert!(p.requirements_files.is_empty());
    assert!(!p.whole_repo);
}

#[test]
fn environment_yml_python_wins_over_runtime_txt() {
    let p = plan_of(&[
        ("environment.yml", "dependencies:\n  - python=3.11\n"),
        ("runtime.txt", "python-3.10\n"),
    ]);
    assert_eq!(p.python.unwrap().version, "3.11");

    // Without python in environment.yml, runtime.txt applies.
    let p = plan_of(&[
        ("environment.yml", ENV_YML),
        ("runtime.txt", "python-3.11\n"),
    ]);
    assert_eq!(p.python.unwrap().requested.as_deref(), Some("3.11"));
}

#[test]
fn environment_yml_pip_requirements_file() {
    let p = plan_of(&[
        (
            "binder/environment.yml",
            "dependencies:\n  - pip:\n    - -r requirements-pip.txt\n",
        ),
        ("binder/requirements-pip.txt", "numpy\n"),
    ]);
    assert_eq!(p.requirements_files, vec!["binder/requirements-pip.txt"]);
    assert_eq!(
        p.env_files,
        vec!["binder/environment.yml", "binder/requirements-pip.txt"]
    );
    assert_invalid(
        &[(
            "environment.yml",
            "dependencies:\n  - pip:\n    - -r ../outside.txt\n",
        )],
        "environment.yml: ",
    );
}

#[test]
fn empty_environment_yml() {
    let p = plan_of(&[("environment.yml", "")]);
    assert_eq!(p.buildpack, "conda");
    assert!(p.packages.is_empty());
    let p = plan_of(&[("environment.yml", "name: x\n")]);
    assert!(p.packages.is_empty());
}

#[test]
fn conda_names() {
    assert_eq!(conda_to_pypi("numpy"), CondaMapping::Same);
    assert_eq!(
        conda_to_pypi("matplotlib-base"),
        CondaMapping::Renamed("matplotlib")
    );
    assert_eq!(
        conda_to_pypi("Matplotlib-Base"),
        CondaMapping::Renamed("matplotlib")
    );
    assert_eq!(conda_to_pypi("pytorch"), CondaMapping::Renamed("torch"));
    assert!(matches!(
        conda_to_pypi("nodejs"),
        CondaMapping::Unavailable(_)
    ));
    assert!(matches!(
        conda_to_pypi("r-base"),
        CondaMapping::Unavailable(_)
    ));
    assert!(matches!(
        conda_to_pypi("r-ggplot2"),
        CondaMapping::Unavailable(_)
    ));
    assert!(matches!(
        conda_to_pypi("__glibc"),
        CondaMapping::Unavailable(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// Pipfile and Pipfile.lock.
// ---------------------------------------------------------------------------------------------

#[test]
fn pipfile_lock_pins() {
    let p = plan_of(&[("Pipfile.lock", PIPFILE_LOCK)]);
    let mut pkgs = p.packages.clone();
    pkgs.sort();
    assert_eq!(
        pkgs,
        vec!["numpy==2.2.2", "pytest==8.0.0", "requests==2.31.0"]
    );
    assert_eq!(p.python.unwrap().requested.as_deref(), Some("3.11"));
}

#[test]
fn pipfile_packages() {
    let p = plan_of(&[(
        "Pipfile",
        "[[source]]\nurl = \"https://pypi.org/simple\"\nverify_ssl = true\nname = \"pypi\"\n\n\
         [packages]\nrequests = \"*\"\nnumpy = \">=1.26\"\npandas = {version = \"==2.2.3\"}\n\n\
         [dev-packages]\npytest = \"*\"\n\n[requires]\npython_version = \"3.11\"\n",
    )]);
    assert_eq!(p.buildpack, "pipfile");
    let mut pkgs = p.packages.clone();
    pkgs.sort();
    assert_eq!(
        pkgs,
        vec!["numpy>=1.26", "pandas==2.2.3", "pytest", "requests"]
    );
    assert_eq!(p.python.unwrap().requested.as_deref(), Some("3.11"));
    assert!(!p.whole_repo);
}

// ---------------------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------------------

fn render(files: &[(&str, &str)], opts: &RenderOptions) -> String {
    let r = repo(files);
    let p = plan(&r, &PlanOptions::default()).unwrap();
    render_dockerfile(&p, &r, opts)
}

/// The line that installs the kernel environment's packages.
fn install_line(dockerfile: &str) -> &str {
    dockerfile
        .lines()
        .find(|l| l.starts_with("RUN cd ") && l.contains(" -- uv "))
        .unwrap_or_else(|| panic!("no install line in\n{dockerfile}"))
}

/// `line` with every single-quoted region (and backslash escape) removed: what a shell would
/// still interpret.
fn unquoted(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                }
            }
            '\\' => {
                chars.next();
            }
            c => out.push(c),
        }
    }
    out
}

#[test]
fn render_requirements() {
    let d = render(
        &[("requirements.txt", REQUIREMENTS)],
        &RenderOptions::default(),
    );
    assert!(d.contains("FROM berth-base:bookworm\n"), "{d}");
    assert!(d.contains("USER 1000"), "{d}");
    assert!(d.contains("uv pip install"), "{d}");
    assert!(d.contains("for the requirements buildpack"), "{d}");
    assert!(d.contains("python3.11"), "{d}");
    let line = install_line(&d);
    assert!(line.contains(" -r /home/jovyan/requirements.txt"), "{line}");
    // The kernel gets the cluster's packages and pip, never the server's.
    assert!(line.contains("ipykernel dask distributed pip "), "{line}");
    assert!(!line.contains("jupyterlab"), "{line}");
    // The server environment comes from the lock berth ships, with hashes required.
    assert!(
        d.contains("--require-hashes --no-deps -r /opt/berth/server-lock.txt"),
        "{d}"
    );
    assert!(!d.contains("ca-certificates.crt"), "{d}");
    assert!(!d.contains("BERTH_START"), "{d}");
    assert!(
        d.contains("ENTRYPOINT [\"/usr/local/bin/berth-entrypoint\"]"),
        "{d}"
    );

    let opts = RenderOptions {
        base_image: "registry.example.org/base:2024".into(),
        ..RenderOptions::default()
    };
    let d = render(&[("requirements.txt", REQUIREMENTS)], &opts);
    assert!(d.contains("FROM registry.example.org/base:2024\n"), "{d}");
}

#[test]
fn render_with_ca_cert() {
    let opts = RenderOptions {
        ca_cert: true,
        ..RenderOptions::default()
    };
    let d = render(&[("requirements.txt", REQUIREMENTS)], &opts);
    assert!(d.contains("ca-certificates.crt"), "{d}");
    assert!(d.contains("COPY berth/ca-certificates.crt "), "{d}");
    // The bundle is in place before anything is downloaded.
    let copy = d.find("COPY berth/ca-certificates.crt").unwrap();
    let apt = d.find("apt-get update").unwrap();
    assert!(copy < apt, "{d}");
}

#[test]
fn render_binder_and_local_installs() {
    let d = render(
        &[("binder/requirements.txt", REQUIREMENTS)],
        &RenderOptions::default(),
    );
    // The install runs in the spec folder, so local paths are relative to the spec file.
    let line = install_line(&d);
    assert!(line.starts_with("RUN cd /home/jovyan/binder && "), "{line}");
    assert!(
        line.contains(" -r /home/jovyan/binder/requirements.txt"),
        "{line}"
    );

    let d = render(&[("setup.py", SETUP_PY)], &RenderOptions::default());
    assert!(install_line(&d).ends_with(" -e /home/jovyan"), "{d}");
    assert!(d.contains("The whole repository"), "{d}");

    let d = render(&[("pyproject.toml", PYPROJECT)], &RenderOptions::default());
    let line = install_line(&d);
    assert!(
        line.ends_with(" /home/jovyan") && !line.contains("-e "),
        "{line}"
    );

    let d = render(
        &[("requirements.txt", REQUIREMENTS)],
        &RenderOptions::default(),
    );
    assert!(d.contains("Only the spec files"), "{d}");
}

#[test]
fn render_addons() {
    let d = render(
        &[
            ("apt.txt", APT),
            ("postBuild", POST_BUILD),
            ("start", START),
        ],
        &RenderOptions::default(),
    );
    assert!(
        d.contains("--no-install-recommends cowsay lolcat fortune"),
        "{d}"
    );
    assert!(d.contains("RUN chmod +x postBuild && ./postBuild"), "{d}");
    assert!(d.contains("ENV BERTH_START=/home/jovyan/start"), "{d}");

    let opts = RenderOptions {
        repo_dir: "/srv/repo".into(),
        ..RenderOptions::default()
    };
    let d = render(&[("binder/start", START)], &opts);
    assert!(d.contains("ENV BERTH_START=/srv/repo/binder/start"), "{d}");
    assert!(d.contains("WORKDIR /srv/repo"), "{d}");
}

#[test]
fn render_dockerfile_buildpack_unchanged() {
    let files = [("Dockerfile", DOCKERFILE), ("apt.txt", APT)];
    assert_eq!(render(&files, &RenderOptions::default()), DOCKERFILE);
    let opts = RenderOptions {
        ca_cert: true,
        base_image: "other:1".into(),
        repo_dir: "/x".into(),
        ..RenderOptions::default()
    };
    assert_eq!(render(&files, &opts), DOCKERFILE);
    let files = [
        ("binder/Dockerfile", "FROM scratch\n"),
        ("Dockerfile", DOCKERFILE),
    ];
    assert_eq!(render(&files, &RenderOptions::default()), "FROM scratch\n");
}

#[test]
fn render_quotes_shell_metacharacters() {
    let d = render(
        &[(
            "environment.yml",
            "dependencies:\n  - numpy>=1.26,<3\n  - pip:\n    - \"evil; $(id) `whoami` | tee /x\"\n    \
             - \"it's\"\n    - -e $(touch /tmp/pwned)\n",
        )],
        &RenderOptions::default(),
    );
    let line = install_line(&d);
    assert!(line.contains(" 'numpy>=1.26,<3'"), "{line}");
    assert!(line.contains(" 'evil; $(id) `whoami` | tee /x'"), "{line}");
    assert!(line.contains(r" 'it'\''s'"), "{line}");
    assert!(line.contains(" -e '$(touch' '/tmp/pwned)'"), "{line}");
    // berth's own `cd DIR && …` is the one `&&`; the repository's words come after `--`.
    let words = line.split(" -- ").nth(1).unwrap();
    let bare = unquoted(words);
    for meta in [';', '$', '`', '|', '&', '<', '>', '(', ')', '\'', '"'] {
        assert!(
            !bare.contains(meta),
            "unquoted {meta:?} in {line:?} (bare: {bare:?})"
        );
    }

    let d = render(
        &[("Pipfile", "[packages]\nrequests = \">=2,<3\"\n")],
        &RenderOptions::default(),
    );
    assert!(install_line(&d).contains(" 'requests>=2,<3'"), "{d}");
}

#[test]
fn render_is_deterministic() {
    let files = [
        ("requirements.txt", REQUIREMENTS),
        ("apt.txt", APT),
        ("postBuild", POST_BUILD),
    ];
    let a = render(&files, &RenderOptions::default());
    let b = render(&files, &RenderOptions::default());
    assert_eq!(a, b);
    assert!(!a.contains("template error"), "{a}");
}

// ---------------------------------------------------------------------------------------------
// Malformed input is an error, never a panic.
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_names_are_errors_not_panics() {
    // pep508_rs 0.9 panics on these instead of returning an error; berth must not.
    for line in [
        "aa-,",
        "aa- >=1",
        "numpy.==1",
        "numpy[a-]",
        "numpy[ok, b_] >=1",
        "x_;",
    ] {
        let text = format!("numpy\n{line}\n");
        let msg = assert_invalid(&[("requirements.txt", &text)], "requirements.txt: line 2:");
        assert!(msg.contains("letter or digit"), "{msg}");
    }
    assert_invalid(
        &[("Pipfile", "[packages]\n\"aa-\" = \">=1\"\n")],
        "Pipfile: ",
    );
    assert_invalid(
        &[(
            "Pipfile.lock",
            r#"{"default": {"aa-": {"version": "==1"}}}"#,
        )],
        "Pipfile.lock: ",
    );
    // Valid names with inner punctuation and extras still pass.
    let p = plan_of(&[(
        "requirements.txt",
        "ruamel.yaml>=0.17\ntyping_extensions\nrequests[socks, use-chardet]==2.31\n",
    )]);
    assert_eq!(p.buildpack, "requirements");
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    /// Text made of the characters that matter to the parsers.
    fn spec_text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::collection::vec(
                "[a-zA-Z0-9._\\-\\[\\],;<>=!~@ :/\"'()*+#$`|&{}\\\\]{0,24}",
                0..6,
            )
            .prop_map(|lines| lines.join("\n")),
            1 => any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn planning_never_panics(
            name in prop::sample::select(vec![
                "requirements.txt", "Pipfile", "Pipfile.lock", "environment.yml", "apt.txt",
                "runtime.txt", "pyproject.toml", "binder/requirements.txt", "Dockerfile",
            ]),
            text in spec_text(),
        ) {
            let r = repo(&[(name, text.as_str())]);
            match plan(&r, &fallback_opts()) {
                Ok(p) => {
                    let d = render_dockerfile(&p, &r, &RenderOptions::default());
                    prop_assert!(!d.contains("template error"), "{}", d);
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with(name), "{}", msg);
                    prop_assert!(!msg.contains('\n'), "{:?}", msg);
                }
            }
        }

        /// Requirement lines that look like names with versions and extras.
        #[test]
        fn requirement_lines_never_panic(
            lines in prop::collection::vec(
                concat!(
                    "[a-z]{1,4}[-_.]{0,2}[a-z]{0,2}[-_.]{0,1}",
                    "( ?\\[[a-z]{0,3}[-_.,]{0,2}[a-z]{0,2}\\])?",
                    "( ?[<>=!~,;]{1,2}[0-9.]{0,4})?",
                ),
                1..5,
            ),
        ) {
            let text = lines.join("\n");
            let r = repo(&[("requirements.txt", text.as_str())]);
            if let Err(e) = plan(&r, &PlanOptions::default()) {
                prop_assert!(e.to_string().starts_with("requirements.txt: line "), "{}", e);
            }
        }
    }
}

#[test]
fn locks_beat_the_unlocked_spec_beside_them() {
    let pylock = "lock-version = \"1.0\"\ncreated-by = \"t\"\n[[packages]]\nname = \"six\"\nversion = \"1.16.0\"\nwheels = [{ name = \"six-1.16.0-py2.py3-none-any.whl\", url = \"https://example.org/six-1.16.0-py2.py3-none-any.whl\", hashes = { sha256 = \"00\" } }]\n";
    let p = plan(
        &repo(&[
            ("pylock.toml", pylock),
            ("environment.yml", "dependencies: [numpy]\n"),
        ]),
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.buildpack, "pylock");
    assert!(p.packages.is_empty());
    match &p.lock {
        Some(berth_buildpacks::Lock::Pylock { file, missing }) => {
            assert_eq!(file, "pylock.toml");
            assert_eq!(missing, &["ipykernel", "dask", "distributed", "pip"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("pylock.toml does not lock ipykernel")),
        "{:?}",
        p.warnings
    );

    let uv_lock = "version = 1\n[[package]]\nname = \"demo\"\nversion = \"0.1\"\nsource = { editable = \".\" }\n[[package]]\nname = \"ipykernel\"\nversion = \"7\"\nsource = { registry = \"https://pypi.org/simple\" }\n";
    let p = plan(
        &repo(&[
            ("uv.lock", uv_lock),
            ("pyproject.toml", PYPROJECT),
            ("requirements.txt", "numpy\n"),
        ]),
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.buildpack, "uv-lock");
    assert!(p.whole_repo, "the project is installed from the tree");
    match &p.lock {
        Some(berth_buildpacks::Lock::Uv {
            installs_project,
            missing,
            ..
        }) => {
            assert!(*installs_project);
            assert_eq!(missing, &["dask", "distributed", "pip"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hashed_requirements_are_a_lock() {
    let p = plan(
        &repo(&[(
            "requirements.txt",
            "six==1.16.0 \\\n    --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\n",
        )]),
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.buildpack, "requirements");
    assert!(p.requirements_files.is_empty());
    assert!(
        matches!(&p.lock, Some(berth_buildpacks::Lock::HashedRequirements { file, .. }) if file == "requirements.txt")
    );
    let d = render_dockerfile(&p, &repo(&[]), &RenderOptions::default());
    assert!(
        d.contains("uv pip install --quiet --require-hashes -r requirements.txt"),
        "{d}"
    );
    assert!(
        d.contains("-c /tmp/berth-locked.txt ipykernel dask distributed pip"),
        "{d}"
    );
}

#[test]
fn a_repository_that_asks_for_a_jupyter_server_gets_its_own() {
    let p = plan(
        &repo(&[(
            "environment.yml",
            "dependencies:\n  - jupyterlab=3\n  - dask-labextension=5\n",
        )]),
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.server, berth_buildpacks::ServerEnv::Repository);
    assert!(
        p.warnings.iter().any(|w| w
            .contains("asks for Jupyter server packages itself (dask-labextension, jupyterlab)")),
        "{:?}",
        p.warnings
    );
    let d = render_dockerfile(&p, &repo(&[]), &RenderOptions::default());
    assert!(!d.contains("/srv/server/bin/python"), "{d}");
    assert!(d.contains("'jupyterlab==3.*'"), "{d}");
    assert!(d.contains("tool.py jupyter /srv/venv"), "{d}");

    let p = plan(
        &repo(&[("requirements.txt", "requests\n")]),
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.server, berth_buildpacks::ServerEnv::Berth);
}

#[test]
fn runtime_txt_python_3_and_user_options_render() {
    let opts = RenderOptions {
        user_id: 1234,
        user_name: "ana".into(),
        ..RenderOptions::default()
    };
    let d = render(&[("requirements.txt", "requests\n")], &opts);
    assert!(
        d.contains("useradd --create-home --shell /bin/bash --uid 1234 --gid 1234 ana"),
        "{d}"
    );
    assert!(
        d.contains(
            "PATH=/home/ana/.local/bin:/home/jovyan/.local/bin:/srv/venv/bin:/srv/server/bin:"
        ),
        "{d}"
    );
}

#[test]
fn environment_yml_pip_includes_are_followed_recursively() {
    let env = "dependencies:\n  - pip:\n    - -r requirements/base.txt\n";
    let p = plan(
        &repo(&[
            ("binder/environment.yml", env),
            ("binder/requirements/base.txt", "-r more.txt\nsix\n"),
            ("binder/requirements/more.txt", "-e ../..\n"),
        ]),
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(
        p.env_files
            .contains(&"binder/requirements/more.txt".to_string()),
        "{:?}",
        p.env_files
    );
    assert!(p.whole_repo, "a nested local path makes the tree an input");
    let e = plan(
        &repo(&[(
            "environment.yml",
            "dependencies:\n  - pip:\n    - -r missing.txt\n",
        )]),
        &PlanOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing.txt"), "{e}");
    let e = plan(
        &repo(&[
            (
                "environment.yml",
                "dependencies:\n  - pip:\n    - -r a.txt\n",
            ),
            ("a.txt", "-r nope.txt\n"),
        ]),
        &PlanOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope.txt"), "{e}");
}
