//! Fuzz the HTTP request reader (keep-alive sequence) and the CONNECT request parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::{connect::ConnectRequest, http};

fuzz_target!(|data: &[u8]| {
    let limits = http::Limits::default();
    let mut rest = data;
    while let Ok(Some((req, used))) = http::parse_request(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        assert!(req.body.len() <= limits.max_body);
        let _ = ConnectRequest::from_request(&req);
        rest = &rest[used..];
    }
});
