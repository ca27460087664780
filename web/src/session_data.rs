//! Data sets of berth's data library in sessions: `NAME` or `NAME@VERSION` specs resolved to
//! the exact versions mounted read-only at `/data/NAME` (shared by `berth launch/run --data`
//! and the server's `data=` launch parameter).

use std::path::Path;

use berth_data::{DataError, Library};
use berth_launcher::DataMount;

/// Why a session's data sets cannot be mounted. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum SessionDataError {
    /// A data set asked for (`--data`, `data=`) that the library cannot resolve.
    #[error("{0}")]
    Requested(Box<DataError>),
    /// A data set the repository's `berth-data.txt` names that the library cannot resolve.
    #[error("the repository's berth-data.txt needs data set {spec:?}, which the data library at {root} cannot give: {source}")]
    Declared {
        /// The entry of the file.
        spec: String,
        /// The library root.
        root: String,
        /// The library's error.
        source: Box<DataError>,
    },
    /// One name asked for with two different versions.
    #[error("data set {name:?} is asked for twice, as {first} and {second}")]
    Twice {
        /// The data set's name.
        name: String,
        /// The first version id.
        first: String,
        /// The other version id.
        second: String,
    },
    /// The library itself cannot be opened.
    #[error("cannot open the data library at {root}: {source}")]
    Library {
        /// The library root.
        root: String,
        /// The library's error.
        source: Box<DataError>,
    },
}

/// Checks the syntax of a spec (`NAME` or `NAME@HEXPREFIX`) without a library, as
/// [`berth_data::parse_spec`] does.
///
/// # Errors
/// [`DataError::InvalidName`]; [`DataError::UnknownVersion`] for a version that is not hex
/// digits.
pub fn check_spec(spec: &str) -> Result<(), DataError> {
    berth_data::parse_spec(spec).map(|_| ())
}

/// Resolves the data sets of a session in the library at `root`: `requested` (`--data`, the
/// `data=` parameter) first, then the repository's `declared` entries (`berth-data.txt`) whose
/// name was not requested (a request overrides the file's version). A name requested twice
/// must resolve to one version. Nothing is opened (or created) when both lists are empty.
///
/// # Errors
/// [`SessionDataError`]: an unknown name or version (naming it and whether it came from the
/// request or the file), a name asked for with two versions, an unreadable library.
pub fn resolve_data(
    root: &Path,
    requested: &[String],
    declared: &[String],
) -> Result<Vec<DataMount>, SessionDataError> {
    if requested.is_empty() && declared.is_empty() {
        return Ok(Vec::new());
    }
    let shown = root.display().to_string();
    let lib = Library::open(root).map_err(|source| SessionDataError::Library {
        root: shown.clone(),
        source: Box::new(source),
    })?;
    let mut out: Vec<DataMount> = Vec::new();
    let mount = |v: berth_data::Version| {
        let path = v.path.canonicalize().unwrap_or_else(|_| v.path.clone());
        DataMount {
            name: v.name.clone(),
            version: v.id().to_string(),
            source: path.to_string_lossy().into_owned(),
        }
    };
    for spec in requested {
        let m = mount(
            lib.resolve(spec)
                .map_err(|e| SessionDataError::Requested(Box::new(e)))?,
        );
        match out.iter().find(|o| o.name == m.name) {
            Some(o) if o.version != m.version => {
                return Err(SessionDataError::Twice {
                    name: m.name,
                    first: o.version.clone(),
                    second: m.version,
                })
            }
            Some(_) => {}
            None => out.push(m),
        }
    }
    for spec in declared {
        let name = spec.split('@').next().unwrap_or(spec);
        if out.iter().any(|o| o.name == name) {
            continue;
        }
        let v = lib
            .resolve(spec)
            .map_err(|source| SessionDataError::Declared {
                spec: spec.clone(),
                root: shown.clone(),
                source: Box::new(source),
            })?;
        out.push(mount(v));
    }
    Ok(out)
}
