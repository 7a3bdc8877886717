//! Fuzz the CSTP frame decoder: walk a byte stream frame by frame, as the gateway does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::cstp;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((kind, payload, used))) = cstp::decode(rest, cstp::MAX_PAYLOAD) {
        assert_eq!(used, cstp::HEADER_LEN + payload.len());
        if kind == cstp::FrameType::Disconnect {
            let _ = (cstp::is_logout(payload), cstp::disconnect_reason(payload));
        }
        let mut again = Vec::new();
        cstp::encode(kind, payload, &mut again).expect("decoded payload re-encodes");
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
});
