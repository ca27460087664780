//! BinderHub's providers: from `<provider>/<spec>` to a clone URL and a ref.

use percent_encoding::percent_decode_str;

use crate::config::Config;

/// The longest spec accepted, in bytes.
pub const MAX_SPEC_LEN: usize = 512;

/// A launch request resolved to a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `gh`, `gl`, `gist` or `git`.
    pub provider: String,
    /// The spec as given (after the provider).
    pub spec: String,
    /// The clone URL.
    pub repo_url: String,
    /// The ref to build.
    pub reference: String,
    /// A web page of the repository at a ref, as BinderHub's `binder_ref_url`, without the ref.
    pub web_url: String,
}

/// Why a spec is refused. Each carries the HTTP status BinderHub would answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No such provider.
    #[error("unknown provider {0:?}: use gh, gl, gist or git")]
    UnknownProvider(String),
    /// The spec does not have the provider's form.
    #[error("malformed spec {spec:?} for provider {provider}: expected {expected}")]
    Malformed {
        /// The provider.
        provider: String,
        /// The spec.
        spec: String,
        /// The form it should have.
        expected: &'static str,
    },
    /// Too long.
    #[error("spec is longer than {MAX_SPEC_LEN} bytes")]
    TooLong,
    /// A ref that could be taken for an option.
    #[error("invalid ref {0:?}")]
    BadRef(String),
    /// Local paths and `file://` URLs, refused unless the operator allows them.
    #[error("local repositories cannot be launched through the web (allow_local is off)")]
    LocalRefused,
}

impl SpecError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            SpecError::UnknownProvider(_) => 404,
            SpecError::LocalRefused => 403,
            _ => 400,
        }
    }
}

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
}

fn ref_ok(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with('-')
        && r.len() <= 255
        && !r
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
        && !r.contains("..")
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Resolves `provider` and `spec` (as in `/v2/<provider>/<spec>`) with the configured bases.
///
/// Specs, as BinderHub: `gh` `<org>/<repo>/<ref>`; `gl` url-escaped `<namespace/project>/<ref>`;
/// `gist` `<user>/<id>[/<ref>]`; `git` url-escaped clone URL then `/<ref>`.
///
/// # Errors
/// [`SpecError`].
pub fn resolve(cfg: &Config, provider: &str, spec: &str) -> Result<RepoSpec, SpecError> {
    if spec.len() > MAX_SPEC_LEN {
        return Err(SpecError::TooLong);
    }
    let spec = spec.trim_matches('/');
    let malformed = |expected| SpecError::Malformed {
        provider: provider.to_string(),
        spec: spec.to_string(),
        expected,
    };
    let base = |name: &str| {
        cfg.providers
            .get(name)
            .map(|b| b.trim_end_matches('/').to_string())
    };
    let (repo_url, reference, web_url) = match provider {
        "gh" => {
            let mut parts = spec.splitn(3, '/');
            let (org, repo, r) = (parts.next(), parts.next(), parts.next());
            let (Some(org), Some(repo), Some(r)) = (org, repo, r) else {
                return Err(malformed("<org>/<repo>/<ref>"));
            };
            let repo = repo.trim_end_matches(".git");
            if !component_ok(org) || !component_ok(repo) {
                return Err(malformed("<org>/<repo>/<ref>"));
            }
            let b = base("gh").ok_or_else(|| SpecError::UnknownProvider("gh".into()))?;
            (
                format!("{b}/{org}/{repo}"),
                decode(r),
                format!("{b}/{org}/{repo}/tree/"),
            )
        }
        "gl" => {
            let (project, r) = spec
                .rsplit_once('/')
                .ok_or_else(|| malformed("<url-escaped namespace/project>/<ref>"))?;
            let project = decode(project);
            if !project.split('/').all(component_ok) {
                return Err(malformed("<url-escaped namespace/project>/<ref>"));
            }
            let b = base("gl").ok_or_else(|| SpecError::UnknownProvider("gl".into()))?;
            (
                format!("{b}/{project}.git"),
                decode(r),
                format!("{b}/{project}/-/tree/"),
            )
        }
        "gist" => {
            let parts: Vec<&str> = spec.split('/').collect();
            let (user, id, r) = match parts.as_slice() {
                [u, i] => (*u, *i, "HEAD".to_string()),
                [u, i, r] => (*u, *i, decode(r)),
                _ => return Err(malformed("<user>/<id>[/<ref>]")),
            };
            if !component_ok(user) || !component_ok(id) {
                return Err(malformed("<user>/<id>[/<ref>]"));
            }
            let b = base("gist").ok_or_else(|| SpecError::UnknownProvider("gist".into()))?;
            (
                format!("{b}/{user}/{id}.git"),
                r,
                format!("{b}/{user}/{id}/"),
            )
        }
        "git" => {
            let (url, r) = spec
                .rsplit_once('/')
                .ok_or_else(|| malformed("<url-escaped clone URL>/<ref>"))?;
            let url = decode(url);
            let local = url.starts_with("file:")
                || url.starts_with('/')
                || url.starts_with('.')
                || !url.contains(':');
            if local && !cfg.allow_local {
                return Err(SpecError::LocalRefused);
            }
            if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.starts_with('-') {
                return Err(malformed("<url-escaped clone URL>/<ref>"));
            }
            (url.clone(), decode(r), url)
        }
        other => return Err(SpecError::UnknownProvider(other.to_string())),
    };
    if !ref_ok(&reference) {
        return Err(SpecError::BadRef(reference));
    }
    Ok(RepoSpec {
        provider: provider.to_string(),
        spec: spec.to_string(),
        repo_url,
        reference,
        web_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_map_specs() {
        let cfg = Config::default();
        let r = resolve(&cfg, "gh", "binder-examples/conda/main").unwrap();
        assert_eq!(r.repo_url, "https://github.com/binder-examples/conda");
        assert_eq!(r.reference, "main");
        let r = resolve(&cfg, "gl", "group%2Fsub%2Fproject/v1.0").unwrap();
        assert_eq!(r.repo_url, "https://gitlab.com/group/sub/project.git");
        assert_eq!(r.reference, "v1.0");
        let r = resolve(&cfg, "gist", "someone/abc123").unwrap();
        assert_eq!(r.repo_url, "https://gist.github.com/someone/abc123.git");
        assert_eq!(r.reference, "HEAD");
        let r = resolve(&cfg, "git", "https%3A%2F%2Fexample.org%2Frepo.git/main").unwrap();
        assert_eq!(r.repo_url, "https://example.org/repo.git");
    }

    #[test]
    fn bad_specs() {
        let cfg = Config::default();
        assert_eq!(resolve(&cfg, "svn", "a/b/c").unwrap_err().status(), 404);
        assert!(matches!(
            resolve(&cfg, "gh", "only-org"),
            Err(SpecError::Malformed { .. })
        ));
        assert!(matches!(
            resolve(&cfg, "gh", "a/../main"),
            Err(SpecError::Malformed { .. })
        ));
        assert!(matches!(
            resolve(&cfg, "gh", "a/b/-x"),
            Err(SpecError::BadRef(_))
        ));
        assert!(matches!(
            resolve(&cfg, "gh", "a/b/--upload-pack=x"),
            Err(SpecError::BadRef(_))
        ));
        assert_eq!(
            resolve(&cfg, "gh", &"a/".repeat(400)),
            Err(SpecError::TooLong)
        );
        assert_eq!(
            resolve(&cfg, "git", "file%3A%2F%2F%2Fetc/main"),
            Err(SpecError::LocalRefused)
        );
        assert_eq!(
            resolve(&cfg, "git", "%2Fsrv%2Frepo/main"),
            Err(SpecError::LocalRefused)
        );
        let local = Config {
            allow_local: true,
            ..Config::default()
        };
        assert!(resolve(&local, "git", "%2Fsrv%2Frepo/main").is_ok());
    }
}
