//! The tunnel-gateway server library: configuration, IP pool, session table, authentication, TLS
//! listener, TUN data plane, health page and metrics.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]
pub mod config;
pub mod tls;
pub mod users;
