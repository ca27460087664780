//! The repository at its commit as a git bundle (`git bundle` v2 format: a header naming the
//! refs, then one packfile with the commit, its history and every object they reach), written
//! and read with libgit2, so neither side needs the `git` command.

use std::io::{BufRead, Read, Write};
use std::path::Path;

use git2::{Oid, Repository};

use crate::BundleError;

const SIGNATURE: &str = "# v2 git bundle\n";
/// The branch the bundle holds, pointing at the commit.
pub const BRANCH: &str = "refs/heads/berth";

fn git_err(what: &str, e: git2::Error) -> BundleError {
    BundleError::Invalid(format!("{what}: {}", e.message()))
}

/// Writes `commit` of the repository at `repo` (bare or not), with its whole history, as a git
/// bundle at `out` whose refs are `HEAD` and [`BRANCH`]. One thread packs, so the same commit
/// gives the same bytes. Returns the size in bytes.
///
/// # Errors
/// [`BundleError::Invalid`] when the repository or commit cannot be read;
/// [`BundleError::Io`] on a write error.
pub fn write(repo: &Path, commit: &str, out: &Path) -> Result<u64, BundleError> {
    let r = Repository::open(repo).map_err(|e| git_err("cannot open the repository", e))?;
    let oid = Oid::from_str(commit).map_err(|e| git_err("bad commit id", e))?;
    r.find_commit(oid)
        .map_err(|e| git_err(&format!("the repository has no commit {commit}"), e))?;
    let mut walk = r.revwalk().map_err(|e| git_err("revwalk", e))?;
    walk.push(oid).map_err(|e| git_err("revwalk", e))?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(|e| git_err("revwalk", e))?;
    let mut pb = r.packbuilder().map_err(|e| git_err("packbuilder", e))?;
    pb.set_threads(1);
    pb.insert_walk(&mut walk)
        .map_err(|e| git_err("packing the history", e))?;
    let mut buf = git2::Buf::new();
    pb.write_buf(&mut buf)
        .map_err(|e| git_err("packing the history", e))?;
    let mut f = std::fs::File::create(out).map_err(|e| BundleError::io(out, e))?;
    let head = format!("{SIGNATURE}{commit} HEAD\n{commit} {BRANCH}\n\n");
    f.write_all(head.as_bytes())
        .and_then(|_| f.write_all(&buf))
        .and_then(|_| f.sync_all())
        .map_err(|e| BundleError::io(out, e))?;
    Ok((head.len() + buf.len()) as u64)
}

/// Reads the git bundle at `bundle` into a new bare repository at `dest` and returns the
/// commit its `HEAD` names (40 hex digits), which [`BRANCH`] points at.
///
/// # Errors
/// [`BundleError::Invalid`] for a file that is no v2 git bundle, one with prerequisites, or a
/// pack libgit2 refuses.
pub fn unbundle(bundle: &Path, dest: &Path) -> Result<String, BundleError> {
    let f = std::fs::File::open(bundle).map_err(|e| BundleError::io(bundle, e))?;
    let mut r = std::io::BufReader::new(f);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| BundleError::io(bundle, e))?;
    if line != SIGNATURE {
        return Err(BundleError::Invalid(
            "the repository part is no git bundle".into(),
        ));
    }
    let mut head = None;
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| BundleError::io(bundle, e))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if l.starts_with('-') {
            return Err(BundleError::Invalid(
                "the git bundle needs commits it does not hold".into(),
            ));
        }
        if let Some((id, name)) = l.split_once(' ') {
            if name == "HEAD" || head.is_none() {
                head = Some(id.to_string());
            }
        }
    }
    let head = head.ok_or_else(|| BundleError::Invalid("the git bundle names no ref".into()))?;
    let repo = Repository::init_bare(dest).map_err(|e| git_err("cannot create a repository", e))?;
    {
        let odb = repo.odb().map_err(|e| git_err("odb", e))?;
        let mut w = odb.packwriter().map_err(|e| git_err("packwriter", e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(|e| BundleError::io(bundle, e))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])
                .map_err(|e| BundleError::Invalid(format!("the git bundle's pack: {e}")))?;
        }
        w.commit()
            .map_err(|e| git_err("the git bundle's pack", e))?;
    }
    let oid = Oid::from_str(&head).map_err(|e| git_err("bad commit id in the git bundle", e))?;
    repo.reference(BRANCH, oid, true, "berth import")
        .map_err(|e| git_err("the git bundle's commit", e))?;
    repo.set_head(BRANCH)
        .map_err(|e| git_err("the git bundle's commit", e))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips_and_is_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::init(d.path().join("r")).unwrap();
        let sig = git2::Signature::new("t", "t@example.org", &git2::Time::new(1, 0)).unwrap();
        let mut parent = None;
        for i in 0..3 {
            std::fs::write(d.path().join("r/f.txt"), format!("v{i}\n")).unwrap();
            let mut idx = repo.index().unwrap();
            idx.add_path(Path::new("f.txt")).unwrap();
            let tree = repo.find_tree(idx.write_tree().unwrap()).unwrap();
            let parents: Vec<git2::Commit> = parent
                .iter()
                .map(|p| repo.find_commit(*p).unwrap())
                .collect();
            let refs: Vec<&git2::Commit> = parents.iter().collect();
            parent = Some(
                repo.commit(Some("HEAD"), &sig, &sig, "c", &tree, &refs)
                    .unwrap(),
            );
        }
        let commit = parent.unwrap().to_string();
        let (a, b) = (d.path().join("a.bundle"), d.path().join("b.bundle"));
        write(&d.path().join("r"), &commit, &a).unwrap();
        write(&d.path().join("r"), &commit, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let got = unbundle(&a, &d.path().join("u.git")).unwrap();
        assert_eq!(got, commit);
        let u = Repository::open(d.path().join("u.git")).unwrap();
        let c = u.find_commit(Oid::from_str(&commit).unwrap()).unwrap();
        assert_eq!(c.parent_count(), 1);
        // git itself reads it.
        if let Ok(out) = std::process::Command::new("git")
            .args(["bundle", "verify"])
            .arg(&a)
            .current_dir(d.path().join("r"))
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
