//! CSTP framing: the 8-byte-header frames carried on the TLS stream after `200 CONNECTED`.
//!
//! Layout (protocol doc §5.1): `'S' 'T' 'F' 0x01 | len_hi len_lo | type | 0x00 | payload`.
//! The length is the payload length only (big-endian `u16`). Byte 7 must be zero: openconnect treats
//! anything else as an unknown packet and ends the session, so we reject it on input too.
//!
//! Everything here works on byte slices and never allocates except [`encode`], which appends to a
//! caller-owned `Vec`. The caller must still write each whole frame in one TLS record (§5.3).

/// Length of the CSTP frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// The four magic bytes at the start of every CSTP frame: `"STF"` followed by version 1.
pub const MAGIC: [u8; 4] = [b'S', b'T', b'F', 0x01];

/// Largest payload a CSTP frame can carry (the length field is a `u16`).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// First payload byte of a client DISCONNECT that means "the user logged out" (§5.2).
pub const LOGOUT_CODE: u8 = 0xB0;

/// A CSTP packet type (byte 6 of the header). Only the types openconnect understands exist here;
/// anything else is rejected on input and can't be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// An IP packet (IPv4 or IPv6), no extra header.
    Data = 0x00,
    /// Dead-peer-detection request; the receiver must answer with [`FrameType::DpdResponse`].
    DpdRequest = 0x03,
    /// Dead-peer-detection response; only marks the peer alive.
    DpdResponse = 0x04,
    /// Client to server: logout (payload `0xB0` + reason). Server to client: kick.
    Disconnect = 0x05,
    /// Keepalive; ignored by the receiver, never answered.
    Keepalive = 0x07,
    /// A compressed IP packet; only valid if compression was negotiated.
    Compressed = 0x08,
    /// Server to client: the session is terminated.
    Terminate = 0x09,
}

impl FrameType {
    /// Map a header type byte to a [`FrameType`]; `None` for a type openconnect doesn't know.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0x00 => Some(Self::Data),
            0x03 => Some(Self::DpdRequest),
            0x04 => Some(Self::DpdResponse),
            0x05 => Some(Self::Disconnect),
            0x07 => Some(Self::Keepalive),
            0x08 => Some(Self::Compressed),
            0x09 => Some(Self::Terminate),
            _ => None,
        }
    }

    /// The wire value of this type.
    #[must_use]
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A parsed CSTP frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The packet type.
    pub kind: FrameType,
    /// Number of payload bytes following the 8-byte header.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Total frame length: header plus payload.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }
}

/// Why a CSTP frame could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes were not `STF\x01`; the stream is not CSTP or is out of sync.
    #[error("bad CSTP magic (expected STF\\x01)")]
    BadMagic,
    /// Header byte 7 must be zero; the peer sent this value instead.
    #[error("nonzero reserved byte 7 in CSTP header: {0:#04x}")]
    NonZeroReserved(u8),
    /// The packet type byte is not one openconnect understands.
    #[error("unknown CSTP packet type {0:#04x}")]
    UnknownType(u8),
    /// The header announces a payload longer than the receiver accepts.
    #[error("CSTP payload of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Payload length announced in the header.
        len: usize,
        /// The receiver's limit (`max_payload`).
        max: usize,
    },
    /// A payload handed to the encoder does not fit the 16-bit length field.
    #[error("CSTP payload of {0} bytes does not fit in a frame (max 65535)")]
    PayloadTooLarge(usize),
}

/// Parse the 8-byte header at the front of `buf`.
///
/// Returns `Ok(None)` if fewer than [`HEADER_LEN`] bytes are available yet. Errors on a bad magic,
/// a nonzero byte 7, an unknown type, or a payload length above `max_payload`.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let [s, t, f, v, len_hi, len_lo, kind, reserved] = *h;
    if [s, t, f, v] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if reserved != 0 {
        return Err(FrameError::NonZeroReserved(reserved));
    }
    let kind = FrameType::from_u8(kind).ok_or(FrameError::UnknownType(kind))?;
    let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if payload_len > max_payload {
        return Err(FrameError::TooLong {
            len: payload_len,
            max: max_payload,
        });
    }
    Ok(Some(FrameHeader { kind, payload_len }))
}

/// Write the header of a `kind` frame carrying `payload_len` bytes into `out`.
///
/// Errors with [`FrameError::PayloadTooLarge`] if `payload_len` exceeds `u16::MAX`.
pub fn write_header(
    kind: FrameType,
    payload_len: usize,
    out: &mut [u8; HEADER_LEN],
) -> Result<(), FrameError> {
    let len = u16::try_from(payload_len).map_err(|_| FrameError::PayloadTooLarge(payload_len))?;
    let [hi, lo] = len.to_be_bytes();
    let [s, t, f, v] = MAGIC;
    *out = [s, t, f, v, hi, lo, kind.as_u8(), 0];
    Ok(())
}

/// Append a whole frame (header followed by `payload`) to `out`.
///
/// On error `out` is left unchanged.
pub fn encode(kind: FrameType, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut header = [0u8; HEADER_LEN];
    write_header(kind, payload.len(), &mut header)?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// One decoded frame: its type, its payload (borrowed from the input) and the number of input
/// bytes it used (header + payload).
pub type Decoded<'a> = (FrameType, &'a [u8], usize);

/// Decode the next complete frame at the front of `buf` without copying.
///
/// Returns `Ok(Some((kind, payload, consumed)))` where `payload` borrows from `buf` and `consumed`
/// is the total frame length to drop from the front of the buffer. `Ok(None)` means the header or
/// the payload is not complete yet: read more bytes and call again. Header errors are returned as
/// soon as the 8 header bytes are present, before the payload arrives.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<Decoded<'_>>, FrameError> {
    let Some(header) = parse_header(buf, max_payload)? else {
        return Ok(None);
    };
    let total = header.frame_len();
    Ok(buf
        .get(HEADER_LEN..total)
        .map(|payload| (header.kind, payload, total)))
}

/// True if a DISCONNECT payload is a user logout (starts with `0xB0`), which invalidates the
/// session cookie. An empty payload is a temporary disconnect.
#[must_use]
pub fn is_logout(payload: &[u8]) -> bool {
    payload.first() == Some(&LOGOUT_CODE)
}

/// The reason text of a logout DISCONNECT (the bytes after `0xB0`), if the payload is a logout
/// and the text is valid UTF-8. A trailing NUL, if the client sent one, is removed.
#[must_use]
pub fn disconnect_reason(payload: &[u8]) -> Option<&str> {
    let rest = payload.strip_prefix(&[LOGOUT_CODE])?;
    let rest = rest.strip_suffix(&[0]).unwrap_or(rest);
    std::str::from_utf8(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameType, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(kind, payload, &mut v).unwrap();
        v
    }

    #[test]
    fn frame_type_round_trips_every_known_value() {
        for b in 0..=255u8 {
            match FrameType::from_u8(b) {
                Some(t) => assert_eq!(t.as_u8(), b),
                None => assert!(![0, 3, 4, 5, 7, 8, 9].contains(&b)),
            }
        }
    }

    #[test]
    fn encode_produces_documented_layout() {
        let f = frame(FrameType::Data, &[0x45, 0, 0, 1]);
        assert_eq!(f, [b'S', b'T', b'F', 1, 0, 4, 0, 0, 0x45, 0, 0, 1]);
        let k = frame(FrameType::Keepalive, &[]);
        assert_eq!(k, [b'S', b'T', b'F', 1, 0, 0, 7, 0]);
    }

    #[test]
    fn encode_appends_and_length_is_big_endian() {
        let mut out = vec![0xAA];
        let payload = vec![1u8; 0x1234];
        encode(FrameType::Data, &payload, &mut out).unwrap();
        assert_eq!(out.len(), 1 + HEADER_LEN + 0x1234);
        assert_eq!(&out[..7], &[0xAA, b'S', b'T', b'F', 1, 0x12, 0x34]);
    }

    #[test]
    fn encode_rejects_oversized_payload_and_leaves_out_untouched() {
        let mut out = vec![9];
        let payload = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            encode(FrameType::Data, &payload, &mut out),
            Err(FrameError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        assert_eq!(out, [9]);
        let payload = vec![0u8; MAX_PAYLOAD];
        encode(FrameType::Data, &payload, &mut out).unwrap();
        assert_eq!(out.len(), 1 + HEADER_LEN + MAX_PAYLOAD);
    }

    #[test]
    fn write_header_rejects_over_u16() {
        let mut h = [0u8; HEADER_LEN];
        assert_eq!(
            write_header(FrameType::Data, 65536, &mut h),
            Err(FrameError::PayloadTooLarge(65536))
        );
        write_header(FrameType::DpdResponse, 65535, &mut h).unwrap();
        assert_eq!(h, [b'S', b'T', b'F', 1, 0xFF, 0xFF, 4, 0]);
    }

    #[test]
    fn parse_header_needs_eight_bytes() {
        let f = frame(FrameType::DpdRequest, b"xyz");
        for n in 0..HEADER_LEN {
            assert_eq!(parse_header(&f[..n], 2000), Ok(None));
        }
        assert_eq!(
            parse_header(&f, 2000),
            Ok(Some(FrameHeader {
                kind: FrameType::DpdRequest,
                payload_len: 3
            }))
        );
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut f = frame(FrameType::Data, b"");
        f[2] = b'X';
        assert_eq!(parse_header(&f, 2000), Err(FrameError::BadMagic));
        let mut f = frame(FrameType::Data, b"");
        f[3] = 2;
        assert_eq!(decode(&f, 2000), Err(FrameError::BadMagic));
        // HTTP bytes where a frame is expected.
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n", 2000),
            Err(FrameError::BadMagic)
        );
    }

    #[test]
    fn nonzero_reserved_byte_is_rejected() {
        let mut f = frame(FrameType::Data, b"ab");
        f[7] = 0x01;
        assert_eq!(parse_header(&f, 2000), Err(FrameError::NonZeroReserved(1)));
    }

    #[test]
    fn unknown_types_are_rejected() {
        for t in [1u8, 2, 6, 0x0A, 0xFF] {
            let f = [b'S', b'T', b'F', 1, 0, 0, t, 0];
            assert_eq!(decode(&f, 2000), Err(FrameError::UnknownType(t)));
        }
    }

    #[test]
    fn overlong_payload_is_rejected_before_it_arrives() {
        let f = [b'S', b'T', b'F', 1, 0x05, 0xDD, 0, 0]; // 1501
        assert_eq!(
            decode(&f, 1500),
            Err(FrameError::TooLong {
                len: 1501,
                max: 1500
            })
        );
        assert_eq!(decode(&f, 1501), Ok(None));
    }

    #[test]
    fn truncated_payload_waits_for_more() {
        let f = frame(FrameType::Data, &[1, 2, 3, 4, 5]);
        for n in 0..f.len() {
            assert_eq!(decode(&f[..n], 2000), Ok(None), "prefix {n}");
        }
        assert_eq!(
            decode(&f, 2000),
            Ok(Some((FrameType::Data, &[1u8, 2, 3, 4, 5][..], f.len())))
        );
    }

    #[test]
    fn decode_walks_a_stream_of_frames() {
        let mut stream = Vec::new();
        encode(FrameType::Data, b"one", &mut stream).unwrap();
        encode(FrameType::Keepalive, b"", &mut stream).unwrap();
        encode(FrameType::DpdRequest, b"probe", &mut stream).unwrap();
        stream.extend_from_slice(b"STF"); // start of a fourth frame

        let mut got = Vec::new();
        let mut rest = &stream[..];
        while let Some((kind, payload, used)) = decode(rest, 2000).unwrap() {
            got.push((kind, payload.to_vec()));
            rest = &rest[used..];
        }
        assert_eq!(
            got,
            vec![
                (FrameType::Data, b"one".to_vec()),
                (FrameType::Keepalive, vec![]),
                (FrameType::DpdRequest, b"probe".to_vec()),
            ]
        );
        assert_eq!(rest, b"STF");
    }

    #[test]
    fn every_split_point_decodes_identically() {
        let mut stream = Vec::new();
        encode(FrameType::Data, &[7u8; 40], &mut stream).unwrap();
        encode(FrameType::Disconnect, b"\xB0bye", &mut stream).unwrap();
        for split in 0..=stream.len() {
            // A reader that receives the stream in two pieces.
            let mut buf = stream[..split].to_vec();
            let mut frames = Vec::new();
            let mut drain = |buf: &mut Vec<u8>| {
                while let Some((k, p, used)) = decode(buf, 2000).unwrap() {
                    frames.push((k, p.len()));
                    buf.drain(..used);
                }
            };
            drain(&mut buf);
            buf.extend_from_slice(&stream[split..]);
            drain(&mut buf);
            assert_eq!(
                frames,
                vec![(FrameType::Data, 40), (FrameType::Disconnect, 4)],
                "split {split}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn logout_payload_is_recognised() {
        let p = b"\xB0Aborted by caller";
        assert!(is_logout(p));
        assert_eq!(disconnect_reason(p), Some("Aborted by caller"));
        assert_eq!(
            disconnect_reason(b"\xB0Server request\0"),
            Some("Server request")
        );
        assert_eq!(disconnect_reason(b"\xB0"), Some(""));
        assert!(!is_logout(b""));
        assert_eq!(disconnect_reason(b""), None);
        assert!(!is_logout(b"\x01abc"));
        assert_eq!(disconnect_reason(b"\x01abc"), None);
        assert!(is_logout(b"\xB0\xFF\xFE"));
        assert_eq!(disconnect_reason(b"\xB0\xFF\xFE"), None);
    }

    #[test]
    fn mutated_streams_never_panic_and_consume_sanely() {
        let mut seed = Vec::new();
        encode(FrameType::Data, &[0x45; 60], &mut seed).unwrap();
        encode(FrameType::DpdRequest, b"", &mut seed).unwrap();
        encode(FrameType::Disconnect, b"\xB0Aborted by caller", &mut seed).unwrap();
        for m in crate::testutil::mutations(&seed, 20_000, 1) {
            let mut rest = &m[..];
            while let Ok(Some((kind, payload, used))) = decode(rest, 1500) {
                assert!(used >= HEADER_LEN && used <= rest.len());
                assert_eq!(used, HEADER_LEN + payload.len());
                let _ = (is_logout(payload), disconnect_reason(payload), kind);
                rest = &rest[used..];
            }
        }
    }

    #[test]
    fn encode_decode_round_trip_for_every_type_and_many_lengths() {
        let mut rng = crate::testutil::Rng::new(7);
        let kinds = [0u8, 3, 4, 5, 7, 8, 9].map(|b| FrameType::from_u8(b).unwrap());
        for _ in 0..2000 {
            let kind = kinds[rng.below(kinds.len())];
            let len = rng.below(3000);
            let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let mut out = Vec::new();
            encode(kind, &payload, &mut out).unwrap();
            assert_eq!(
                decode(&out, MAX_PAYLOAD).unwrap(),
                Some((kind, &payload[..], out.len()))
            );
        }
    }
}
