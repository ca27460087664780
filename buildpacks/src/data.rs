//! `berth-data.txt`: the data sets of berth's data library a repository needs.
//!
//! berth's own spec file (repo2docker has none like it), found by the same rule as the
//! others: in `binder/` or `.binder/` when that folder exists, else at the root. One data set
//! per line, `NAME` (its newest version) or `NAME@VERSION` (a version id or a prefix of one,
//! hex digits); `#` starts a comment, blank lines are ignored. A session launched from the
//! repository gets each one mounted read-only at `/data/NAME`.

use crate::{BuildpackError, RepoFiles, SpecDir};

/// The spec file's name.
pub const DATA_FILE: &str = "berth-data.txt";

/// The data sets the repository's `berth-data.txt` names (see the module docs), in file
/// order, each once; empty without the file.
///
/// # Errors
/// [`BuildpackError::AmbiguousBinderDir`]; [`BuildpackError::InvalidSpec`] naming the file and
/// line for a name or version that is not valid, a name given twice, or a file that is not
/// UTF-8 text.
pub fn data_requirements(repo: &RepoFiles) -> Result<Vec<String>, BuildpackError> {
    let spec = SpecDir::new(repo)?;
    match spec.find(&[DATA_FILE]) {
        Some(path) => parse_data_txt(&path, &spec.read_text(&path)?),
        None => Ok(Vec::new()),
    }
}

/// Parses the text of a `berth-data.txt` at repository path `file` (see the module docs).
/// Names follow berth-data's rules: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.`, no
/// `..`; a version is 1 to 64 hex digits.
///
/// # Errors
/// [`BuildpackError::InvalidSpec`] with the line number.
pub fn parse_data_txt(file: &str, text: &str) -> Result<Vec<String>, BuildpackError> {
    let mut out: Vec<String> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| BuildpackError::InvalidSpec {
            file: file.to_string(),
            message: format!("line {}: {message}", i + 1),
        };
        let (name, version) = match line.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (line, None),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && !name.contains("..")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(bad(format!(
                "{line:?} is not NAME or NAME@VERSION (a name is 1 to 64 of letters, digits, '.', '_', '-', not starting with '.')"
            )));
        }
        if let Some(v) = version {
            if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "the version of {name:?} must be hex digits (a version id or a prefix of one)"
                )));
            }
        }
        if out.iter().any(|o| o.split('@').next() == Some(name)) {
            return Err(bad(format!("{name:?} is named twice")));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_versions_comments_and_blank_lines() {
        let text = "# data for the notebooks\n\nsst\nwinds@ab12  # pinned\n  hgt_djf.v2 \n";
        assert_eq!(
            parse_data_txt(DATA_FILE, text).unwrap(),
            ["sst", "winds@ab12", "hgt_djf.v2"]
        );
        assert!(parse_data_txt(DATA_FILE, "# nothing\n\n")
            .unwrap()
            .is_empty());
        for (bad, says) in [
            ("a/b\n", "line 1: \"a/b\" is not NAME"),
            ("ok\n.hidden\n", "line 2:"),
            ("x..y\n", "line 1:"),
            ("sst@xyz\n", "the version of \"sst\" must be hex digits"),
            ("sst@\n", "must be hex digits"),
            ("sst\nsst@ab\n", "line 2: \"sst\" is named twice"),
        ] {
            let e = parse_data_txt("binder/berth-data.txt", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("binder/berth-data.txt: "), "{bad:?}: {e}");
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn found_by_the_binder_folder_rule() {
        let mut repo = RepoFiles::new();
        assert!(data_requirements(&repo).unwrap().is_empty());
        repo.insert_file(DATA_FILE, "root\n");
        assert_eq!(data_requirements(&repo).unwrap(), ["root"]);
        // A binder/ folder wins over the root, even without the file in it.
        repo.insert_file("binder/requirements.txt", "numpy\n");
        assert!(data_requirements(&repo).unwrap().is_empty());
        repo.insert_file("binder/berth-data.txt", "inbinder@0f\n");
        assert_eq!(data_requirements(&repo).unwrap(), ["inbinder@0f"]);
        let mut dot = RepoFiles::new();
        dot.insert_file(".binder/berth-data.txt", "dotted\n");
        dot.insert_file(DATA_FILE, "root\n");
        assert_eq!(data_requirements(&dot).unwrap(), ["dotted"]);
        dot.insert_file("binder/x", "");
        assert_eq!(
            data_requirements(&dot).unwrap_err(),
            BuildpackError::AmbiguousBinderDir
        );
        let mut bad = RepoFiles::new();
        bad.insert_file(DATA_FILE, vec![0xff, 0xfe]);
        assert!(data_requirements(&bad)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }
}
