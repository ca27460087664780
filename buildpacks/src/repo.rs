//! An in-memory snapshot of a repository's tree.

use std::collections::BTreeMap;

/// One entry of a repository tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEntry {
    /// A regular file with its bytes.
    File {
        /// The file's contents.
        data: Vec<u8>,
        /// Whether git records it as executable (mode 100755).
        executable: bool,
    },
    /// A symbolic link and its target, as stored in git (never followed on the host).
    Symlink {
        /// The link's target path.
        target: String,
    },
}

impl FileEntry {
    /// Size in bytes of what the entry stores.
    pub fn len(&self) -> usize {
        match self {
            FileEntry::File { data, .. } => data.len(),
            FileEntry::Symlink { target } => target.len(),
        }
    }

    /// Whether the entry stores nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A repository's files at one commit, keyed by path relative to the root with `/` separators.
///
/// Iteration is in byte order of the path, whatever order the entries were inserted in, so
/// everything derived from it (hashes, build contexts) is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoFiles {
    entries: BTreeMap<String, FileEntry>,
}

impl RepoFiles {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, path: impl Into<String>, entry: FileEntry) {
        self.entries.insert(path.into(), entry);
    }

    /// Adds a regular, non-executable file (a convenience for tests and tools).
    pub fn insert_file(&mut self, path: impl Into<String>, data: impl Into<Vec<u8>>) {
        self.insert(
            path,
            FileEntry::File {
                data: data.into(),
                executable: false,
            },
        );
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&FileEntry> {
        self.entries.get(path)
    }

    /// The bytes of the regular file at `path`; `None` for a missing path or a symlink.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        match self.entries.get(path)? {
            FileEntry::File { data, .. } => Some(data),
            FileEntry::Symlink { .. } => None,
        }
    }

    /// Whether any entry lies below the folder `dir`.
    pub fn has_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.entries
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// All entries, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FileEntry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of the entries' sizes in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.len() as u64).sum()
    }
}
