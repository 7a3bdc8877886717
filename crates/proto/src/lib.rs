//! Sans-IO implementation of the AnyConnect protocol as spoken by openconnect and ocserv.
//!
//! Nothing here touches a socket, a file or a clock: bytes and `Instant`s go in, bytes and events come
//! out. The gateway (server) and the client crate drive these pieces from their own I/O.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod auth_form;
pub mod auth_xml;
pub mod connect;
pub mod connect_client;
pub mod cstp;
pub mod dtls;
#[cfg(feature = "record")]
pub mod dtls_record;
pub mod http;
pub mod http_client;
pub mod mtu;
pub mod timers;

#[cfg(test)]
mod testutil;
