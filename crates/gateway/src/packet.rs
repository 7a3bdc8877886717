//! IP packet checks on the data path, on `etherparse` header slices (no hand parsing here).
//!
//! Upstream (client to network) packets must be well-formed IPv4/IPv6 whose length matches the
//! header and whose source is the session's own tunnel address; everything else is dropped and
//! counted. Downstream packets only need their destination.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};

use crate::metrics::DropReason;

/// The addresses a session may send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnAddrs {
    /// The session's IPv4 tunnel address.
    pub v4: Ipv4Addr,
    /// The session's IPv6 tunnel address, when it has one.
    pub v6: Option<Ipv6Addr>,
}

/// Checks one upstream packet; `Err` names why it must be dropped.
#[inline]
pub fn check_upstream(pkt: &[u8], own: &OwnAddrs) -> Result<(), DropReason> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let h = Ipv4HeaderSlice::from_slice(pkt).map_err(|_| DropReason::Malformed)?;
            if usize::from(h.total_len()) != pkt.len() {
                return Err(DropReason::Malformed);
            }
            if h.source_addr() != own.v4 {
                return Err(DropReason::SpoofedSource);
            }
            Ok(())
        }
        Some(6) => {
            let h = Ipv6HeaderSlice::from_slice(pkt).map_err(|_| DropReason::Malformed)?;
            if usize::from(h.payload_length()) + 40 != pkt.len() {
                return Err(DropReason::Malformed);
            }
            let src = h.source_addr();
            if Some(src) != own.v6 {
                // A client's own IPv6 stack sends router solicitations and MLD reports from its
                // link-local or unspecified address; they are not spoofing, and go nowhere.
                if src.is_unspecified() || src.is_unicast_link_local() {
                    return Err(DropReason::LinkLocal);
                }
                return Err(DropReason::SpoofedSource);
            }
            Ok(())
        }
        _ => Err(DropReason::Malformed),
    }
}

/// The destination of a downstream packet, if it is IPv4 or IPv6 with a complete header.
#[inline]
pub fn destination(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => Ipv4HeaderSlice::from_slice(pkt)
            .ok()
            .map(|h| IpAddr::V4(h.destination_addr())),
        Some(6) => Ipv6HeaderSlice::from_slice(pkt)
            .ok()
            .map(|h| IpAddr::V6(h.destination_addr())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn v4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, dst, 64).udp(1000, 2000);
        let mut out = Vec::new();
        b.write(&mut out, b"hello").unwrap();
        out
    }

    fn v6_udp(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(1000, 2000);
        let mut out = Vec::new();
        b.write(&mut out, b"hello").unwrap();
        out
    }

    const OWN: OwnAddrs = OwnAddrs {
        v4: Ipv4Addr::new(10, 0, 0, 2),
        v6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
    };

    #[test]
    fn own_source_passes() {
        assert_eq!(
            check_upstream(&v4_udp([10, 0, 0, 2], [10, 9, 9, 9]), &OWN),
            Ok(())
        );
        assert_eq!(
            check_upstream(&v6_udp(OWN.v6.unwrap(), "fd01::1".parse().unwrap()), &OWN),
            Ok(())
        );
    }

    #[test]
    fn forged_source_is_spoofed() {
        assert_eq!(
            check_upstream(&v4_udp([10, 0, 0, 3], [10, 9, 9, 9]), &OWN),
            Err(DropReason::SpoofedSource)
        );
        let v6 = v6_udp("fd00::3".parse().unwrap(), "fd01::1".parse().unwrap());
        assert_eq!(check_upstream(&v6, &OWN), Err(DropReason::SpoofedSource));
        let no_v6 = OwnAddrs { v6: None, ..OWN };
        assert_eq!(
            check_upstream(&v6_udp(OWN.v6.unwrap(), "fd01::1".parse().unwrap()), &no_v6),
            Err(DropReason::SpoofedSource)
        );
    }

    #[test]
    fn link_local_ipv6_sources_are_not_counted_as_spoofing() {
        let ll = v6_udp("fe80::1".parse().unwrap(), "ff02::2".parse().unwrap());
        assert_eq!(check_upstream(&ll, &OWN), Err(DropReason::LinkLocal));
        let unspec = v6_udp(Ipv6Addr::UNSPECIFIED, "ff02::16".parse().unwrap());
        assert_eq!(check_upstream(&unspec, &OWN), Err(DropReason::LinkLocal));
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let good = v4_udp([10, 0, 0, 2], [10, 9, 9, 9]);
        assert_eq!(check_upstream(&[], &OWN), Err(DropReason::Malformed));
        assert_eq!(
            check_upstream(&[0x50; 40], &OWN),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            check_upstream(&good[..10], &OWN),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            check_upstream(&good[..good.len() - 1], &OWN),
            Err(DropReason::Malformed)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(check_upstream(&long, &OWN), Err(DropReason::Malformed));
        let v6 = v6_udp(OWN.v6.unwrap(), "fd01::1".parse().unwrap());
        assert_eq!(
            check_upstream(&v6[..v6.len() - 2], &OWN),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn destination_of_both_families() {
        assert_eq!(
            destination(&v4_udp([1, 2, 3, 4], [10, 0, 0, 2])),
            Some("10.0.0.2".parse().unwrap())
        );
        let v6 = v6_udp("fd01::1".parse().unwrap(), OWN.v6.unwrap());
        assert_eq!(destination(&v6), Some(IpAddr::V6(OWN.v6.unwrap())));
        assert_eq!(destination(&[0x45, 0]), None);
    }
}
