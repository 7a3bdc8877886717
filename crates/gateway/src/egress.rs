//! Egress: how tunnel traffic leaves the gateway for the corporate network.
//!
//! Routed mode (the default): the gateway forwards between the TUN and its other interfaces, and the
//! corporate network routes the client pool back to the gateway. This needs IP forwarding, which the
//! daemon turns on (or fails with the sysctl to set).
//!
//! NAT mode (`nat = true`): the daemon also installs an nftables table that masquerades the pool's
//! source addresses, so the corporate network needs no route back; it removes the table on exit.

use std::io::Write as _;
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};

/// Why egress could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// Writing the forwarding sysctl failed.
    #[error(
        "cannot enable IP forwarding ({path}: {source}); set it on the host (sysctl -w {sysctl}=1, or a \
         /etc/sysctl.d drop-in) or give the daemon the right to (root or CAP_NET_ADMIN in the host network namespace)"
    )]
    Forwarding {
        /// The /proc path written.
        path: &'static str,
        /// The sysctl name.
        sysctl: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `nft` could not be run or refused the ruleset.
    #[error("cannot install the NAT rules with nft: {0} (is the nftables package installed and the nf_tables module loaded?)")]
    Nft(String),
}

fn write_sysctl(path: &'static str, sysctl: &'static str) -> Result<(), EgressError> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, b"1").map_err(|source| EgressError::Forwarding {
        path,
        sysctl,
        source,
    })?;
    tracing::info!(sysctl, "enabled IP forwarding");
    Ok(())
}

/// Turns on IPv4 forwarding, and IPv6 forwarding when `ipv6` is set.
pub fn enable_forwarding(ipv6: bool) -> Result<(), EgressError> {
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward")?;
    if ipv6 {
        write_sysctl(
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        )?;
    }
    Ok(())
}

/// The nftables NAT table the daemon owns while it runs. Dropping it removes the table.
#[derive(Debug)]
pub struct Nat {
    table: String,
}

fn nft(script: &str) -> Result<(), EgressError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EgressError::Nft(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| EgressError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EgressError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EgressError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// The ruleset text: one `inet` table with a source-NAT chain masquerading the pools.
fn ruleset(table: &str, v4: Ipv4Net, v6: Option<Ipv6Net>, oif: Option<&str>) -> String {
    let oif = oif.map(|i| format!("oifname \"{i}\" ")).unwrap_or_default();
    let mut rules = format!("        ip saddr {v4} {oif}masquerade\n");
    if let Some(v6) = v6 {
        rules.push_str(&format!("        ip6 saddr {v6} {oif}masquerade\n"));
    }
    format!(
        "table inet {table} {{\n    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n{rules}    }}\n}}\n"
    )
}

impl Nat {
    /// Installs masquerading for the pools (replacing a table left by a previous run).
    pub fn install(
        tun_name: &str,
        v4: Ipv4Net,
        v6: Option<Ipv6Net>,
        oif: Option<&str>,
    ) -> Result<Self, EgressError> {
        let table = format!("tunneld_{}", tun_name.replace(['-', '.'], "_"));
        // `add` then `delete` makes the delete succeed whether or not a stale table exists.
        let script = format!(
            "add table inet {table}\ndelete table inet {table}\n{}",
            ruleset(&table, v4, v6, oif)
        );
        nft(&script)?;
        tracing::info!(table, pool = %v4, "NAT mode: masquerading the pool");
        Ok(Self { table })
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
            tracing::warn!(table = %self.table, error = %e, "could not remove the NAT table");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_both_pools_on_the_chosen_interface() {
        let r = ruleset(
            "tunneld_tg0",
            "10.1.0.0/24".parse().unwrap(),
            Some("fd00::/64".parse().unwrap()),
            Some("eth0"),
        );
        assert!(r.contains("table inet tunneld_tg0 {"));
        assert!(r.contains("type nat hook postrouting priority srcnat;"));
        assert!(r.contains("ip saddr 10.1.0.0/24 oifname \"eth0\" masquerade"));
        assert!(r.contains("ip6 saddr fd00::/64 oifname \"eth0\" masquerade"));
        let r = ruleset("t", "10.1.0.0/24".parse().unwrap(), None, None);
        assert!(r.contains("ip saddr 10.1.0.0/24 masquerade"));
        assert!(!r.contains("ip6"));
    }
}
