//! The env hash: a sha256 over everything that can change an environment image.

use berth_buildpacks::{BuildPlan, FileEntry, RepoFiles, BUILDPACK_VERSION};
use sha2::{Digest, Sha256};

/// Computes the env hash, 64 lowercase hex digits.
///
/// The input is: berth's buildpack version, the base image's id, `$REPO_DIR`, the build plan
/// (as JSON), and the path, kind and bytes of every file the environment reads: the plan's
/// `env_files`, or every file when `plan.whole_repo` (a Dockerfile, a `setup.py`/`pyproject.toml`
/// install, local paths in requirements, `postBuild`). Files that only hold content (notebooks,
/// data, docs) do not enter it, so a commit that only edits them reuses the environment image.
/// Paths are hashed in byte order, so the order files were read in does not matter. A site's CA
/// bundle does not enter it: it changes how packages are fetched, not which.
pub fn env_hash(
    plan: &BuildPlan,
    files: &RepoFiles,
    base_image_id: &str,
    repo_dir: &str,
) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"berth env hash 1");
    field(BUILDPACK_VERSION.as_bytes());
    field(base_image_id.as_bytes());
    field(repo_dir.as_bytes());
    // serde_json writes struct fields in declaration order: stable for equal plans.
    field(&serde_json::to_vec(plan).unwrap_or_default());
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
