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

/// Checks one `allow_private_hosts` entry: a host name, an IP address, or a CIDR block
/// (`10.0.0.0/8`, `fd00::/8`).
///
/// # Errors
/// A one-line reason.
pub fn validate_allowed(entry: &str) -> Result<(), String> {
    use std::net::IpAddr;
    if let Some((addr, prefix)) = entry.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{entry:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        return match prefix.parse::<u8>() {
            Ok(p) if p <= max => Ok(()),
            _ => Err(format!("{entry:?}: the prefix length must be 0 to {max}")),
        };
    }
    let host = entry;
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
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

/// Whether `repo` is a local path or `file://` URL, as [`crate::providers::resolve`] tells
/// them (which refuses them unless `allow_local` is on).
pub fn is_local(repo: &RepoSpec) -> bool {
    let url = &repo.repo_url;
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.') || !url.contains(':')
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
            assert!(validate_allowed(ok).is_ok(), "{ok}");
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
            assert!(validate_allowed(bad).is_err(), "{bad}");
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
