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
    /// The spec as requested (after the provider), still percent-encoded as in the URL.
    pub spec: String,
    /// The clone URL.
    pub repo_url: String,
    /// The ref to build.
    pub reference: String,
    /// A web page of the repository, to which [`RepoSpec::ref_url`] adds the commit.
    pub web_url: String,
    /// The spec without its ref, as BinderHub's `get_resolved_spec` writes it (`<org>/<repo>`,
    /// the escaped namespace, `<user>/<id>`, or the clone URL escaped, credentials redacted).
    pub head: String,
}

/// Characters BinderHub's `urllib.parse.quote(s, safe="")` leaves as they are: letters,
/// digits and `_.-~`.
const QUOTE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// `s` percent-encoded as Python's `urllib.parse.quote(s, safe="")`.
pub fn quote(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUOTE).to_string()
}

/// At most the first 64 characters of `s` (followed by `…` when cut), for messages that quote
/// user input.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl RepoSpec {
    /// The page of the repository at `commit`, as BinderHub's `get_resolved_ref_url`:
    /// `…/<org>/<repo>/tree/<commit>` (GitHub), `…/<namespace>/-/tree/<commit>` (GitLab),
    /// `…/<user>/<id>/<commit>` (gists), and the clone URL itself for `git` (no web page is
    /// known for an arbitrary server). Credentials are redacted.
    pub fn ref_url(&self, commit: &str) -> String {
        let commit = quote(commit);
        match self.provider.as_str() {
            "gh" => format!("{}/tree/{commit}", self.web_url),
            "gl" => format!("{}/-/tree/{commit}", self.web_url),
            "gist" => format!("{}/{commit}", self.web_url),
            _ => berth_builder::redact_url(&self.repo_url),
        }
    }

    /// `v2/<provider>/<spec>` as requested, credentials in a `git` URL redacted (BinderHub's
    /// `binder_request`).
    pub fn request(&self) -> String {
        let spec = if self.provider == "git" {
            format!("{}/{}", self.head, quote(&self.reference))
        } else {
            self.spec.clone()
        };
        format!("v2/{}/{spec}", self.provider)
    }

    /// `v2/<provider>/<spec>` with the ref replaced by `commit`, escaped as BinderHub's
    /// `get_resolved_spec` (`binder_persistent_request`).
    pub fn persistent_request(&self, commit: &str) -> String {
        format!("v2/{}/{}/{}", self.provider, self.head, quote(commit))
    }
}

/// Why a spec is refused. Each carries the HTTP status BinderHub would answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No such provider.
    #[error("unknown provider {0:?}: use gh, gl, gist or git")]
    UnknownProvider(String),
    /// The spec does not have the provider's form.
    #[error(
        "malformed spec {:?} for provider {provider}: expected {expected}",
        shorten(spec)
    )]
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
    #[error("invalid ref {:?}", shorten(.0))]
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

/// Whether a `git` provider URL is a local path or a `file://` URL (refused unless the
/// operator sets `allow_local`).
pub fn is_local_url(url: &str) -> bool {
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.') || !url.contains(':')
}

/// Resolves `provider` and `spec` (as in `/v2/<provider>/<spec>`) with the configured bases.
///
/// `spec` is the raw path, still percent-encoded. Specs, as BinderHub: `gh`
/// `<org>/<repo>/<ref>`; `gl` url-escaped `<namespace/project>/<ref>`; `gist`
/// `<user>/<id>[/<ref>]`; `git` url-escaped clone URL then `/<ref>`. Refs may hold `/`.
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
    let (repo_url, reference, web_url, head) = match provider {
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
                format!("{b}/{org}/{repo}"),
                format!("{org}/{repo}"),
            )
        }
        "gl" => {
            // As BinderHub: the escaped namespace up to the first `/`, then the ref.
            let (quoted, r) = spec
                .split_once('/')
                .ok_or_else(|| malformed("<url-escaped namespace/project>/<ref>"))?;
            let project = decode(quoted);
            if !project.split('/').all(component_ok) {
                return Err(malformed("<url-escaped namespace/project>/<ref>"));
            }
            let b = base("gl").ok_or_else(|| SpecError::UnknownProvider("gl".into()))?;
            (
                format!("{b}/{project}.git"),
                decode(r),
                format!("{b}/{project}"),
                quote(&project),
            )
        }
        "gist" => {
            let parts: Vec<&str> = spec.splitn(3, '/').collect();
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
                format!("{b}/{user}/{id}"),
                format!("{user}/{id}"),
            )
        }
        "git" => {
            // As BinderHub: the escaped URL up to the first `/`, then the ref; a URL sent
            // unescaped (`https://host/repo/ref`) is split at its last `/` instead.
            let (url, r) = match spec.split_once('/') {
                Some((u, r)) if !decode(u).ends_with(':') => (u, r),
                _ => spec
                    .rsplit_once('/')
                    .ok_or_else(|| malformed("<url-escaped clone URL>/<ref>"))?,
            };
            let url = decode(url);
            if is_local_url(&url) && !cfg.allow_local {
                return Err(SpecError::LocalRefused);
            }
            if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.starts_with('-') {
                return Err(malformed("<url-escaped clone URL>/<ref>"));
            }
            let head = quote(&berth_builder::redact_url(&url));
            (url.clone(), decode(r), url, head)
        }
        other => return Err(SpecError::UnknownProvider(shorten(other))),
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
        head,
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
        // A long ref is not echoed whole.
        let long = format!("a/b/-{}", "x".repeat(300));
        let e = resolve(&cfg, "gh", &long).unwrap_err().to_string();
        assert!(e.len() < 120, "{e}");
    }

    #[test]
    fn ref_urls_and_persistent_requests_as_binderhub() {
        let cfg = Config::default();
        let c = "0123456789abcdef0123456789abcdef01234567";
        let r = resolve(&cfg, "gh", "binder-examples/conda.git/feature%2Fx").unwrap();
        assert_eq!(r.reference, "feature/x");
        assert_eq!(
            r.ref_url(c),
            format!("https://github.com/binder-examples/conda/tree/{c}")
        );
        assert_eq!(r.request(), "v2/gh/binder-examples/conda.git/feature%2Fx");
        assert_eq!(
            r.persistent_request(c),
            format!("v2/gh/binder-examples/conda/{c}")
        );
        let r = resolve(&cfg, "gl", "group%2Fproject/release%2F1").unwrap();
        assert_eq!(r.reference, "release/1");
        assert_eq!(
            r.ref_url(c),
            format!("https://gitlab.com/group/project/-/tree/{c}")
        );
        assert_eq!(
            r.persistent_request(c),
            format!("v2/gl/group%2Fproject/{c}")
        );
        let r = resolve(&cfg, "gist", "someone/abc123").unwrap();
        assert_eq!(
            r.ref_url(c),
            format!("https://gist.github.com/someone/abc123/{c}")
        );
        assert_eq!(
            r.persistent_request(c),
            format!("v2/gist/someone/abc123/{c}")
        );
        let r = resolve(
            &cfg,
            "git",
            "https%3A%2F%2Fuser%3Asecret%40example.org%2Fr.git/topic%2Fa",
        )
        .unwrap();
        assert_eq!(r.repo_url, "https://user:secret@example.org/r.git");
        assert_eq!(r.reference, "topic/a");
        assert_eq!(r.ref_url(c), "https://***@example.org/r.git");
        assert_eq!(
            r.persistent_request(c),
            format!("v2/git/https%3A%2F%2F%2A%2A%2A%40example.org%2Fr.git/{c}")
        );
        assert!(!r.request().contains("secret"), "{}", r.request());
        // An unescaped URL still resolves.
        let r = resolve(&cfg, "git", "https://example.org/r.git/main").unwrap();
        assert_eq!(r.repo_url, "https://example.org/r.git");
        assert_eq!(r.reference, "main");
    }
}
