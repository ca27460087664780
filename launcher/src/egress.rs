//! Keeping sessions away from the host's own services.
//!
//! A container on a Docker bridge reaches the host through the bridge's gateway address (and
//! every other address of the host): berth's server, a registry, anything listening on
//! `0.0.0.0`. Packets for the host itself pass the host's `INPUT` chain, while packets the host
//! forwards to other machines (`pip install` from PyPI) pass `FORWARD` and are not touched here.
//!
//! The mechanism: each isolated session's bridge is named `brt-<10 hex>` (Docker's
//! `com.docker.network.bridge.name` option), and one rule at the top of `INPUT` sends every
//! packet arriving on a `brt-+` interface to the chain `BERTH-HOST`, which accepts replies to
//! connections the host opened (the proxy and probes talking to Jupyter and the dashboard) and
//! drops everything else. The rule needs root and `iptables` (the same backend Docker uses); it
//! survives engine restarts but not host reboots, so every launch (and `berth serve` at start)
//! puts it back when it is missing. Sessions launched with host access keep Docker's own bridge
//! names (`br-…`), which the rule does not match.

use crate::{random_hex, LaunchError};

/// The prefix of isolated sessions' bridge interfaces (Linux allows 15 characters in all).
pub const BRIDGE_PREFIX: &str = "brt-";
/// The chain that filters what isolated sessions send to the host.
pub const CHAIN: &str = "BERTH-HOST";

/// A new bridge interface name for an isolated session: `brt-` and 10 random hex digits.
pub(crate) fn bridge_name() -> String {
    format!("{BRIDGE_PREFIX}{}", random_hex(5))
}

async fn iptables(args: &[&str]) -> Result<bool, LaunchError> {
    let out = tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| {
            LaunchError::Isolation(format!(
                "cannot run iptables ({e}); install it, or allow host access"
            ))
        })?;
    if out.status.success() {
        return Ok(true);
    }
    // Listing a chain that does not exist fails with words that differ between the nf_tables
    // and legacy backends ("No chain…", "…is incompatible, use 'nft' tool"): it is missing.
    if args.contains(&"-L") {
        return Ok(false);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    // `-C` of a missing rule and `-L` of a missing chain fail with status 1 and these words.
    if err.contains("does a matching rule exist")
        || err.contains("No chain/target/match by that name")
        || err.contains("Bad rule")
    {
        return Ok(false);
    }
    Err(LaunchError::Isolation(format!(
        "iptables {}: {}",
        args.join(" "),
        err.lines().next().unwrap_or("failed").trim()
    )))
}

/// Makes sure the `INPUT` rule and the `BERTH-HOST` chain exist (idempotent; safe when
/// several berth processes race: a chain or rule another one just made is accepted).
///
/// # Errors
/// [`LaunchError::Isolation`] when iptables is missing or refuses (not root).
pub async fn ensure_host_guard() -> Result<(), LaunchError> {
    let span = tracing::debug_span!("host_guard");
    let _e = span.enter();
    if !iptables(&["-n", "-L", CHAIN]).await? {
        // Another process may create it between the check and here.
        let _ = iptables(&["-N", CHAIN]).await;
    }
    let established = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "RETURN",
    ];
    let mut check = vec!["-C", CHAIN];
    check.extend_from_slice(&established);
    if !iptables(&check).await? {
        let mut add = vec!["-I", CHAIN, "1"];
        add.extend_from_slice(&established);
        iptables(&add).await?;
    }
    if !iptables(&["-C", CHAIN, "-j", "DROP"]).await? {
        iptables(&["-A", CHAIN, "-j", "DROP"]).await?;
    }
    let iface = format!("{BRIDGE_PREFIX}+");
    if !iptables(&["-C", "INPUT", "-i", &iface, "-j", CHAIN]).await? {
        iptables(&["-I", "INPUT", "1", "-i", &iface, "-j", CHAIN]).await?;
        tracing::info!("installed the rule that keeps sessions from the host's services");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_linux_interface_names() {
        let n = bridge_name();
        assert!(n.len() <= 15, "{n}");
        assert!(n.starts_with(BRIDGE_PREFIX));
        assert_ne!(n, bridge_name());
    }
}
