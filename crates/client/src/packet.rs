//! IP packets built and read in user space (etherparse): the probes the harness sends through a
//! tunnel and the replies it expects back.
//!
//! A probe is an ICMP echo request (answered by the target host's kernel) or a UDP datagram (for an
//! echo service), from the tunnel's assigned address, whose payload starts with a [`Probe`] header:
//! magic, session number, sequence number and send time. The reply carries the same payload back,
//! so every packet can be matched to its session and sequence and its round trip measured.
//! [`ProbeBuilder`] reuses its buffers: building a probe allocates nothing after the first.

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Slice, Icmpv4Type, IpNumber, Ipv4Slice, PacketBuilder, UdpSlice};

/// Bytes of probe header at the start of every probe payload.
pub const PROBE_HEADER: usize = 24;
const MAGIC: [u8; 4] = *b"TBP1";
/// IPv4 header (no options) plus ICMP or UDP header: what a probe adds to its payload.
pub const IP_OVERHEAD: usize = 20 + 8;

/// What a probe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The sending session's number.
    pub session: u32,
    /// Sequence number within the session.
    pub seq: u64,
    /// Send time in nanoseconds on the sender's clock.
    pub sent_ns: u64,
}

/// Which kind of packet carries the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// ICMP echo request; the target's kernel answers with an echo reply.
    IcmpEcho,
    /// UDP datagram from `src_port` to `dst_port`; an echo service sends it back.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
}

/// Builds probes for one session without allocating per packet.
#[derive(Debug, Clone)]
pub struct ProbeBuilder {
    kind: ProbeKind,
    src: [u8; 4],
    dst: [u8; 4],
    session: u32,
    payload: Vec<u8>,
    out: Vec<u8>,
}

impl ProbeBuilder {
    /// Probes from `src` (the tunnel address) to `dst` for session `session`, each an IP packet
    /// of `size` bytes (at least [`IP_OVERHEAD`] + [`PROBE_HEADER`]; smaller sizes are raised).
    #[must_use]
    pub fn new(kind: ProbeKind, src: Ipv4Addr, dst: Ipv4Addr, session: u32, size: usize) -> Self {
        let payload_len = size.saturating_sub(IP_OVERHEAD).max(PROBE_HEADER);
        let mut payload = vec![0u8; payload_len];
        for (i, b) in payload.iter_mut().enumerate().skip(PROBE_HEADER) {
            *b = (i % 251) as u8;
        }
        Self {
            kind,
            src: src.octets(),
            dst: dst.octets(),
            session,
            payload,
            out: Vec::with_capacity(payload_len + IP_OVERHEAD),
        }
    }

    /// The size of each IP packet built.
    #[must_use]
    pub fn packet_len(&self) -> usize {
        self.payload.len() + IP_OVERHEAD
    }

    /// Builds probe `seq` sent at `sent_ns`; the packet is valid until the next call.
    pub fn build(&mut self, seq: u64, sent_ns: u64) -> &[u8] {
        let mut header = [0u8; PROBE_HEADER];
        for (dst, src) in header.iter_mut().zip(
            MAGIC
                .iter()
                .chain(&self.session.to_be_bytes())
                .chain(&seq.to_be_bytes())
                .chain(&sent_ns.to_be_bytes()),
        ) {
            *dst = *src;
        }
        for (dst, src) in self.payload.iter_mut().zip(header) {
            *dst = src;
        }
        self.out.clear();
        let ip = PacketBuilder::ipv4(self.src, self.dst, 64);
        // Writing into a Vec cannot fail; a failure would leave `out` short and the probe lost,
        // which the receiver counts.
        let _ = match self.kind {
            ProbeKind::IcmpEcho => ip
                .icmpv4_echo_request((self.session & 0xffff) as u16, (seq & 0xffff) as u16)
                .write(&mut self.out, &self.payload),
            ProbeKind::Udp { src_port, dst_port } => ip
                .udp(src_port, dst_port)
                .write(&mut self.out, &self.payload),
        };
        &self.out
    }
}

fn read_probe(payload: &[u8]) -> Option<Probe> {
    let h = payload.get(..PROBE_HEADER)?;
    if h.get(..4)? != MAGIC {
        return None;
    }
    Some(Probe {
        session: u32::from_be_bytes(h.get(4..8)?.try_into().ok()?),
        seq: u64::from_be_bytes(h.get(8..16)?.try_into().ok()?),
        sent_ns: u64::from_be_bytes(h.get(16..24)?.try_into().ok()?),
    })
}

/// Reads a reply to a probe: an IPv4 packet addressed to `own` that is an ICMP echo reply or a
/// UDP datagram whose payload starts with a probe header. Anything else is `None`.
#[must_use]
pub fn parse_reply(packet: &[u8], own: Ipv4Addr) -> Option<Probe> {
    let ip = Ipv4Slice::from_slice(packet).ok()?;
    if ip.header().destination() != own.octets() {
        return None;
    }
    let p = ip.payload();
    match p.ip_number {
        IpNumber::ICMP => {
            let icmp = Icmpv4Slice::from_slice(p.payload).ok()?;
            match icmp.icmp_type() {
                Icmpv4Type::EchoReply(_) => read_probe(icmp.payload()),
                _ => None,
            }
        }
        IpNumber::UDP => read_probe(UdpSlice::from_slice(p.payload).ok()?.payload()),
        _ => None,
    }
}

/// Builds the echo a UDP echo service would send for `packet` (addresses and ports swapped), into
/// `out`. `None` if `packet` is not an IPv4 UDP datagram.
pub fn udp_echo(packet: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let ip = Ipv4Slice::from_slice(packet).ok()?;
    let p = ip.payload();
    if p.ip_number != IpNumber::UDP {
        return None;
    }
    let udp = UdpSlice::from_slice(p.payload).ok()?;
    out.clear();
    PacketBuilder::ipv4(ip.header().destination(), ip.header().source(), 64)
        .udp(udp.destination_port(), udp.source_port())
        .write(out, udp.payload())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::Icmpv4Header;

    fn echo_reply_to(request: &[u8]) -> Vec<u8> {
        let ip = Ipv4Slice::from_slice(request).unwrap();
        let icmp = Icmpv4Slice::from_slice(ip.payload().payload).unwrap();
        let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
            panic!("not an echo request")
        };
        let mut out = Vec::new();
        PacketBuilder::ipv4(ip.header().destination(), ip.header().source(), 64)
            .icmpv4(Icmpv4Type::EchoReply(echo))
            .write(&mut out, icmp.payload())
            .unwrap();
        out
    }

    #[test]
    fn icmp_probe_round_trips_through_an_echo_reply() {
        let me = Ipv4Addr::new(198, 18, 128, 5);
        let mut b = ProbeBuilder::new(
            ProbeKind::IcmpEcho,
            me,
            Ipv4Addr::new(198, 18, 2, 10),
            77,
            200,
        );
        let req = b.build(123_456, 999).to_vec();
        assert_eq!(req.len(), 200);
        let ip = Ipv4Slice::from_slice(&req).unwrap();
        assert_eq!(ip.header().source(), me.octets());
        // Valid ICMP checksum.
        let icmp = Icmpv4Slice::from_slice(ip.payload().payload).unwrap();
        let hdr = Icmpv4Header::new(icmp.icmp_type());
        assert_eq!(hdr.icmp_type.calc_checksum(icmp.payload()), icmp.checksum());
        let got = parse_reply(&echo_reply_to(&req), me).unwrap();
        assert_eq!(
            got,
            Probe {
                session: 77,
                seq: 123_456,
                sent_ns: 999
            }
        );
        // Not for us, or not a reply: ignored.
        assert_eq!(parse_reply(&echo_reply_to(&req), Ipv4Addr::LOCALHOST), None);
        assert_eq!(parse_reply(&req, Ipv4Addr::new(198, 18, 2, 10)), None);
    }

    #[test]
    fn udp_probe_round_trips_through_udp_echo() {
        let me = Ipv4Addr::new(198, 18, 128, 9);
        let mut b = ProbeBuilder::new(
            ProbeKind::Udp {
                src_port: 4000,
                dst_port: 7,
            },
            me,
            Ipv4Addr::new(198, 18, 2, 10),
            3,
            10,
        );
        assert_eq!(b.packet_len(), IP_OVERHEAD + PROBE_HEADER);
        let req = b.build(5, 6).to_vec();
        let mut echo = Vec::new();
        udp_echo(&req, &mut echo).unwrap();
        assert_eq!(parse_reply(&echo, me).map(|p| p.seq), Some(5));
    }

    #[test]
    fn building_reuses_buffers() {
        let mut b = ProbeBuilder::new(
            ProbeKind::IcmpEcho,
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(2, 2, 2, 2),
            1,
            1400,
        );
        let first = b.build(1, 1).as_ptr();
        for seq in 2..100 {
            assert_eq!(b.build(seq, seq).as_ptr(), first);
        }
    }

    #[test]
    fn garbage_is_not_a_reply() {
        for junk in [
            &[][..],
            &[0x45; 10],
            &[0x60; 60],
            b"TBP1TBP1TBP1TBP1TBP1TBP1TBP1",
        ] {
            assert_eq!(parse_reply(junk, Ipv4Addr::LOCALHOST), None);
        }
    }
}
