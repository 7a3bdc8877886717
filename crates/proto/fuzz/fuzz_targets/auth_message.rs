//! Fuzz the auth POST body parser (XML and urlencoded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::auth_xml;

fuzz_target!(|data: &[u8]| {
    let _ = auth_xml::parse_client_message(data);
});
