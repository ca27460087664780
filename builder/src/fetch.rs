//! Fetching a repository at a ref (git2), with a local clone cache, and reading its tree.

use std::path::{Path, PathBuf};

use berth_buildpacks::{FileEntry, RepoFiles};
use git2::{AutotagOption, FetchOptions, ObjectType, Oid, RemoteCallbacks, Repository, Tree};
use sha2::{Digest, Sha256};

/// Errors of fetching and reading a repository.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source is a local path that is not a Git repository (work tree or bare).
    #[error("{0} is not a git repository")]
    NotARepository(String),
    /// The URL could not be fetched from.
    #[error("cannot fetch {url}: {message}")]
    Unreachable {
        /// The repository URL.
        url: String,
        /// libgit2's reason, on one line.
        message: String,
    },
    /// The ref is not a branch, tag or commit of the repository.
    #[error("unknown ref {reference:?} in {url}")]
    UnknownRef {
        /// The repository URL.
        url: String,
        /// The ref asked for.
        reference: String,
    },
    /// The ref could be mistaken for an option or is otherwise malformed.
    #[error("invalid ref {0:?}: refs may not start with '-' or contain whitespace or control characters")]
    InvalidRef(String),
    /// The tree at the commit is larger than the configured limit.
    #[error("repository is larger than the limit of {limit} bytes (--max-repo-bytes)")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A symlink in the repository points outside it.
    #[error("symlink {path} points outside the repository (to {target:?}); refusing to build")]
    SymlinkEscapes {
        /// The symlink's path in the repository.
        path: String,
        /// Its target, as stored in git.
        target: String,
    },
    /// Another error from git or the file system.
    #[error("git: {0}")]
    Git(String),
}

impl From<git2::Error> for FetchError {
    fn from(e: git2::Error) -> Self {
        FetchError::Git(e.message().to_string())
    }
}

/// A repository resolved at a commit, with its files read into memory.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The URL or absolute local path the repository was fetched from.
    pub url: String,
    /// The ref asked for (`HEAD` when none was).
    pub reference: String,
    /// The commit the ref resolved to, as 40 hex digits.
    pub commit: String,
    /// The commit's tree id, as 40 hex digits: the key of the repository layer.
    pub tree: String,
    /// The files of the tree. Submodules are left out.
    pub files: RepoFiles,
}

/// Progress of a fetch, reported to the caller's callback.
#[derive(Debug, Clone, Copy)]
pub struct FetchProgress {
    /// Objects received so far.
    pub received_objects: usize,
    /// Objects the server announced.
    pub total_objects: usize,
    /// Bytes received so far.
    pub received_bytes: usize,
}

/// Whether `source` is a URL (`scheme://…` or scp-like `user@host:path`) rather than a path.
pub fn is_url(source: &str) -> bool {
    if source.contains("://") {
        return true;
    }
    // scp-like syntax, as git: `host:path` with a colon before any slash.
    match (source.find(':'), source.find('/')) {
        (Some(c), Some(s)) => c < s && c > 1,
        (Some(c), None) => c > 1,
        _ => false,
    }
}

/// Checks a ref before it reaches git: no leading `-`, no whitespace or control characters.
///
/// # Errors
/// [`FetchError::InvalidRef`].
pub fn validate_ref(reference: &str) -> Result<(), FetchError> {
    if reference.is_empty()
        || reference.starts_with('-')
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || reference.len() > 255
    {
        return Err(FetchError::InvalidRef(reference.to_string()));
    }
    Ok(())
}

/// A local cache of bare clones, one per URL, so a second fetch of the same URL transfers only
/// what is new.
#[derive(Debug, Clone)]
pub struct RepoCache {
    dir: PathBuf,
}

impl RepoCache {
    /// A cache under `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The bare clone that caches `url`.
    pub fn path_for(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        self.dir.join(format!("{}.git", &hex::encode(digest)[..20]))
    }

    /// Fetches `source` (URL or local path) and resolves `reference` (branch, tag, full or short
    /// commit, or `HEAD`) to a commit, then reads the commit's tree.
    ///
    /// `max_bytes` bounds the total size of the tree's files; `progress` is called during the
    /// transfer.
    ///
    /// # Errors
    /// [`FetchError`] for a path that is no repository, an unreachable URL, an unknown or
    /// malformed ref, a tree over `max_bytes`, or a symlink that points outside the tree.
    pub fn checkout(
        &self,
        source: &str,
        reference: Option<&str>,
        max_bytes: u64,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<Checkout, FetchError> {
        let reference = reference.unwrap_or("HEAD");
        validate_ref(reference)?;
        let url = canonical_source(source)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| FetchError::Git(e.to_string()))?;
        let path = self.path_for(&url);
        let repo = match Repository::open_bare(&path) {
            Ok(r) => r,
            Err(_) => {
                let _ = std::fs::remove_dir_all(&path);
                Repository::init_bare(&path)?
            }
        };
        fetch(&repo, &url, progress)?;
        let commit = resolve(&repo, &url, reference)?;
        let commit = repo.find_commit(commit)?;
        let tree = commit.tree()?;
        let mut files = RepoFiles::new();
        let mut budget = max_bytes;
        read_tree(&repo, &tree, "", &mut files, &mut budget, max_bytes)?;
        check_symlinks(&files)?;
        Ok(Checkout {
            url,
            reference: reference.to_string(),
            commit: commit.id().to_string(),
            tree: tree.id().to_string(),
            files,
        })
    }
}

/// URLs stay as given; local paths become absolute and must be git repositories.
fn canonical_source(source: &str) -> Result<String, FetchError> {
    if is_url(source) {
        return Ok(source.to_string());
    }
    let path = Path::new(source);
    let abs = path
        .canonicalize()
        .map_err(|_| FetchError::NotARepository(source.to_string()))?;
    if Repository::open(&abs).is_err() {
        return Err(FetchError::NotARepository(source.to_string()));
    }
    Ok(abs.to_string_lossy().into_owned())
}

fn fetch(
    repo: &Repository,
    url: &str,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<(), FetchError> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(|p| {
        progress(FetchProgress {
            received_objects: p.received_objects(),
            total_objects: p.total_objects(),
            received_bytes: p.received_bytes(),
        });
        true
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    opts.download_tags(AutotagOption::All);
    let mut remote = repo.remote_anonymous(url)?;
    remote
        .fetch(
            &[
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
                "+HEAD:refs/remotes/origin/HEAD",
            ],
            Some(&mut opts),
            None,
        )
        .map_err(|e| FetchError::Unreachable {
            url: url.to_string(),
            message: e.message().lines().next().unwrap_or("").to_string(),
        })
}

fn resolve(repo: &Repository, url: &str, reference: &str) -> Result<Oid, FetchError> {
    let unknown = || FetchError::UnknownRef {
        url: url.to_string(),
        reference: reference.to_string(),
    };
    let candidates = [
        format!("refs/remotes/origin/{reference}"),
        format!("refs/tags/{reference}"),
    ];
    for name in &candidates {
        if let Ok(r) = repo.find_reference(name) {
            let commit = r.peel_to_commit().map_err(|_| unknown())?;
            return Ok(commit.id());
        }
    }
    let is_hex = reference.len() >= 4
        && reference.len() <= 40
        && reference.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        if let Ok(obj) = repo.revparse_single(reference) {
            if let Ok(c) = obj.peel_to_commit() {
                return Ok(c.id());
            }
        }
    }
    Err(unknown())
}

fn read_tree(
    repo: &Repository,
    tree: &Tree<'_>,
    prefix: &str,
    files: &mut RepoFiles,
    budget: &mut u64,
    limit: u64,
) -> Result<(), FetchError> {
    for entry in tree.iter() {
        let Ok(name) = entry.name() else {
            return Err(FetchError::Git(
                "a file name in the tree is not UTF-8".into(),
            ));
        };
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                read_tree(repo, &sub, &path, files, budget, limit)?;
            }
            Some(ObjectType::Blob) => {
                let blob = repo.find_blob(entry.id())?;
                let size = blob.size() as u64;
                *budget = budget
                    .checked_sub(size)
                    .ok_or(FetchError::TooLarge { limit })?;
                let mode = entry.filemode();
                let file = if mode == 0o120000 {
                    FileEntry::Symlink {
                        target: String::from_utf8_lossy(blob.content()).into_owned(),
                    }
                } else {
                    FileEntry::File {
                        data: blob.content().to_vec(),
                        executable: mode == 0o100755,
                    }
                };
                files.insert(path, file);
            }
            // Submodules (commits) are not fetched, as a shallow repo2docker clone.
            _ => {}
        }
    }
    Ok(())
}

/// Refuses symlinks whose target lies outside the tree (absolute, or too many `..`).
fn check_symlinks(files: &RepoFiles) -> Result<(), FetchError> {
    for (path, entry) in files.iter() {
        if let FileEntry::Symlink { target } = entry {
            let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let mut depth: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
            let mut escapes = target.starts_with('/');
            for part in target.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        if depth.pop().is_none() {
                            escapes = true;
                        }
                    }
                    p => depth.push(p),
                }
            }
            if escapes {
                return Err(FetchError::SymlinkEscapes {
                    path: path.to_string(),
                    target: target.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_or_path() {
        assert!(is_url("https://github.com/a/b"));
        assert!(is_url("git://127.0.0.1/conda.git"));
        assert!(is_url("git@github.com:a/b.git"));
        assert!(!is_url("../shared/fixtures/repos/conda.git"));
        assert!(!is_url("/abs/path"));
        assert!(!is_url("C:/x") || cfg!(windows));
    }

    #[test]
    fn refs_are_validated() {
        assert!(validate_ref("main").is_ok());
        assert!(validate_ref("v1.0").is_ok());
        assert!(matches!(
            validate_ref("--upload-pack=x"),
            Err(FetchError::InvalidRef(_))
        ));
        assert!(validate_ref("a b").is_err());
        assert!(validate_ref("").is_err());
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let mut f = RepoFiles::new();
        f.insert(
            "a/link",
            FileEntry::Symlink {
                target: "../b".into(),
            },
        );
        assert!(check_symlinks(&f).is_ok());
        f.insert(
            "c",
            FileEntry::Symlink {
                target: "../../etc/passwd".into(),
            },
        );
        assert!(matches!(
            check_symlinks(&f),
            Err(FetchError::SymlinkEscapes { .. })
        ));
        let mut g = RepoFiles::new();
        g.insert(
            "d",
            FileEntry::Symlink {
                target: "/etc/passwd".into(),
            },
        );
        assert!(check_symlinks(&g).is_err());
    }
}
