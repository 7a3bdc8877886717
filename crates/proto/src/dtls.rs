//! The UDP/DTLS channel's byte formats that need no I/O (protocol doc §7.5, §7.6, §7.7):
//!
//! * [`client_hello_session_id`]: the `session_id` of a DTLS ClientHello read straight from a raw
//!   datagram. openconnect puts the hex-decoded `X-DTLS-App-ID` there, so this is how a datagram
//!   from an address the gateway has never seen is matched to its session: by App-ID, never by IP.
//!   It is bounds-checked against every length field and never allocates, so a flood of garbage
//!   costs a few comparisons per datagram.
//! * [`decode`] / [`encode`]: the one-byte type header (the CSTP type values) in front of every
//!   DTLS application-data record: `0x00` + IP packet, `0x03` DPD request, `0x04` DPD response,
//!   `0x07` keepalive.
//! * [`dpd_response`]: the answer to a DPD request, which must echo the request's bytes after the
//!   type byte with the same length. openconnect's MTU probes are DPD requests and the tunnel does
//!   not come up until they are answered this way (§7.7).
//! * [`RecordHeader`], [`records`] and [`ReplayWindow`]: the DTLS 1.2 record header (RFC 6347
//!   §4.1), the records packed in one datagram, and the anti-replay window (§4.1.2.6), for the
//!   gateway's own record layer on an established channel.

use crate::cstp::FrameType;

/// DTLS record content type of ChangeCipherSpec records.
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
/// DTLS record content type of alert records.
pub const CONTENT_ALERT: u8 = 21;
/// DTLS record content type of handshake records.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// DTLS record content type of application-data records.
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// Length of a DTLS record header: type, version, epoch, sequence number, length.
pub const RECORD_HEADER_LEN: usize = 13;
/// Length of a DTLS handshake message header: type, length, message sequence, fragment offset and
/// fragment length.
pub const HANDSHAKE_HEADER_LEN: usize = 12;
/// Handshake message type of a ClientHello.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Length of the App-ID openconnect puts in the ClientHello `session_id` (64 hex digits in
/// `X-DTLS-App-ID`).
pub const APP_ID_LEN: usize = 32;
/// Largest `session_id` TLS allows.
const MAX_SESSION_ID: usize = 32;
/// Record versions a ClientHello may carry: DTLS 1.0 (`FE FF`, what GnuTLS sends) and DTLS 1.2.
const RECORD_VERSIONS: [[u8; 2]; 2] = [[0xFE, 0xFF], [0xFE, 0xFD]];
/// Offset of the `session_id` length byte in the datagram: record header (13), handshake header
/// (12), `client_version` (2), `random` (32).
pub const SESSION_ID_LEN_OFFSET: usize = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 2 + 32;
/// Offset of the first `session_id` byte.
pub const SESSION_ID_OFFSET: usize = SESSION_ID_LEN_OFFSET + 1;

/// Why a datagram is not a ClientHello whose `session_id` can be trusted to be where it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The first record is not a DTLS handshake record (content type 22 with record version
    /// `FE FF` or `FE FD`, epoch 0). Most such datagrams are DTLS records of an established
    /// channel from a peer that is not known, or plain garbage.
    #[error("not a DTLS handshake record")]
    NotHandshake,
    /// A handshake record that does not carry a ClientHello.
    #[error("DTLS handshake record is not a ClientHello")]
    NotClientHello,
    /// A length field points past the end of the datagram, record or message: the datagram was
    /// truncated or forged.
    #[error("truncated or inconsistent ClientHello")]
    Truncated,
    /// The ClientHello is split over several fragments; openconnect never does that, and matching
    /// needs the whole message.
    #[error("fragmented ClientHello")]
    Fragmented,
    /// The `session_id` is longer than the 32 bytes TLS allows.
    #[error("ClientHello session_id longer than 32 bytes")]
    SessionIdTooLong,
}

fn u16_at(d: &[u8], at: usize) -> Option<usize> {
    let b = d.get(at..at + 2)?;
    Some(usize::from(b.first().copied()?) << 8 | usize::from(b.get(1).copied()?))
}

fn u24_at(d: &[u8], at: usize) -> Option<usize> {
    let b = d.get(at..at + 3)?;
    let [x, y, z] = [b.first()?, b.get(1)?, b.get(2)?];
    Some(usize::from(*x) << 16 | usize::from(*y) << 8 | usize::from(*z))
}

/// The `session_id` of the DTLS ClientHello at the start of datagram `d` (§7.5: its length at byte
/// 59, its bytes from byte 60). For openconnect in PSK-NEGOTIATE mode this is the 32-byte App-ID;
/// any other length matches no session.
///
/// Checked, in order: record type 22 with a DTLS record version and epoch 0; the record length
/// fits the datagram; handshake type ClientHello; an unfragmented message (offset 0, fragment
/// length = message length) that fits the record; a `session_id` of at most 32 bytes that fits the
/// message. Never allocates or panics, whatever the input.
pub fn client_hello_session_id(d: &[u8]) -> Result<&[u8], HelloError> {
    let (Some(&content), Some(version), Some(epoch)) = (d.first(), d.get(1..3), d.get(3..5)) else {
        return Err(HelloError::NotHandshake);
    };
    if content != CONTENT_HANDSHAKE
        || !RECORD_VERSIONS.iter().any(|v| v == version)
        || epoch != [0, 0]
    {
        return Err(HelloError::NotHandshake);
    }
    let record_len = u16_at(d, 11).ok_or(HelloError::Truncated)?;
    let record_end = RECORD_HEADER_LEN + record_len;
    if record_end > d.len() {
        return Err(HelloError::Truncated);
    }
    match d.get(RECORD_HEADER_LEN) {
        Some(&HANDSHAKE_CLIENT_HELLO) => {}
        Some(_) => return Err(HelloError::NotClientHello),
        None => return Err(HelloError::Truncated),
    }
    let msg_len = u24_at(d, RECORD_HEADER_LEN + 1).ok_or(HelloError::Truncated)?;
    let frag_offset = u24_at(d, RECORD_HEADER_LEN + 6).ok_or(HelloError::Truncated)?;
    let frag_len = u24_at(d, RECORD_HEADER_LEN + 9).ok_or(HelloError::Truncated)?;
    if frag_offset != 0 || frag_len != msg_len {
        return Err(HelloError::Fragmented);
    }
    let msg_end = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + msg_len;
    if msg_end > record_end {
        return Err(HelloError::Truncated);
    }
    let sid_len = usize::from(*d.get(SESSION_ID_LEN_OFFSET).ok_or(HelloError::Truncated)?);
    if sid_len > MAX_SESSION_ID {
        return Err(HelloError::SessionIdTooLong);
    }
    let sid_end = SESSION_ID_OFFSET + sid_len;
    if sid_end > msg_end {
        return Err(HelloError::Truncated);
    }
    d.get(SESSION_ID_OFFSET..sid_end)
        .ok_or(HelloError::Truncated)
}

/// True when `d` starts with a DTLS record of content type handshake (22), whatever its epoch:
/// a handshake flight, as opposed to application data or an alert.
#[must_use]
pub fn is_handshake_record(d: &[u8]) -> bool {
    d.first() == Some(&CONTENT_HANDSHAKE)
}

/// One decrypted DTLS application-data record, by its type byte (§7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload<'a> {
    /// `0x00`: an IP packet.
    Data(&'a [u8]),
    /// `0x03`: a DPD request (or an MTU probe); the bytes after the type byte, to be echoed by
    /// [`dpd_response`].
    DpdRequest(&'a [u8]),
    /// `0x04`: a DPD response; only proves the peer is alive.
    DpdResponse,
    /// `0x07`: a keepalive; ignored.
    Keepalive,
    /// `0x05`: a DISCONNECT. Not sent over DTLS by openconnect (it uses CSTP); ignored.
    Disconnect(&'a [u8]),
    /// `0x08`: a compressed packet. Only valid if compression was negotiated, which it never is.
    Compressed(&'a [u8]),
    /// Any other type byte, including the server-only TERMINATE (`0x09`).
    Unknown(u8),
}

/// Why a decrypted record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// An application-data record with no bytes at all (not even the type byte).
    #[error("empty DTLS payload")]
    Empty,
}

/// Splits a decrypted DTLS record into its type and payload.
pub fn decode(record: &[u8]) -> Result<Payload<'_>, PayloadError> {
    let (&kind, rest) = record.split_first().ok_or(PayloadError::Empty)?;
    Ok(match FrameType::from_u8(kind) {
        Some(FrameType::Data) => Payload::Data(rest),
        Some(FrameType::DpdRequest) => Payload::DpdRequest(rest),
        Some(FrameType::DpdResponse) => Payload::DpdResponse,
        Some(FrameType::Keepalive) => Payload::Keepalive,
        Some(FrameType::Disconnect) => Payload::Disconnect(rest),
        Some(FrameType::Compressed) => Payload::Compressed(rest),
        Some(FrameType::Terminate) | None => Payload::Unknown(kind),
    })
}

/// Appends the record `[kind] + payload` to `out`.
pub fn encode(kind: FrameType, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(1 + payload.len());
    out.push(kind.as_u8());
    out.extend_from_slice(payload);
}

/// Appends the answer to a DPD request whose bytes after the type byte are `request` to `out`:
/// `0x04` followed by the same bytes, so the reply has the request's length and probe id (§7.7).
pub fn dpd_response(request: &[u8], out: &mut Vec<u8>) {
    encode(FrameType::DpdResponse, request, out);
}

/// The record version of DTLS 1.2.
pub const DTLS12: [u8; 2] = [0xFE, 0xFD];
/// Largest sequence number of an epoch (48 bits).
pub const MAX_SEQ: u64 = (1 << 48) - 1;

/// A DTLS record header (RFC 6347 §4.1): 13 bytes in front of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Content type (20 ChangeCipherSpec, 21 alert, 22 handshake, 23 application data).
    pub content: u8,
    /// Record version bytes.
    pub version: [u8; 2],
    /// Epoch: 0 during the first handshake, 1 once its keys are in use.
    pub epoch: u16,
    /// Sequence number within the epoch (48 bits).
    pub seq: u64,
    /// Length of the record's body after the header.
    pub len: usize,
}

impl RecordHeader {
    /// Reads the header at the start of `d`; `None` if `d` is shorter than a header.
    #[must_use]
    pub fn parse(d: &[u8]) -> Option<Self> {
        let h: &[u8; RECORD_HEADER_LEN] = d.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
        let [content, v0, v1, e0, e1, s0, s1, s2, s3, s4, s5, l0, l1] = *h;
        Some(Self {
            content,
            version: [v0, v1],
            epoch: u16::from_be_bytes([e0, e1]),
            seq: u64::from_be_bytes([0, 0, s0, s1, s2, s3, s4, s5]),
            len: usize::from(u16::from_be_bytes([l0, l1])),
        })
    }

    /// The header's 13 bytes (the sequence number's top 16 bits and the length's beyond 16 bits
    /// are not representable and are cut; callers keep `seq` <= [`MAX_SEQ`] and `len` < 64 KiB).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_LEN] {
        let [e0, e1] = self.epoch.to_be_bytes();
        let [_, _, s0, s1, s2, s3, s4, s5] = self.seq.to_be_bytes();
        let [l0, l1] = u16::try_from(self.len).unwrap_or(u16::MAX).to_be_bytes();
        let [v0, v1] = self.version;
        [self.content, v0, v1, e0, e1, s0, s1, s2, s3, s4, s5, l0, l1]
    }

    /// Epoch and sequence number as the 8 bytes AEAD nonces and additional data use.
    #[must_use]
    pub fn epoch_seq(&self) -> [u8; 8] {
        ((u64::from(self.epoch) << 48) | (self.seq & MAX_SEQ)).to_be_bytes()
    }
}

/// The records packed in one datagram, in order, each as its header and its whole bytes (header
/// included). Stops at the first record whose length runs past the datagram: RFC 6347 §4.1.2.7
/// lets a receiver drop the rest of a datagram it cannot parse.
pub fn records(d: &[u8]) -> impl Iterator<Item = (RecordHeader, &[u8])> {
    let mut rest = d;
    std::iter::from_fn(move || {
        let h = RecordHeader::parse(rest)?;
        let end = RECORD_HEADER_LEN.checked_add(h.len)?;
        let record = rest.get(..end)?;
        rest = rest.get(end..).unwrap_or_default();
        Some((h, record))
    })
}

/// [`records`] for opening records in place: each record's header and its whole bytes, mutable.
/// [`Self::truncated`] says afterwards whether it stopped at a record whose length ran past the
/// datagram (the rest of the datagram is dropped, as [`records`] drops it).
#[derive(Debug)]
pub struct RecordsMut<'a> {
    rest: &'a mut [u8],
    truncated: bool,
}

impl<'a> RecordsMut<'a> {
    /// The records of datagram `d`.
    #[must_use]
    pub fn new(d: &'a mut [u8]) -> Self {
        Self {
            rest: d,
            truncated: false,
        }
    }

    /// True once a record's length ran past the end of the datagram.
    #[must_use]
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<'a> Iterator for RecordsMut<'a> {
    type Item = (RecordHeader, &'a mut [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let h = RecordHeader::parse(self.rest)?;
        let Some(end) = RECORD_HEADER_LEN
            .checked_add(h.len)
            .filter(|&end| end <= self.rest.len())
        else {
            self.truncated = true;
            return None;
        };
        let (record, tail) = std::mem::take(&mut self.rest).split_at_mut(end);
        self.rest = tail;
        Some((h, record))
    }
}

/// The anti-replay window of one epoch (RFC 6347 §4.1.2.6): the highest sequence number
/// authenticated so far and which of the 63 below it were seen. A record is checked before it is
/// decrypted and marked only once it authenticated, so forged records cannot move the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    top: u64,
    /// Bit i set: `top - i` was seen (bit 0 is `top` itself once anything was marked).
    seen: u64,
}

impl ReplayWindow {
    /// A window that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// True if `seq` is new: above the window, or inside it and not seen yet.
    #[must_use]
    pub fn check(&self, seq: u64) -> bool {
        if self.seen == 0 || seq > self.top {
            return true;
        }
        let back = self.top - seq;
        back < 64 && self.seen & (1 << back) == 0
    }

    /// Records `seq` as seen (after its record authenticated).
    pub fn mark(&mut self, seq: u64) {
        if self.seen == 0 {
            self.top = seq;
            self.seen = 1;
        } else if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.top = seq;
        } else if let Some(bit) = 1u64.checked_shl(u32::try_from(self.top - seq).unwrap_or(64)) {
            self.seen |= bit;
        }
    }
}

/// Largest UDP payload handed to the kernel in one GSO send.
pub const MAX_GSO_BYTES: usize = 64000;

/// The next GSO batch from a queue of datagrams of lengths `lens`: how many datagrams, and their
/// total bytes. A batch is a run of datagrams of the first one's size (the last may be shorter,
/// as UDP GSO allows), at most `max_segments` of them and [`MAX_GSO_BYTES`] in all; always at
/// least one datagram when `lens` is not empty, `(0, 0)` when it is.
pub fn gso_batch(lens: &[usize], max_segments: usize) -> (usize, usize) {
    let Some(&size) = lens.first() else {
        return (0, 0);
    };
    let (mut n, mut total) = (1, size);
    for &l in lens.iter().skip(1) {
        if n >= max_segments || l > size || total + l > MAX_GSO_BYTES {
            break;
        }
        total += l;
        n += 1;
        if l < size {
            break;
        }
    }
    (n, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::mutations;

    #[test]
    fn record_headers_round_trip_and_datagrams_split_into_records() {
        let h = RecordHeader {
            content: CONTENT_APPLICATION_DATA,
            version: DTLS12,
            epoch: 1,
            seq: 0x0102_0304_0506,
            len: 3,
        };
        let bytes = h.to_bytes();
        assert_eq!(bytes, [23, 0xFE, 0xFD, 0, 1, 1, 2, 3, 4, 5, 6, 0, 3]);
        assert_eq!(RecordHeader::parse(&bytes), Some(h));
        assert_eq!(h.epoch_seq(), [0, 1, 1, 2, 3, 4, 5, 6]);
        assert_eq!(RecordHeader::parse(&bytes[..12]), None);
        let mut d = bytes.to_vec();
        d.extend_from_slice(b"abc");
        let second = RecordHeader {
            content: CONTENT_ALERT,
            seq: 7,
            len: 2,
            ..h
        };
        d.extend_from_slice(&second.to_bytes());
        d.extend_from_slice(b"xy");
        // A third record whose length runs past the datagram is not returned.
        d.extend_from_slice(&RecordHeader { len: 100, ..h }.to_bytes());
        d.extend_from_slice(b"short");
        let got: Vec<_> = records(&d).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, h);
        assert_eq!(got[0].1.len(), 16);
        assert_eq!(got[1].0, second);
        assert_eq!(&got[1].1[13..], b"xy");
        // The mutable split gives the same records and says it stopped at the third.
        let mut m = d.clone();
        let mut it = RecordsMut::new(&mut m);
        let got_mut: Vec<_> = it.by_ref().map(|(h, r)| (h, r.to_vec())).collect();
        assert!(it.truncated());
        assert_eq!(got_mut.len(), 2);
        assert_eq!((got_mut[1].0, &got_mut[1].1[..]), (got[1].0, got[1].1));
        let mut whole = d[..31].to_vec();
        let mut it = RecordsMut::new(&mut whole);
        assert_eq!(it.by_ref().count(), 2);
        assert!(!it.truncated());
        for m in mutations(&d, 2_000, 0x7ec0) {
            for (h, r) in records(&m) {
                assert_eq!(r.len(), RECORD_HEADER_LEN + h.len);
            }
            let mut mm = m.clone();
            let n = RecordsMut::new(&mut mm).count();
            assert_eq!(n, records(&m).count());
        }
    }

    #[test]
    fn the_replay_window_refuses_repeats_and_records_too_old() {
        let mut w = ReplayWindow::new();
        assert!(w.check(5));
        w.mark(5);
        assert!(!w.check(5));
        assert!(w.check(4) && w.check(6));
        w.mark(3);
        assert!(!w.check(3) && w.check(4));
        w.mark(100);
        assert!(!w.check(100) && !w.check(5) && !w.check(36));
        assert!(w.check(37) && w.check(99) && w.check(101));
        w.mark(37);
        assert!(!w.check(37));
        // Exactly 64 back is outside the window.
        w.mark(200);
        assert!(!w.check(136) && w.check(137));
        w.mark(137);
        assert!(!w.check(137));
        // A jump of 64 or more forgets everything below.
        w.mark(1000);
        assert!(!w.check(200) && !w.check(1000) && w.check(999));
    }

    #[test]
    fn gso_batches_are_runs_of_one_size_ending_at_most_one_shorter_datagram() {
        assert_eq!(gso_batch(&[], 64), (0, 0));
        assert_eq!(gso_batch(&[100], 64), (1, 100));
        assert_eq!(gso_batch(&[100, 100, 60, 100], 64), (3, 260));
        // A longer datagram starts the next batch.
        assert_eq!(gso_batch(&[100, 100, 200], 64), (2, 200));
        assert_eq!(gso_batch(&[100; 10], 4), (4, 400));
        assert_eq!(gso_batch(&[100; 10], 1), (1, 100));
        // At most MAX_GSO_BYTES in one send.
        let (n, total) = gso_batch(&[1400; 64], 64);
        assert_eq!((n, total), (45, 63000));
        assert!(total <= MAX_GSO_BYTES);
    }

    /// The App-ID used in the captured-shape ClientHello below.
    const APP_ID: [u8; 32] = [
        0xa0, 0x02, 0xf3, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
        0xdd, 0xee, 0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
        0x07, 0x63,
    ];

    /// The 168-byte ClientHello openconnect 9.01 / GnuTLS 3.7.9 sends, rebuilt byte for byte from
    /// the decode in the protocol doc §7.3: record header `16 fe ff 00.. 00 9b`, handshake header
    /// `01 00 00 8f 00 00 00 00 00 00 00 8f`, client_version FE FD, 32 random bytes, the App-ID as
    /// session_id, an empty cookie, the 8 PSK suites in the client's order, compression `[0]`, and
    /// the four extensions (signature_algorithms, session_ticket, renegotiation_info,
    /// record_size_limit = 16384).
    fn openconnect_client_hello(app_id: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)));
        body.push(u8::try_from(app_id.len()).unwrap());
        body.extend_from_slice(app_id);
        body.push(0); // cookie
        let suites: [u16; 8] = [
            0x00A9, 0xCCAB, 0xC0A5, 0x008D, 0x00A8, 0xC0A4, 0x008C, 0x00AE,
        ];
        body.extend_from_slice(&16u16.to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]); // compression methods: null
        let mut ext = Vec::new();
        // signature_algorithms (13): the doc gives its size, not its content; these are GnuTLS's
        // 16 default schemes (32 bytes after the 2-byte list length).
        ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x22, 0x00, 0x20]);
        ext.extend_from_slice(&[
            0x08, 0x04, 0x04, 0x03, 0x08, 0x07, 0x04, 0x01, 0x08, 0x05, 0x05, 0x03, 0x05, 0x01,
            0x08, 0x06, 0x06, 0x03, 0x06, 0x01, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b,
            0x02, 0x01, 0x02, 0x03,
        ]);
        ext.extend_from_slice(&[0x00, 0x23, 0x00, 0x00]); // session_ticket, empty
        ext.extend_from_slice(&[0xff, 0x01, 0x00, 0x01, 0x00]); // renegotiation_info, empty
        ext.extend_from_slice(&[0x00, 0x1c, 0x00, 0x02, 0x40, 0x00]); // record_size_limit 16384
        body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&ext);
        let len = body.len();
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes()[1..]);
        hs.extend_from_slice(&[0, 0, 0, 0, 0]);
        hs.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut d = vec![CONTENT_HANDSHAKE, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        d.extend_from_slice(&hs);
        d
    }

    #[test]
    fn captured_shape_matches_the_protocol_doc() {
        let d = openconnect_client_hello(&APP_ID);
        assert_eq!(d.len(), 168, "§7.3: 168 bytes of UDP payload");
        assert_eq!(
            &d[..13],
            &[0x16, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x9b]
        );
        assert_eq!(&d[13..25], &[0x01, 0, 0, 0x8f, 0, 0, 0, 0, 0, 0, 0, 0x8f]);
        assert_eq!(d[59], 32);
        assert_eq!(&d[60..92], &APP_ID);
    }

    #[test]
    fn app_id_is_read_from_offset_60_of_openconnects_hello() {
        let d = openconnect_client_hello(&APP_ID);
        assert_eq!(client_hello_session_id(&d), Ok(&APP_ID[..]));
    }

    #[test]
    fn dtls12_record_version_is_accepted_too() {
        let mut d = openconnect_client_hello(&APP_ID);
        d[2] = 0xFD;
        assert_eq!(client_hello_session_id(&d), Ok(&APP_ID[..]));
    }

    #[test]
    fn short_and_empty_session_ids_are_returned_as_they_are() {
        let d = openconnect_client_hello(&APP_ID[..8]);
        assert_eq!(client_hello_session_id(&d), Ok(&APP_ID[..8]));
        let d = openconnect_client_hello(&[]);
        assert_eq!(client_hello_session_id(&d), Ok(&[][..]));
    }

    #[test]
    fn every_truncation_is_rejected_without_panicking() {
        let d = openconnect_client_hello(&APP_ID);
        for n in 0..d.len() {
            let r = client_hello_session_id(&d[..n]);
            assert!(r.is_err(), "truncated to {n} bytes was accepted: {r:?}");
        }
        // Trailing bytes after the record (another record in the same datagram) are fine.
        let mut longer = d.clone();
        longer.extend_from_slice(&[0x17, 0xfe, 0xfd]);
        assert_eq!(client_hello_session_id(&longer), Ok(&APP_ID[..]));
    }

    #[test]
    fn wrong_content_type_version_epoch_or_message_are_not_hellos() {
        let d = openconnect_client_hello(&APP_ID);
        let with = |i: usize, v: u8| {
            let mut x = d.clone();
            x[i] = v;
            x
        };
        assert_eq!(
            client_hello_session_id(&with(0, CONTENT_APPLICATION_DATA)),
            Err(HelloError::NotHandshake)
        );
        assert_eq!(
            client_hello_session_id(&with(1, 0x03)),
            Err(HelloError::NotHandshake)
        );
        assert_eq!(
            client_hello_session_id(&with(4, 1)),
            Err(HelloError::NotHandshake),
            "epoch 1 is an encrypted handshake record"
        );
        assert_eq!(
            client_hello_session_id(&with(13, 16)),
            Err(HelloError::NotClientHello)
        );
        assert_eq!(
            client_hello_session_id(&with(24, 0x8e)),
            Err(HelloError::Fragmented)
        );
        assert_eq!(
            client_hello_session_id(&with(21, 1)),
            Err(HelloError::Fragmented)
        );
        assert_eq!(
            client_hello_session_id(&with(59, 33)),
            Err(HelloError::SessionIdTooLong)
        );
        assert_eq!(client_hello_session_id(&[]), Err(HelloError::NotHandshake));
    }

    #[test]
    fn lengths_pointing_past_the_end_are_truncations() {
        let d = openconnect_client_hello(&APP_ID);
        let mut big_record = d.clone();
        big_record[12] = 0x9c;
        assert_eq!(
            client_hello_session_id(&big_record),
            Err(HelloError::Truncated)
        );
        // Message longer than its record.
        let mut big_msg = d.clone();
        big_msg[16] = 0x90;
        big_msg[24] = 0x90;
        assert_eq!(
            client_hello_session_id(&big_msg),
            Err(HelloError::Truncated)
        );
        // A session_id that runs past a tiny message.
        let mut tiny = d[..13 + 12 + 40].to_vec();
        tiny[11..13].copy_from_slice(&52u16.to_be_bytes());
        tiny[14..17].copy_from_slice(&[0, 0, 40]);
        tiny[22..25].copy_from_slice(&[0, 0, 40]);
        assert_eq!(client_hello_session_id(&tiny), Err(HelloError::Truncated));
    }

    #[test]
    fn mutated_hellos_never_panic_and_only_return_bytes_inside_the_datagram() {
        let d = openconnect_client_hello(&APP_ID);
        for m in mutations(&d, 20_000, 0xd715) {
            if let Ok(sid) = client_hello_session_id(&m) {
                assert!(sid.len() <= 32);
                let start = sid.as_ptr() as usize - m.as_ptr() as usize;
                assert_eq!(start, SESSION_ID_OFFSET);
            }
        }
    }

    #[test]
    fn payload_types_decode() {
        assert_eq!(
            decode(&[0x00, 0x45, 0x00]),
            Ok(Payload::Data(&[0x45, 0x00][..]))
        );
        assert_eq!(
            decode(&[0x03, 1, 2, 3, 4, 0, 0]),
            Ok(Payload::DpdRequest(&[1, 2, 3, 4, 0, 0][..]))
        );
        assert_eq!(decode(&[0x04]), Ok(Payload::DpdResponse));
        assert_eq!(decode(&[0x07]), Ok(Payload::Keepalive));
        assert_eq!(decode(&[0x05, 0xb0]), Ok(Payload::Disconnect(&[0xb0][..])));
        assert_eq!(decode(&[0x08, 9]), Ok(Payload::Compressed(&[9][..])));
        assert_eq!(decode(&[0x09]), Ok(Payload::Unknown(0x09)));
        assert_eq!(decode(&[0x42, 1]), Ok(Payload::Unknown(0x42)));
        assert_eq!(decode(&[]), Err(PayloadError::Empty));
    }

    #[test]
    fn mtu_probe_is_echoed_byte_for_byte_with_its_length() {
        // §7.7: [0x03][4-byte id][zeros...], total length = candidate MTU + 1.
        let mut probe = vec![0x03, 0xde, 0xad, 0xbe, 0xef];
        probe.resize(1435, 0);
        let Ok(Payload::DpdRequest(rest)) = decode(&probe) else {
            panic!("probe not decoded as a DPD request");
        };
        let mut out = Vec::new();
        dpd_response(rest, &mut out);
        assert_eq!(out.len(), probe.len());
        assert_eq!(out[0], 0x04);
        assert_eq!(&out[1..], &probe[1..]);
    }

    #[test]
    fn encode_puts_the_type_byte_first() {
        let mut out = Vec::new();
        encode(FrameType::Data, &[0x45, 1, 2], &mut out);
        encode(FrameType::Keepalive, &[], &mut out);
        assert_eq!(out, vec![0x00, 0x45, 1, 2, 0x07]);
    }
}
