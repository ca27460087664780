//! Which repository hosts the server may fetch from, against server-side request forgery: a
//! launch URL must not make the server fetch from its own network.

use berth_builder::{BuildError, HostPolicy};

use crate::config::Config;
use crate::providers::RepoSpec;

/// The policy of every build the server starts: the hosts of `allow_private_hosts` are
/// reachable although private; the schemes are those of the configured providers' base URLs,
/// plus `https`, `http` and `git` (what the `git` provider takes; not `ssh`, whose host keys and
/// accounts are the server's own), plus `file` when `allow_local` is on.
pub fn host_policy(cfg: &Config) -> HostPolicy {
    let mut schemes: Vec<String> = ["https", "http", "git"].map(String::from).to_vec();
    for base in cfg.providers.values() {
        if let Some((scheme, _)) = base.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if !schemes.contains(&scheme) {
                schemes.push(scheme);
            }
        }
    }
    if cfg.allow_local {
        schemes.push("file".into());
    }
    HostPolicy {
        allowed: cfg.allow_private_hosts.clone(),
        schemes,
    }
}

/// Whether `repo` is a local path or `file://` URL (see [`crate::providers::is_local_url`]).
pub fn is_local(repo: &RepoSpec) -> bool {
    crate::providers::is_local_url(&repo.repo_url)
}

/// Checks `repo` against `policy` before any build starts, so a refused host is answered at
/// once, with the same message the fetch gives for every failure under a policy. Local
/// repositories (allowed by the operator with `allow_local`) are not checked.
///
/// # Errors
/// The build error to report (always a fetch error).
pub async fn check(policy: &HostPolicy, repo: &RepoSpec) -> Result<(), BuildError> {
    if is_local(repo) {
        return Ok(());
    }
    let (policy, url) = (policy.clone(), repo.repo_url.clone());
    // The check resolves the host name: blocking work.
    match tokio::task::spawn_blocking(move || policy.check(&url)).await {
        Ok(r) => r.map_err(BuildError::Fetch),
        Err(e) => Err(BuildError::Internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_entries_are_checked() {
        for ok in ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "git.internal"] {
            assert!(HostPolicy::validate_entry(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.0/33",
            "x/8",
            "",
            "a b",
            "http://host/",
            "::1/129",
            "[::1]",
        ] {
            assert!(HostPolicy::validate_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schemes_follow_the_providers() {
        let mut cfg = Config::default();
        cfg.providers
            .insert("gh".into(), "ssh://git.internal".into());
        let p = host_policy(&cfg);
        assert!(p.schemes.contains(&"ssh".to_string()));
        assert!(!p.schemes.contains(&"file".to_string()));
        cfg.allow_local = true;
        assert!(host_policy(&cfg).schemes.contains(&"file".to_string()));
    }
}
