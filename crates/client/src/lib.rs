//! A Rust client of the AnyConnect protocol, built on `tunnel-proto`, for the capacity harness
//! (`tunnel-bench`) and tests.
//!
//! One [`connect`] logs in over TLS (the XML `init`, the server's forms, the `webvpn` cookie), sends
//! the `CONNECT`, and returns a [`Tunnel`] that carries CSTP frames. [`reconnect`] opens a new
//! connection with the cookie only, as openconnect does after a network loss. Nothing here touches a
//! TUN device: IP packets are built and read in user space ([`packet`]), so one process can run
//! thousands of sessions, one task each.
//!
//! With [`Endpoint::dtls`] the CONNECT offers DTLS (PSK-NEGOTIATE, as openconnect does) and, when
//! the server accepts, the tunnel also runs a DTLS 1.2 channel on UDP ([`DtlsStatus`]): IP packets
//! go over it once it is up and over CSTP before, and after a failure.
//!
//! The server's certificate is accepted by its `pin-sha256:` value or, in a lab, without any check
//! ([`tls::Verify`]). A client certificate ([`tls::ClientCert`], [`Endpoint::with_client_cert`])
//! logs in to a gateway in certificate-authentication mode.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]

mod channel_timers;
mod dtls;
mod error;
mod login;
pub mod packet;
pub mod tls;
mod tunnel;

pub use dtls::{DtlsFailure, DtlsStats, DtlsStatus};
pub use error::ClientError;
pub use login::{connect, reconnect, Credentials, Endpoint, Established, SetupTimings};
pub use tunnel::{Frame, Transport, Tunnel};
