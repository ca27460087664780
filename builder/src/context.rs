//! Deterministic build contexts: tar archives with fixed mtimes, owners and modes, in path
//! order, so equal inputs give byte-identical contexts and Docker's layer cache holds.

use std::path::{Path, PathBuf};

use berth_buildpacks::{BuildPlan, FileEntry, RepoFiles, ENTRYPOINT_SCRIPT};

/// The mtime of every context entry (seconds since the epoch): 2000-01-01T00:00:00Z.
pub const CONTEXT_MTIME: u64 = 946_684_800;

struct Tar {
    builder: tar::Builder<Vec<u8>>,
    dirs: std::collections::BTreeSet<String>,
}

impl Tar {
    fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Self {
            builder,
            dirs: Default::default(),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(CONTEXT_MTIME);
        h.set_size(size);
        h
    }

    /// Emits explicit entries for the parent folders of `path`, so their metadata is fixed too.
    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let dir = &path[..end + i];
            if self.dirs.insert(dir.to_string()) {
                let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
                self.builder
                    .append_data(&mut h, format!("{dir}/"), std::io::empty())?;
            }
            end += i + 1;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
        self.parents(path)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut h, path, data)
    }

    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.parents(&format!("{path}/"))
    }

    fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        self.parents(path)?;
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut h, path, target)
    }

    fn entry(&mut self, path: &str, entry: &FileEntry, force_exec: bool) -> std::io::Result<()> {
        match entry {
            FileEntry::File { data, executable } => {
                let mode = if *executable || force_exec {
                    0o755
                } else {
                    0o644
                };
                self.file(path, data, mode)
            }
            FileEntry::Symlink { target } => self.symlink(path, target),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        self.builder.into_inner()
    }
}

fn is_script(plan: &BuildPlan, path: &str) -> bool {
    plan.post_build.as_deref() == Some(path) || plan.start.as_deref() == Some(path)
}

/// The context of an environment image.
///
/// For berth's Python template: `Dockerfile`, `berth/entrypoint`, berth's support files
/// ([`berth_buildpacks::context_files`]), `berth/ca-certificates.crt`
/// (when `ca_cert` is given) and the environment's files under `repo/` (every file when
/// `plan.whole_repo`). For the `dockerfile` buildpack: the repository itself at the root, as
/// repo2docker, with the user's Dockerfile where it is.
///
/// # Errors
/// I/O errors of the in-memory archive.
pub fn env_context(
    plan: &BuildPlan,
    files: &RepoFiles,
    dockerfile: &str,
    ca_cert: Option<&[u8]>,
) -> std::io::Result<Vec<u8>> {
    env_context_with_sources(plan, files, dockerfile, ca_cert, None)
}

/// The files of a sources folder an offline build takes: the wheels and sdists of `wheels/`
/// and the `.deb` files of `debs/` (other files, and folders, are left out), as
/// `(path in the folder, path on disk)`, sorted.
///
/// # Errors
/// I/O errors reading the folder; a folder without `wheels/` is [`std::io::ErrorKind::NotFound`].
pub fn sources_files(sources: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    const KINDS: &[(&str, &[&str])] = &[
        ("debs", &[".deb"]),
        ("wheels", &[".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz"]),
    ];
    let mut out = Vec::new();
    for (kind, suffixes) in KINDS {
        let dir = sources.join(kind);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *kind == "debs" => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", dir.display()),
                ))
            }
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                || !suffixes.iter().any(|s| name.ends_with(s))
                || !entry.file_type()?.is_file()
            {
                continue;
            }
            out.push((format!("{kind}/{name}"), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// [`env_context`], for an offline build when `sources` names a sources folder: berth's
/// offline helpers ([`berth_buildpacks::offline_context_files`]) and the folder's files
/// ([`sources_files`]) go under `berth/sources/`, where the offline Dockerfile takes them.
/// The archive is built in memory, so it needs as much memory as the folder's files.
///
/// # Errors
/// I/O errors of the archive or of reading the folder.
pub fn env_context_with_sources(
    plan: &BuildPlan,
    files: &RepoFiles,
    dockerfile: &str,
    ca_cert: Option<&[u8]>,
    sources: Option<&Path>,
) -> std::io::Result<Vec<u8>> {
    let mut tar = Tar::new();
    if plan.dockerfile.is_some() {
        for (path, entry) in files.iter() {
            tar.entry(path, entry, false)?;
        }
        return tar.finish();
    }
    tar.file("Dockerfile", dockerfile.as_bytes(), 0o644)?;
    tar.file("berth/entrypoint", ENTRYPOINT_SCRIPT.as_bytes(), 0o755)?;
    for f in berth_buildpacks::context_files(plan) {
        tar.file(f.path, &f.data, f.mode)?;
    }
    // `COPY repo/` needs the folder even when no spec file goes in it.
    tar.dir("repo")?;
    if let Some(ca) = ca_cert {
        tar.file("berth/ca-certificates.crt", ca, 0o644)?;
    }
    if let Some(dir) = sources {
        for f in berth_buildpacks::offline_context_files() {
            tar.file(f.path, &f.data, f.mode)?;
        }
        // `COPY berth/sources/` needs both folders, even when one is empty.
        tar.dir("berth/sources/debs")?;
        tar.dir("berth/sources/wheels")?;
        for (path, disk) in sources_files(dir)? {
            let data = std::fs::read(&disk)?;
            tar.file(&format!("berth/sources/{path}"), &data, 0o644)?;
        }
    }
    if plan.whole_repo {
        for (path, entry) in files.iter() {
            tar.entry(&format!("repo/{path}"), entry, is_script(plan, path))?;
        }
    } else {
        for path in &plan.env_files {
            if let Some(entry) = files.get(path) {
                tar.entry(&format!("repo/{path}"), entry, is_script(plan, path))?;
            }
        }
    }
    tar.finish()
}

/// The Dockerfile of the repository layer: the environment image plus the repository's files
/// at `$REPO_DIR`, owned by the user `user_id` (and the group of the same id, as berth's
/// template and repo2docker create it), and `labels` in one `LABEL` instruction (one build
/// step, not one per label).
pub fn repo_dockerfile(
    env_image: &str,
    repo_dir: &str,
    user_id: u32,
    labels: &std::collections::BTreeMap<String, String>,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!(
        "# Rendered by berth: the repository's files on top of its environment image.\n\
         FROM {env_image}\n\
         COPY --chown={user_id}:{user_id} repo/ {repo_dir}/\n"
    );
    if !labels.is_empty() {
        out.push_str("LABEL");
        for (k, v) in labels {
            out.push_str(&format!(" \\\n    {}={}", quote(k), quote(v)));
        }
        out.push('\n');
    }
    out
}

/// The context of the repository layer: its Dockerfile and every file under `repo/`.
///
/// # Errors
/// I/O errors of the in-memory archive.
pub fn repo_context(
    plan: &BuildPlan,
    files: &RepoFiles,
    dockerfile: &str,
) -> std::io::Result<Vec<u8>> {
    let mut tar = Tar::new();
    tar.file("Dockerfile", dockerfile.as_bytes(), 0o644)?;
    for (path, entry) in files.iter() {
        tar.entry(&format!("repo/{path}"), entry, is_script(plan, path))?;
    }
    tar.finish()
}
