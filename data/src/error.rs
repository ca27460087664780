//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the data library. Every variant names the thing at fault
/// (a path, a data set name, a version, a variable), so a message can be shown to a user as is.
/// User input never panics: it gives one of these.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data set name is not valid (see [`crate::validate_name`] for the rule).
    #[error("invalid data set name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// No data set of that name is registered.
    #[error("unknown data set {0:?}")]
    UnknownName(String),
    /// The data set exists but has no version starting with this prefix.
    #[error("data set {name:?} has no version starting with {prefix:?}")]
    UnknownVersion {
        /// Data set name.
        name: String,
        /// Hex prefix as given.
        prefix: String,
    },
    /// The version prefix matches more than one version of the data set.
    #[error("version prefix {prefix:?} of {name:?} is ambiguous: it matches {}", matches.join(", "))]
    AmbiguousVersion {
        /// Data set name.
        name: String,
        /// Hex prefix as given.
        prefix: String,
        /// Every full version id it matches.
        matches: Vec<String>,
    },
    /// A source is neither a NetCDF file nor a Zarr store, or it cannot be opened as one.
    #[error("{}: cannot read it as NetCDF or Zarr: {reason}", path.display())]
    UnreadableSource {
        /// The source path.
        path: PathBuf,
        /// What the NetCDF or Zarr reader said.
        reason: String,
    },
    /// A source holds something this library does not convert (a variable type, a group).
    #[error("{}: {what} is not supported", path.display())]
    Unsupported {
        /// The source path.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// Several sources cannot be joined: a dimension, a variable or its values differ.
    #[error("cannot join the sources: {0}")]
    Incompatible(String),
    /// Invalid ingest options (chunking, concatenation dimension).
    #[error("invalid ingest options: {0}")]
    InvalidOptions(String),
    /// Reading or writing a file of the library or a source failed (full disk included).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing or reading a Zarr array with zarrs failed.
    #[error("Zarr array {array:?}: {message}")]
    Zarr {
        /// The array's name (variable name).
        array: String,
        /// What zarrs said.
        message: String,
    },
    /// A stored version does not hash to its id any more.
    #[error("version {version} of {name:?} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// Data set name.
        name: String,
        /// The version id (the expected hash).
        version: String,
        /// The hash of what is stored now.
        actual: String,
    },
    /// A library file (a name's history, a store's metadata) is not what this library wrote.
    #[error("library metadata {}: {message}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The variable is not in the data set.
    #[error("data set {spec:?} has no variable {var:?}")]
    UnknownVariable {
        /// The data set spec as given.
        spec: String,
        /// The variable name as given.
        var: String,
    },
    /// A quicklook cannot be drawn (wrong selection, not 2-D, nothing valid to show).
    #[error("quicklook: {0}")]
    Render(String),
}

impl DataError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DataError::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn zarr(array: impl Into<String>, message: impl std::fmt::Display) -> Self {
        DataError::Zarr {
            array: array.into(),
            message: message.to_string(),
        }
    }
}
