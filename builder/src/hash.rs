//! The env hash: a sha256 over everything that can change an environment image.

use std::collections::BTreeMap;

use berth_buildpacks::{BuildPlan, FileEntry, RepoFiles, BUILDPACK_VERSION};
use sha2::{Digest, Sha256};

/// What decides an environment image besides the plan and the repository's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSettings {
    /// The base image's id (`sha256:…`); empty for the `dockerfile` buildpack, whose
    /// Dockerfile names its own base.
    pub base_image_id: String,
    /// `$REPO_DIR`, an absolute path in the image.
    pub repo_dir: String,
    /// The uid of the image's user (`--user-id`).
    pub user_id: u32,
    /// The name of the image's user (`--user-name`).
    pub user_name: String,
    /// Build args handed to a repository's Dockerfile (`--build-arg`, and `NB_USER`, `NB_UID`,
    /// `REPO_DIR` as repo2docker passes them); empty for berth's own template, which ignores
    /// them.
    pub build_args: BTreeMap<String, String>,
    /// Labels (`--label`) built into the environment image itself: a Dockerfile repository's
    /// image is its environment image. Empty otherwise (they go on the repository layer).
    pub labels: BTreeMap<String, String>,
}

impl Default for EnvSettings {
    /// No base id, `$REPO_DIR` `/home/jovyan`, user 1000 `jovyan`, no build args or labels.
    fn default() -> Self {
        Self {
            base_image_id: String::new(),
            repo_dir: "/home/jovyan".into(),
            user_id: 1000,
            user_name: "jovyan".into(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// [`env_hash_with`] the base image id and `$REPO_DIR` given, and the other
/// [`EnvSettings`] at their defaults (user 1000 `jovyan`, no build args, no labels).
pub fn env_hash(
    plan: &BuildPlan,
    files: &RepoFiles,
    base_image_id: &str,
    repo_dir: &str,
) -> String {
    let settings = EnvSettings {
        base_image_id: base_image_id.to_string(),
        repo_dir: repo_dir.to_string(),
        ..EnvSettings::default()
    };
    env_hash_with(plan, files, &settings)
}

/// Computes the env hash, 64 lowercase hex digits.
///
/// The input is: berth's buildpack version, the [`EnvSettings`] (base image id, `$REPO_DIR`,
/// the user's uid and name, build args and labels in key order), the build plan
/// (as JSON), berth's own context files ([`berth_buildpacks::context_files`]: the server
/// environment's lock, the build helper) and Dockerfile template, and the path, kind and bytes of every file the environment reads: the plan's
/// `env_files`, or every file when `plan.whole_repo` (a Dockerfile, a `setup.py`/`pyproject.toml`
/// install, local paths in requirements, `postBuild`). Files that only hold content (notebooks,
/// data, docs) do not enter it, so a commit that only edits them reuses the environment image.
/// Paths are hashed in byte order, so the order files were read in does not matter. A site's CA
/// bundle does not enter it: it changes how packages are fetched, not which.
pub fn env_hash_with(plan: &BuildPlan, files: &RepoFiles, settings: &EnvSettings) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"berth env hash 2");
    field(BUILDPACK_VERSION.as_bytes());
    field(settings.base_image_id.as_bytes());
    field(settings.repo_dir.as_bytes());
    field(settings.user_id.to_string().as_bytes());
    field(settings.user_name.as_bytes());
    for map in [&settings.build_args, &settings.labels] {
        field(&(map.len() as u64).to_le_bytes());
        for (k, v) in map {
            field(k.as_bytes());
            field(v.as_bytes());
        }
    }
    // serde_json writes struct fields in declaration order: stable for equal plans.
    field(&serde_json::to_vec(plan).unwrap_or_default());
    // berth's own files in the context: the server environment's lock, the build helper and
    // the session hook (a regenerated server lock is a new environment).
    for f in berth_buildpacks::context_files(plan) {
        field(f.path.as_bytes());
        field(&f.data);
    }
    if plan.dockerfile.is_none() {
        field(berth_buildpacks::template_source().as_bytes());
        field(berth_buildpacks::ENTRYPOINT_SCRIPT.as_bytes());
    }
    let mut add = |path: &str, entry: &FileEntry| {
        field(path.as_bytes());
        match entry {
            FileEntry::File { data, executable } => {
                field(if *executable { b"x" } else { b"f" });
                field(data);
            }
            FileEntry::Symlink { target } => {
                field(b"l");
                field(target.as_bytes());
            }
        }
    };
    if plan.whole_repo {
        for (path, entry) in files.iter() {
            add(path, entry);
        }
    } else {
        for path in &plan.env_files {
            if let Some(entry) = files.get(path) {
                add(path, entry);
            }
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_build_args_and_labels_enter_the_hash() {
        let mut files = RepoFiles::new();
        files.insert_file("requirements.txt", "numpy\n");
        let p = berth_buildpacks::plan(&files, &berth_buildpacks::PlanOptions::default())
            .expect("a plan");
        let base = EnvSettings {
            base_image_id: "sha256:00".into(),
            ..EnvSettings::default()
        };
        let h = env_hash_with(&p, &files, &base);
        assert_eq!(h, env_hash(&p, &files, "sha256:00", "/home/jovyan"));
        let one = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let changed = [
            EnvSettings {
                user_id: 1234,
                ..base.clone()
            },
            EnvSettings {
                user_name: "ana".into(),
                ..base.clone()
            },
            EnvSettings {
                repo_dir: "/srv/repo".into(),
                ..base.clone()
            },
            // A build arg is not a label.
            EnvSettings {
                build_args: one.clone(),
                ..base.clone()
            },
            EnvSettings {
                labels: one,
                ..base.clone()
            },
        ];
        let mut seen = std::collections::BTreeSet::from([h]);
        for s in &changed {
            assert!(seen.insert(env_hash_with(&p, &files, s)), "{s:?}");
        }
    }
}
