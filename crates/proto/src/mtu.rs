//! The tunnel MTU to advertise in `X-CSTP-MTU` (protocol doc §4.4).
//!
//! With PSK DTLS (AES-GCM) every tunnel packet also has to fit one DTLS datagram, so the MTU is the
//! link MTU minus the IP and UDP headers, the DTLS record overhead and the one type byte. Without
//! DTLS, ocserv subtracts only the IP and UDP headers (1472 on a 1500 link); we do the same so the
//! numbers match what openconnect sees from ocserv.

/// IPv4 header length.
pub const IPV4_HEADER: u32 = 20;
/// IPv6 header length.
pub const IPV6_HEADER: u32 = 40;
/// UDP header length.
pub const UDP_HEADER: u32 = 8;
/// DTLS 1.2 AES-GCM record overhead: 13-byte record header, 8-byte explicit nonce, 16-byte tag.
pub const DTLS_GCM_OVERHEAD: u32 = 13 + 8 + 16;
/// The CSTP/DTLS packet-type byte in front of each DTLS payload.
pub const DTLS_TYPE_BYTE: u32 = 1;
/// Smallest MTU we ever advertise: the IPv6 minimum, and a safe floor for IPv4.
pub const MIN_MTU: u32 = 1280;

/// The tunnel MTU for a link of `base_mtu` bytes.
///
/// `ipv6_link`: the outer (client to gateway) connection is IPv6. `dtls`: a DTLS channel is
/// offered. 1500 over IPv4 gives 1434 with DTLS and 1472 without, as ocserv sends. The result is
/// never below [`MIN_MTU`] (never zero, which openconnect rejects) unless `base_mtu` itself is
/// smaller, in which case `base_mtu` is returned.
#[must_use]
pub fn mtu_for(base_mtu: u32, ipv6_link: bool, dtls: bool) -> u32 {
    let ip = if ipv6_link { IPV6_HEADER } else { IPV4_HEADER };
    let overhead = ip
        + UDP_HEADER
        + if dtls {
            DTLS_GCM_OVERHEAD + DTLS_TYPE_BYTE
        } else {
            0
        };
    base_mtu
        .saturating_sub(overhead)
        .max(MIN_MTU)
        .min(base_mtu)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ocserv_on_a_1500_ipv4_link() {
        assert_eq!(mtu_for(1500, false, true), 1434);
        assert_eq!(mtu_for(1500, false, false), 1472);
    }

    #[test]
    fn ipv6_link_costs_twenty_more() {
        assert_eq!(mtu_for(1500, true, true), 1414);
        assert_eq!(mtu_for(1500, true, false), 1452);
    }

    #[test]
    fn loopback_and_tiny_links() {
        assert_eq!(mtu_for(65535, false, true), 65469);
        assert_eq!(mtu_for(1300, false, true), 1280);
        assert_eq!(mtu_for(576, false, false), 576);
        assert_eq!(mtu_for(0, false, true), 1);
    }
}
