//! Fuzz the DTLS datagram parsers: the ClientHello session_id extractor the UDP demux runs on every
//! datagram from an unknown peer, the one-byte payload codec run on every decrypted record, the
//! record splitter and the anti-replay window the established channel's record layer runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::dtls;

fuzz_target!(|data: &[u8]| {
    if let Ok(sid) = dtls::client_hello_session_id(data) {
        assert!(sid.len() <= 32);
        assert_eq!(
            sid.as_ptr() as usize - data.as_ptr() as usize,
            dtls::SESSION_ID_OFFSET
        );
    }
    if let Ok(dtls::Payload::DpdRequest(rest)) = dtls::decode(data) {
        let mut out = Vec::new();
        dtls::dpd_response(rest, &mut out);
        assert_eq!(out.len(), data.len());
        assert_eq!(&out[1..], &data[1..]);
    }
    let mut window = dtls::ReplayWindow::new();
    let mut end = 0;
    for (h, record) in dtls::records(data) {
        assert_eq!(record.len(), dtls::RECORD_HEADER_LEN + h.len);
        assert_eq!(dtls::RecordHeader::parse(record), Some(h));
        assert_eq!(&h.to_bytes()[..], &record[..dtls::RECORD_HEADER_LEN]);
        end += record.len();
        if window.check(h.seq) {
            window.mark(h.seq);
        }
        assert!(!window.check(h.seq));
    }
    assert!(end <= data.len());
});
