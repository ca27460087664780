//! Fetching a repository at a ref (git2), with a local clone cache, and reading its tree
//! (submodules included, as `git clone --recursive`).
//!
//! Credentials in a URL (`https://user:token@host/…`) are used for the fetch and never shown:
//! every URL berth reports goes through [`redact_url`], and libgit2's messages are scrubbed of
//! the user name and password.

use crate::engine::one_line;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_buildpacks::{FileEntry, RepoFiles};
use git2::{
    AutotagOption, FetchOptions, ObjectType, Oid, RemoteCallbacks, RemoteRedirect, Repository, Tree,
};
use sha2::{Digest, Sha256};

/// The only reason shown for a failed fetch under a [`HostPolicy`]: the same for a refused
/// host, a closed or open port, a timeout, a missing repository or an authentication failure,
/// so that the answer tells nothing about the network behind the server.
pub const HIDDEN_FETCH_REASON: &str = "the repository could not be fetched";

/// How many characters of a ref (or other user input) an error message quotes before `…`.
pub const QUOTE_CHARS: usize = 60;

/// How deep submodules of submodules are followed.
pub const MAX_SUBMODULE_DEPTH: usize = 8;

/// Errors of fetching and reading a repository.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source is a local path that is not a Git repository (work tree or bare).
    #[error("{} is not a git repository", shorten(.0))]
    NotARepository(String),
    /// The URL could not be fetched from.
    #[error("cannot fetch {url}: {message}")]
    Unreachable {
        /// The repository URL, redacted ([`redact_url`]).
        url: String,
        /// libgit2's reason on one line, scrubbed of credentials; [`HIDDEN_FETCH_REASON`] under
        /// a [`HostPolicy`].
        message: String,
    },
    /// The ref is not a branch, tag or commit of the repository.
    #[error("unknown ref {} in {url}", quote_debug(.reference))]
    UnknownRef {
        /// The repository URL, redacted.
        url: String,
        /// The ref asked for.
        reference: String,
    },
    /// The ref could be mistaken for an option or is otherwise malformed.
    #[error("invalid ref {}: refs may not start with '-' or contain whitespace or control characters, and have at most 255 bytes", quote_debug(.0))]
    InvalidRef(String),
    /// The tree at the commit is larger than the configured limit.
    #[error("repository is larger than the limit of {limit} bytes (--max-repo-bytes)")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A symlink in the repository points outside it.
    #[error("symlink {path} points outside the repository (to {}); refusing to build", quote_debug(.target))]
    SymlinkEscapes {
        /// The symlink's path in the repository.
        path: String,
        /// Its target, as stored in git.
        target: String,
    },
    /// The fetch was stopped (the build's time ran out).
    #[error("fetch cancelled")]
    Cancelled,
    /// A `--subdir` that is malformed or not a folder of the commit.
    #[error("--subdir {}: {reason}", quote_debug(.subdir))]
    Subdir {
        /// The folder asked for, as given.
        subdir: String,
        /// Why it cannot be built.
        reason: String,
    },
    /// Another error from git or the file system.
    #[error("git: {0}")]
    Git(String),
}

impl From<git2::Error> for FetchError {
    fn from(e: git2::Error) -> Self {
        FetchError::Git(one_line(e.message()))
    }
}

/// At most [`QUOTE_CHARS`] characters of `s`, then `…` when it was longer.
pub fn shorten(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn quote_debug(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// A repository resolved at a commit, with its files read into memory.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The URL (redacted: [`redact_url`]) or absolute local path the repository was fetched
    /// from.
    pub url: String,
    /// The ref asked for (`HEAD` when none was).
    pub reference: String,
    /// The commit the ref resolved to, as 40 hex digits.
    pub commit: String,
    /// The commit's tree id, as 40 hex digits: the key of the repository layer. With a
    /// [`Checkout::subdir`], the id of that folder's tree (of the submodule's commit, when the
    /// folder is a submodule).
    pub tree: String,
    /// The files of the tree, with the files of its submodules at their paths; with a
    /// [`Checkout::subdir`], the files of that folder, at paths relative to it.
    pub files: RepoFiles,
    /// The folder of the repository built as if it were its root (`--subdir`), normalised
    /// (no leading `./`, no trailing `/`); `None` for the whole repository.
    pub subdir: Option<String>,
    /// What the user should know: submodules that could not be fetched (their files are
    /// missing from [`Checkout::files`]), one line each.
    pub warnings: Vec<String>,
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

/// Settings of one checkout beyond the source and ref.
#[derive(Debug, Clone, Default)]
pub struct FetchSettings {
    /// Which hosts may be reached; `None` fetches anything (the CLI's default).
    pub policy: Option<HostPolicy>,
    /// Set to stop a running fetch (checked in libgit2's progress callbacks).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl FetchSettings {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
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

/// Which hosts and schemes a fetch may reach, against server-side request forgery: loopback,
/// link-local, private and other non-global addresses are refused unless listed in `allowed`.
///
/// Under a policy, local paths and scp-like URLs are refused, HTTP redirects to another host are
/// not followed (libgit2's `RemoteRedirect::None`; a redirect within the same host is),
/// and every fetch failure shows the same reason ([`HIDDEN_FETCH_REASON`]); the real one is
/// logged with `tracing::debug!`. The host is resolved when checked and again by libgit2 when
/// fetching, so a name whose DNS answer changes between the two (DNS rebinding) is not caught;
/// an egress firewall is the complete answer to that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Host names, addresses or CIDR blocks (`10.0.0.0/8`, `::1/128`) reachable although
    /// private. A listed host name is reachable whatever it resolves to.
    pub allowed: Vec<String>,
    /// URL schemes allowed (`https`, `http`, `git`, `ssh`); empty allows `https` only.
    pub schemes: Vec<String>,
}

impl HostPolicy {
    /// Checks `url` (its scheme, and every address its host resolves to).
    ///
    /// # Errors
    /// [`FetchError::Unreachable`] with [`HIDDEN_FETCH_REASON`] when the URL may not be
    /// fetched; the reason is logged at debug level.
    pub fn check(&self, url: &str) -> Result<(), FetchError> {
        self.verdict(url).map_err(|reason| {
            tracing::debug!(url = %redact_url(url), %reason, "refused by the host policy");
            hidden(url)
        })
    }

    /// Whether `url` may be fetched; `Err` carries the reason.
    fn verdict(&self, url: &str) -> Result<(), String> {
        if !url.contains("://") {
            return Err("local paths and scp-like URLs are not allowed".into());
        }
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let scheme = parsed.scheme();
        let scheme_ok = scheme != "file"
            && if self.schemes.is_empty() {
                scheme == "https"
            } else {
                self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
            };
        if !scheme_ok {
            return Err(format!("scheme {scheme} is not allowed"));
        }
        let port = parsed.port_or_known_default().unwrap_or(match scheme {
            "git" => 9418,
            "ssh" => 22,
            _ => 443,
        });
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err("the URL has no host".into()),
        };
        if self.allows_name(&host) {
            return Ok(());
        }
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        for ip in addrs {
            if !self.allows_addr(ip) && !is_global(ip) {
                return Err(format!(
                    "{host} resolves to {ip}, which is not a global address"
                ));
            }
        }
        Ok(())
    }

    /// Checks one `allowed` entry: a host name, an IP address, or a CIDR block (`10.0.0.0/8`,
    /// `fd00::/8`).
    ///
    /// # Errors
    /// A one-line reason.
    pub fn validate_entry(entry: &str) -> Result<(), String> {
        if entry.contains('/') {
            return entry
                .parse::<ipnet::IpNet>()
                .map(|_| ())
                .map_err(|_| format!("{entry:?} is not a CIDR block (address/prefix length)"));
        }
        if entry.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let name_ok = !entry.is_empty()
            && entry.len() <= 253
            && entry.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if name_ok {
            Ok(())
        } else {
            Err(format!(
                "{entry:?} is not a host name, an IP address or a CIDR block"
            ))
        }
    }

    fn allows_name(&self, host: &str) -> bool {
        self.allowed
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(host))
    }

    fn allows_addr(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allowed.iter().any(|entry| {
            if let Ok(net) = entry.parse::<ipnet::IpNet>() {
                net.contains(&ip)
            } else if let Ok(a) = entry.parse::<IpAddr>() {
                canonical_ip(a) == ip
            } else {
                false
            }
        })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it maps.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether `ip` is a global unicast address, reachable on the public Internet: not loopback,
/// private (RFC 1918), shared (CGNAT, RFC 6598), link-local, unique-local (RFC 4193),
/// unspecified, broadcast, multicast, documentation, benchmarking (RFC 2544) or reserved, and
/// no IPv4-mapped, IPv4-compatible, NAT64 or 6to4 form of such an address (IANA special-purpose
/// registries).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_global_v4(a),
        IpAddr::V6(a) => is_global_v6(a),
    }
}

fn is_global_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || o[0] == 0 // "this network", 0.0.0.0/8
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT), 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments, 192.0.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || o[0] >= 240) // reserved, 240.0.0.0/4
}

fn is_global_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = a.segments();
    // IPv4-compatible (deprecated, ::/96 beyond :: and ::1) and NAT64 (64:ff9b::/96) carry an
    // IPv4 address in their last 32 bits; 6to4 (2002::/16) in bits 16..48.
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        // ::, ::1 and the IPv4-compatible addresses.
        return !(a.is_unspecified() || a.is_loopback()) && is_global_v4(embedded_v4(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_global_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_global_v4(embedded_v4(s[1], s[2]));
    }
    !(a.is_multicast()
        || a.is_unique_local() // fc00::/7
        || a.is_unicast_link_local() // fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation, 2001:db8::/32
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only, 100::/64
}

/// `url` with any user name and password replaced by `***` (`https://***@host/path`), for
/// everything berth prints, logs, labels or sends; scp-like `user@host:path` keeps its user
/// (it names an SSH account, not a secret). Local paths are returned as they are.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => format!(
            "{}***@{}{}",
            &url[..scheme_end + 3],
            &authority[at + 1..],
            &rest[authority_end..]
        ),
        None => url.to_string(),
    }
}

/// `message` with the credentials of `url` (its user name and password, as written and
/// percent-decoded, when 3 characters or longer) replaced by `***`, and `url` by its redacted
/// form.
pub fn scrub(message: &str, url: &str) -> String {
    let mut m = message.replace(url, &redact_url(url));
    let Some(scheme_end) = url.find("://") else {
        return m;
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return m;
    };
    let userinfo = &authority[..at];
    let mut secrets: Vec<String> = vec![userinfo.to_string()];
    for part in userinfo.splitn(2, ':') {
        secrets.push(part.to_string());
        secrets.push(
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        if s.chars().count() >= 3 {
            m = m.replace(&s, "***");
        }
    }
    m
}

/// The error of a fetch that failed under a [`HostPolicy`]: always the same reason.
pub(crate) fn hidden(url: &str) -> FetchError {
    FetchError::Unreachable {
        url: redact_url(url),
        message: HIDDEN_FETCH_REASON.into(),
    }
}

/// Checks a ref before it reaches git: no leading `-`, no whitespace or control characters,
/// at most 255 bytes (git's limit on a ref name component, as most file systems').
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
    offline: bool,
}

impl RepoCache {
    /// A cache under `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            offline: false,
        }
    }

    /// This cache, fetching nothing over the network when `offline` (`berth build
    /// --offline`): a URL (of the repository or a submodule) is read from its cached clone as
    /// the last fetch left it, and is an error ([`FetchError::Unreachable`]) when it has none;
    /// local paths are read as always.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The bare clone that caches `url` (a hash of the whole URL, credentials included, so
    /// the name on disk shows none).
    pub fn path_for(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        self.dir.join(format!("{}.git", &hex::encode(digest)[..20]))
    }

    /// [`RepoCache::checkout_with`] with default settings: no host policy, no cancellation.
    ///
    /// # Errors
    /// As [`RepoCache::checkout_with`].
    pub fn checkout(
        &self,
        source: &str,
        reference: Option<&str>,
        max_bytes: u64,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<Checkout, FetchError> {
        self.checkout_with(
            source,
            reference,
            max_bytes,
            &FetchSettings::default(),
            progress,
        )
    }

    /// Fetches `source` (URL or local path) and resolves `reference` (branch, tag, full or short
    /// commit, or `HEAD`) to a commit, then reads the commit's tree, with each submodule's tree
    /// at its recorded commit (as `git clone --recursive`; relative submodule URLs are resolved
    /// against `source`, as git does).
    ///
    /// `max_bytes` bounds the total size of the tree's files (submodules included); `progress`
    /// is called during the transfer. A submodule that cannot be fetched leaves its folder
    /// empty and adds a line to [`Checkout::warnings`]. Local submodule paths are followed only
    /// when `source` is itself a local path (git refuses them by default too:
    /// `protocol.file.allow=user`).
    ///
    /// # Errors
    /// [`FetchError`] for a path that is no repository, an unreachable URL, an unknown or
    /// malformed ref, a tree over `max_bytes`, a symlink that points outside the tree, or a
    /// cancelled fetch.
    pub fn checkout_with(
        &self,
        source: &str,
        reference: Option<&str>,
        max_bytes: u64,
        settings: &FetchSettings,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<Checkout, FetchError> {
        let reference = reference.unwrap_or("HEAD");
        validate_ref(reference)?;
        if let Some(policy) = &settings.policy {
            policy.check(source)?;
        }
        let url = canonical_source(source)?;
        let shown = redact_url(&url);
        let repo = self.fetch_cached(&url, settings, progress)?;
        let commit = resolve(&repo, &shown, reference)?;
        let commit = repo.find_commit(commit)?;
        let tree = commit.tree()?;
        let mut reader = TreeReader {
            cache: self,
            settings,
            progress,
            files: RepoFiles::new(),
            budget: max_bytes,
            limit: max_bytes,
            warnings: Vec::new(),
            local_parent: !is_url(&url),
        };
        reader.read_repo(&repo, &tree, "", &url, 0)?;
        let TreeReader {
            files, warnings, ..
        } = reader;
        check_symlinks(&files)?;
        Ok(Checkout {
            url: shown,
            reference: reference.to_string(),
            commit: commit.id().to_string(),
            tree: tree.id().to_string(),
            files,
            warnings,
            subdir: None,
        })
    }

    /// Narrows a checkout of `source` (made by this cache) to its folder `subdir`, as if that
    /// folder were the repository: its files at paths relative to it, its tree id as
    /// [`Checkout::tree`]. A symlink in it that points outside it (but inside the repository)
    /// is left out with a warning, as its target is not in the build.
    ///
    /// # Errors
    /// [`FetchError::Subdir`] for a malformed `subdir` ([`normalize_subdir`]), a folder the
    /// commit does not have, a file, or an empty folder; [`FetchError::Git`] when the cached
    /// clone cannot be read.
    pub fn narrow(&self, source: &str, co: Checkout, subdir: &str) -> Result<Checkout, FetchError> {
        let Some(dir) = normalize_subdir(subdir)? else {
            return Ok(co);
        };
        let bad = |reason: String| FetchError::Subdir {
            subdir: subdir.to_string(),
            reason,
        };
        let url = canonical_source(source)?;
        let repo = Repository::open_bare(self.path_for(&url))?;
        let commit = repo.find_commit(Oid::from_str(&co.commit)?)?;
        let short = &co.commit[..co.commit.len().min(12)];
        let entry = commit
            .tree()?
            .get_path(Path::new(&dir))
            .map_err(|_| bad(format!("no such folder at commit {short}")))?;
        let tree = match entry.kind() {
            Some(ObjectType::Tree) => entry.id().to_string(),
            // A submodule: its files were read at the commit the parent records.
            Some(ObjectType::Commit) => entry.id().to_string(),
            _ => return Err(bad(format!("is a file at commit {short}, not a folder"))),
        };
        let prefix = format!("{dir}/");
        let mut files = RepoFiles::new();
        let mut warnings = co.warnings;
        for (path, e) in co.files.iter() {
            let Some(rel) = path.strip_prefix(&prefix) else {
                continue;
            };
            if let FileEntry::Symlink { target } = e {
                if symlink_escapes(rel, target) {
                    warnings.push(format!(
                        "symlink {path} points outside --subdir {dir} (to {}); left out",
                        quote_debug(target)
                    ));
                    continue;
                }
            }
            files.insert(rel, e.clone());
        }
        if files.is_empty() {
            return Err(bad(format!(
                "the folder has no files at commit {short} (a submodule that was not fetched?)"
            )));
        }
        Ok(Checkout {
            tree,
            files,
            warnings,
            subdir: Some(dir),
            ..co
        })
    }

    /// Opens (or creates) the bare clone of `url` and fetches every branch and tag into it.
    fn fetch_cached(
        &self,
        url: &str,
        settings: &FetchSettings,
        progress: &mut dyn FnMut(FetchProgress),
    ) -> Result<Repository, FetchError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| FetchError::Git(e.to_string()))?;
        let path = self.path_for(url);
        if self.offline && is_url(url) {
            return Repository::open_bare(&path).map_err(|_| FetchError::Unreachable {
                url: redact_url(url),
                message: "not in berth's repository cache, and an offline build fetches nothing \
                          (build it once with the network, or give a local path)"
                    .into(),
            });
        }
        let repo = match Repository::open_bare(&path) {
            Ok(r) => r,
            Err(_) => {
                let _ = std::fs::remove_dir_all(&path);
                Repository::init_bare(&path)?
            }
        };
        fetch(&repo, url, &[], settings, progress)?;
        Ok(repo)
    }
}

/// Normalises a `--subdir`: `./a/b/` becomes `a/b`; empty or `.` means the whole repository
/// (`None`).
///
/// # Errors
/// [`FetchError::Subdir`] for an absolute path, `..`, a backslash, control characters or more
/// than 4096 bytes.
pub fn normalize_subdir(subdir: &str) -> Result<Option<String>, FetchError> {
    let bad = |reason: &str| FetchError::Subdir {
        subdir: subdir.to_string(),
        reason: reason.to_string(),
    };
    if subdir.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    if subdir.starts_with('/') {
        return Err(bad("must be a path relative to the repository's root"));
    }
    if subdir.contains('\\') || subdir.chars().any(|c| c.is_control()) {
        return Err(bad("holds a backslash or control characters"));
    }
    let parts: Vec<&str> = subdir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(bad("may not leave the repository ('..')"));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
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

/// Fetches every branch, tag and `HEAD` of `url` into `repo`, plus `extra` refspecs. Failures
/// are [`FetchError::Unreachable`] with libgit2's reason scrubbed of credentials, or with
/// [`HIDDEN_FETCH_REASON`] under a host policy (the reason then goes to the debug log).
fn fetch(
    repo: &Repository,
    url: &str,
    extra: &[String],
    settings: &FetchSettings,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<(), FetchError> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(|p| {
        progress(FetchProgress {
            received_objects: p.received_objects(),
            total_objects: p.total_objects(),
            received_bytes: p.received_bytes(),
        });
        !settings.cancelled()
    });
    callbacks.sideband_progress(|_| !settings.cancelled());
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    opts.download_tags(AutotagOption::All);
    // FETCH_HEAD would record the URL, credentials included, in the cache.
    opts.update_fetchhead(false);
    if settings.policy.is_some() {
        // A redirect could lead anywhere, past the policy's check of the first host.
        opts.follow_redirects(RemoteRedirect::None);
    }
    let mut refspecs: Vec<String> = vec![
        "+refs/heads/*:refs/remotes/origin/*".into(),
        "+refs/tags/*:refs/tags/*".into(),
        "+HEAD:refs/remotes/origin/HEAD".into(),
    ];
    refspecs.extend(extra.iter().cloned());
    let result = repo
        .remote_anonymous(url)
        .and_then(|mut remote| remote.fetch(&refspecs, Some(&mut opts), None));
    match result {
        Ok(()) => Ok(()),
        Err(_) if settings.cancelled() => Err(FetchError::Cancelled),
        Err(e) => {
            let reason = if e.code() == git2::ErrorCode::Auth {
                // libgit2 says "remote authentication required but no callback set" when the
                // server refuses the credentials in the URL, or wants some and there are none.
                "authentication failed (the server refused the URL's credentials, or wants some)"
                    .to_string()
            } else {
                scrub(&one_line(e.message()), url)
            };
            if settings.policy.is_some() {
                tracing::debug!(url = %redact_url(url), %reason, "fetch failed");
                Err(hidden(url))
            } else {
                Err(FetchError::Unreachable {
                    url: redact_url(url),
                    message: reason,
                })
            }
        }
    }
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

/// The URL of a submodule: `url` as written in `.gitmodules`, or, when it starts with `./` or
/// `../`, resolved against the parent's URL or path as git does (each `../` drops one path
/// component of the parent; `git help submodule`, "relative URLs"). `None` when the relative
/// URL climbs above the parent's host or root.
pub fn resolve_submodule_url(parent: &str, url: &str) -> Option<String> {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return Some(url.to_string());
    }
    let mut base = parent.trim_end_matches('/').to_string();
    // The part of `base` that `..` may not remove: `scheme://host`, scp-like `host:`, or `/`.
    let floor = if let Some(i) = base.find("://") {
        base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j)
    } else if is_url(&base) {
        base.find(':').map_or(0, |c| c + 1)
    } else {
        0
    };
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            // The last component goes; nothing left to remove climbs above the parent.
            let cut = match base[floor..].rfind('/') {
                Some(i) => floor + i,
                None if base.len() > floor && is_url(&base) && !base.contains("://") => floor,
                None => return None,
            };
            base.truncate(cut);
        } else {
            break;
        }
    }
    let rest = rest.trim_start_matches('/');
    if base.len() == floor && base.ends_with(':') {
        Some(format!("{base}{rest}"))
    } else {
        Some(format!("{base}/{rest}"))
    }
}

/// `path → url` of the submodules listed in `.gitmodules` at the root of `tree`.
fn gitmodules(repo: &Repository, tree: &Tree<'_>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(entry) = tree.get_path(Path::new(".gitmodules")) else {
        return out;
    };
    let Ok(blob) = repo.find_blob(entry.id()) else {
        return out;
    };
    // git2 parses git-config files from disk only.
    let Ok(mut tmp) = tempfile::NamedTempFile::new() else {
        return out;
    };
    if std::io::Write::write_all(&mut tmp, blob.content()).is_err() {
        return out;
    }
    let Ok(config) = git2::Config::open(tmp.path()) else {
        return out;
    };
    let mut names: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    if let Ok(mut entries) = config.entries(Some(r"^submodule\..*\.(path|url)$")) {
        while let Some(Ok(e)) = entries.next() {
            let (Ok(key), Ok(value)) = (e.name(), e.value()) else {
                continue;
            };
            let Some(inner) = key.strip_prefix("submodule.") else {
                continue;
            };
            let Some((name, field)) = inner.rsplit_once('.') else {
                continue;
            };
            let slot = names.entry(name.to_string()).or_default();
            match field {
                "path" => slot.0 = Some(value.to_string()),
                _ => slot.1 = Some(value.to_string()),
            }
        }
    }
    for (_, (path, url)) in names {
        if let (Some(p), Some(u)) = (path, url) {
            out.insert(p.trim_matches('/').to_string(), u);
        }
    }
    out
}

struct TreeReader<'a> {
    cache: &'a RepoCache,
    settings: &'a FetchSettings,
    progress: &'a mut dyn FnMut(FetchProgress),
    files: RepoFiles,
    budget: u64,
    limit: u64,
    warnings: Vec<String>,
    /// Whether the top repository is a local path (local submodule URLs are then followed).
    local_parent: bool,
}

impl TreeReader<'_> {
    /// Reads the tree of one repository (the top one, or a submodule) into `files` under
    /// `root`, where `url` is the repository's real URL (for relative submodule URLs).
    fn read_repo(
        &mut self,
        repo: &Repository,
        tree: &Tree<'_>,
        root: &str,
        url: &str,
        depth: usize,
    ) -> Result<(), FetchError> {
        let modules = gitmodules(repo, tree);
        self.read_tree(repo, tree, root, "", url, &modules, depth)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_tree(
        &mut self,
        repo: &Repository,
        tree: &Tree<'_>,
        root: &str,
        rel: &str,
        url: &str,
        modules: &HashMap<String, String>,
        depth: usize,
    ) -> Result<(), FetchError> {
        for entry in tree.iter() {
            let Ok(name) = entry.name() else {
                return Err(FetchError::Git(
                    "a file name in the tree is not UTF-8".into(),
                ));
            };
            let rel_path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let path = if root.is_empty() {
                rel_path.clone()
            } else {
                format!("{root}/{rel_path}")
            };
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = repo.find_tree(entry.id())?;
                    self.read_tree(repo, &sub, root, &rel_path, url, modules, depth)?;
                }
                Some(ObjectType::Blob) => {
                    let blob = repo.find_blob(entry.id())?;
                    let size = blob.size() as u64;
                    self.budget = self
                        .budget
                        .checked_sub(size)
                        .ok_or(FetchError::TooLarge { limit: self.limit })?;
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
                    self.files.insert(path, file);
                }
                Some(ObjectType::Commit) => {
                    self.submodule(&path, modules.get(&rel_path), url, entry.id(), depth)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Fetches the submodule at `path` (its `.gitmodules` URL `declared`) at `commit` and reads
    /// its tree; a failure to fetch becomes a warning, a tree over the size limit or a
    /// cancellation an error.
    fn submodule(
        &mut self,
        path: &str,
        declared: Option<&String>,
        parent_url: &str,
        commit: Oid,
        depth: usize,
    ) -> Result<(), FetchError> {
        let warn = |why: String| {
            format!("submodule {path} was not fetched ({why}); its files are not in the build")
        };
        let Some(declared) = declared else {
            self.warnings
                .push(warn("it has no URL in .gitmodules".into()));
            return Ok(());
        };
        if depth + 1 > MAX_SUBMODULE_DEPTH {
            self.warnings.push(warn(format!(
                "submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels"
            )));
            return Ok(());
        }
        let Some(url) = resolve_submodule_url(parent_url, declared) else {
            self.warnings.push(warn(format!(
                "its relative URL {} climbs above its parent's",
                quote_debug(&redact_url(declared))
            )));
            return Ok(());
        };
        let local = !is_url(&url) || url.starts_with("file://");
        if local && !self.local_parent {
            self.warnings.push(warn(format!(
                "{} is a local path, followed only for local repositories",
                quote_debug(&url)
            )));
            return Ok(());
        }
        if let Some(policy) = &self.settings.policy {
            if policy.check(&url).is_err() {
                self.warnings.push(warn(format!(
                    "cannot fetch {}: {HIDDEN_FETCH_REASON}",
                    redact_url(&url)
                )));
                return Ok(());
            }
        }
        let fetch_url = if local && !url.starts_with("file://") {
            match canonical_source(&url) {
                Ok(u) => u,
                Err(e) => {
                    self.warnings.push(warn(e.to_string()));
                    return Ok(());
                }
            }
        } else {
            url.clone()
        };
        let sub_repo = match self
            .cache
            .fetch_cached(&fetch_url, self.settings, &mut *self.progress)
        {
            Ok(r) => r,
            Err(FetchError::Cancelled) => return Err(FetchError::Cancelled),
            Err(e) => {
                self.warnings.push(warn(e.to_string()));
                return Ok(());
            }
        };
        if sub_repo.find_commit(commit).is_err() {
            // Not on any branch or tag: ask for the commit itself (servers that allow it).
            let spec = format!("+{commit}:refs/berth/submodule");
            let _ = fetch(
                &sub_repo,
                &fetch_url,
                &[spec],
                self.settings,
                &mut *self.progress,
            );
        }
        let Ok(sub_commit) = sub_repo.find_commit(commit) else {
            self.warnings.push(warn(format!(
                "commit {commit} is not in {}",
                redact_url(&url)
            )));
            return Ok(());
        };
        let sub_tree = sub_commit.tree()?;
        self.read_repo(&sub_repo, &sub_tree, path, &fetch_url, depth + 1)
    }
}

/// Refuses symlinks whose target lies outside the tree (absolute, or too many `..`).
/// Whether the symlink at `path` (relative to a tree's root) with `target` leaves the tree.
fn symlink_escapes(path: &str, target: &str) -> bool {
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
    escapes
}

fn check_symlinks(files: &RepoFiles) -> Result<(), FetchError> {
    for (path, entry) in files.iter() {
        if let FileEntry::Symlink { target } = entry {
            if symlink_escapes(path, target) {
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
    use proptest::prelude::*;

    /// A work-tree repository with `files` (and symlinks `links`, path → target) committed.
    fn repo_with(files: &[(&str, &str)], links: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        for (path, target) in links {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("berth-test", "test@berth.invalid").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "files", &tree, &[])
            .unwrap();
        dir
    }

    #[test]
    fn subdirs_are_normalised_and_checked() {
        assert_eq!(normalize_subdir("").unwrap(), None);
        assert_eq!(normalize_subdir(".").unwrap(), None);
        assert_eq!(normalize_subdir("./a//b/").unwrap().as_deref(), Some("a/b"));
        for bad in ["/abs", "../up", "a/../../b", "a\\b", "a\nb"] {
            let e = normalize_subdir(bad).unwrap_err().to_string();
            assert!(e.starts_with("--subdir "), "{bad}: {e}");
        }
    }

    #[test]
    fn a_subdir_is_built_as_the_repository() {
        let work = repo_with(
            &[
                ("top.txt", "top"),
                ("sub/requirements.txt", "requests\n"),
                ("sub/nb/a.ipynb", "{}"),
                ("file.txt", "x"),
            ],
            &[("sub/up", "../top.txt"), ("sub/inside", "nb/a.ipynb")],
        );
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(cache_dir.path());
        let source = work.path().to_str().unwrap();
        let co = cache.checkout(source, None, 1 << 20, &mut |_| {}).unwrap();
        let sub_tree = Repository::open(work.path())
            .unwrap()
            .revparse_single("HEAD:sub")
            .unwrap()
            .id()
            .to_string();
        let narrowed = cache.narrow(source, co.clone(), "./sub/").unwrap();
        assert_eq!(narrowed.subdir.as_deref(), Some("sub"));
        assert_eq!(narrowed.tree, sub_tree);
        assert_eq!(narrowed.commit, co.commit);
        let paths: Vec<&str> = narrowed.files.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["inside", "nb/a.ipynb", "requirements.txt"]);
        assert!(
            narrowed
                .warnings
                .iter()
                .any(|w| w.contains("symlink sub/up points outside --subdir sub")),
            "{:?}",
            narrowed.warnings
        );
        // No subdir: the checkout as it was.
        assert_eq!(cache.narrow(source, co.clone(), ".").unwrap().tree, co.tree);
        for (bad, why) in [
            ("missing", "no such folder at commit"),
            ("file.txt", "is a file"),
            ("../x", "may not leave the repository"),
        ] {
            let e = cache
                .narrow(source, co.clone(), bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

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
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("https://user:s3cret@example.org/a/b.git"),
            "https://***@example.org/a/b.git"
        );
        assert_eq!(
            redact_url("http://tok@127.0.0.1:8080/r.git?x=1"),
            "http://***@127.0.0.1:8080/r.git?x=1"
        );
        assert_eq!(
            redact_url("https://example.org/a@b"),
            "https://example.org/a@b"
        );
        assert_eq!(
            redact_url("git@github.com:a/b.git"),
            "git@github.com:a/b.git"
        );
        assert_eq!(redact_url("/srv/repo.git"), "/srv/repo.git");
    }

    #[test]
    fn messages_are_scrubbed_of_credentials() {
        let url = "https://alice:p%40ss-w0rd@example.org/r.git";
        let m = scrub(
            "failed for https://alice:p%40ss-w0rd@example.org/r.git: user alice, password p@ss-w0rd",
            url,
        );
        assert!(
            !m.contains("p@ss-w0rd") && !m.contains("p%40ss") && !m.contains("alice"),
            "{m}"
        );
        assert!(m.contains("https://***@example.org/r.git"), "{m}");
        assert_eq!(scrub("plain", "https://example.org/x"), "plain");
    }

    #[test]
    fn long_input_is_quoted_short() {
        let long = "a".repeat(100_000);
        let e = FetchError::InvalidRef(long.clone()).to_string();
        assert!(e.len() < 300, "{}", e.len());
        assert!(
            e.contains(&format!("\"{}\"…", "a".repeat(QUOTE_CHARS))),
            "{e}"
        );
        assert_eq!(shorten("héllo"), "héllo");
        assert_eq!(shorten(&"é".repeat(61)), format!("{}…", "é".repeat(60)));
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
    fn relative_submodule_urls() {
        let r = |p: &str, u: &str| resolve_submodule_url(p, u);
        assert_eq!(
            r("https://h/org/a.git", "../b.git").unwrap(),
            "https://h/org/b.git"
        );
        assert_eq!(
            r("https://h/org/a.git/", "./sub").unwrap(),
            "https://h/org/a.git/sub"
        );
        assert_eq!(r("https://h/org/a", "../../x/b").unwrap(), "https://h/x/b");
        assert_eq!(r("https://h/a", "../../b"), None);
        assert_eq!(
            r("/srv/repos/a.git", "../b.git").unwrap(),
            "/srv/repos/b.git"
        );
        assert_eq!(r("git@h:org/a.git", "../b.git").unwrap(), "git@h:org/b.git");
        assert_eq!(r("git@h:a.git", "../b.git").unwrap(), "git@h:b.git");
        assert_eq!(
            r("https://u:p@h/org/a.git", "../b.git").unwrap(),
            "https://u:p@h/org/b.git"
        );
        assert_eq!(r("https://h/a", "https://x/y").unwrap(), "https://x/y");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_classes() {
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_global(ip(a)), "{a} must not be global");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(is_global(ip(a)), "{a} must be global");
        }
    }

    fn policy(allowed: &[&str], schemes: &[&str]) -> HostPolicy {
        HostPolicy {
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            schemes: schemes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn policy_verdicts() {
        let p = policy(&[], &[]);
        assert!(p.verdict("https://8.8.8.8/r.git").is_ok());
        assert!(
            p.verdict("http://8.8.8.8/r.git").is_err(),
            "http needs listing"
        );
        assert!(p.verdict("https://127.0.0.1/r.git").is_err());
        assert!(p.verdict("https://[::1]/r.git").is_err());
        assert!(p.verdict("https://[::ffff:7f00:1]/r.git").is_err());
        assert!(p.verdict("https://localhost/r.git").is_err());
        assert!(
            p.verdict("https://2130706433/r.git").is_err(),
            "decimal 127.0.0.1"
        );
        assert!(p.verdict("/srv/repo.git").is_err());
        assert!(p.verdict("git@github.com:a/b.git").is_err());
        assert!(p.verdict("file:///srv/repo.git").is_err());
        let p = policy(
            &["127.0.0.1", "10.0.0.0/8", "Git.Internal"],
            &["https", "git"],
        );
        assert!(p.verdict("git://127.0.0.1/r.git").is_ok());
        assert!(p.verdict("git://127.0.0.2/r.git").is_err());
        assert!(p.verdict("https://10.20.30.40/r.git").is_ok());
        assert!(p.verdict("https://[::ffff:10.1.1.1]/r.git").is_ok());
        assert!(p.verdict("https://192.168.0.1/r.git").is_err());
        assert!(p.verdict("https://git.internal./r.git").is_ok());
        assert!(
            p.verdict("http://10.0.0.1/r.git").is_err(),
            "scheme still checked"
        );
        let p = policy(&["file"], &["file"]);
        assert!(p.verdict("file:///srv/repo.git").is_err(), "file:// never");
        // The check's error is the same whatever the reason.
        let a = policy(&[], &[])
            .check("https://127.0.0.1:1/x.git")
            .unwrap_err();
        let b = policy(&[], &[])
            .check("ftp://example.org/x.git")
            .unwrap_err();
        assert_eq!(
            a.to_string(),
            "cannot fetch https://127.0.0.1:1/x.git: the repository could not be fetched"
        );
        assert_eq!(
            b.to_string(),
            "cannot fetch ftp://example.org/x.git: the repository could not be fetched"
        );
    }

    proptest! {
        #[test]
        fn cidr_blocks_match_exactly_their_prefix(a: u32, b: u32, len in 0u8..=32) {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let net = Ipv4Addr::from(a & mask);
            let p = policy(&[&format!("{net}/{len}")], &[]);
            let inside = (b & mask) == (a & mask);
            prop_assert_eq!(p.allows_addr(IpAddr::V4(Ipv4Addr::from(b))), inside);
            let mapped = IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped());
            prop_assert_eq!(p.allows_addr(mapped), inside);
        }

        #[test]
        fn private_v4_blocks_are_never_global(host: u32) {
            for (base, len) in [(0x0a00_0000u32, 8u32), (0xac10_0000, 12), (0xc0a8_0000, 16),
                                (0x7f00_0000, 8), (0xa9fe_0000, 16), (0x6440_0000, 10)] {
                let a = Ipv4Addr::from(base | (host >> len));
                prop_assert!(!is_global(IpAddr::V4(a)), "{}", a);
                prop_assert!(!is_global(IpAddr::V6(a.to_ipv6_mapped())), "{}", a);
            }
        }

        #[test]
        fn v6_local_blocks_are_never_global(low: u128) {
            for (base, len) in [(0xfe80u128 << 112, 10u32), (0xfc00u128 << 112, 7)] {
                let a = Ipv6Addr::from(base | (low >> len));
                prop_assert!(!is_global(IpAddr::V6(a)), "{}", a);
            }
        }

        #[test]
        fn shorten_never_exceeds_the_limit(s in ".{0,200}") {
            let out = shorten(&s);
            prop_assert!(out.chars().count() <= QUOTE_CHARS + 1);
            prop_assert!(s.starts_with(out.trim_end_matches('…')));
        }
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
