//! Fuzz the DTLS datagram parsers: the ClientHello session_id extractor the UDP demux runs on every
//! datagram from an unknown peer, and the one-byte payload codec run on every decrypted record.
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
});
