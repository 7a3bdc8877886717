//! The tunnel-gateway server library: configuration, IP pool, session table, authentication, TLS
//! listener, TUN data plane, health page and metrics.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]
pub mod admin;
mod atomic_file;
pub mod ban;
pub mod client_cert;
pub mod coalesce;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dtls;
pub mod egress;
pub mod health;
pub mod metrics;
pub mod packet;
pub mod pool;
pub mod privdrop;
pub mod procmetrics;
pub mod readiness;
pub mod reload;
pub mod server;
pub mod sessions;
pub mod steering;
pub mod table;
pub mod tls;
mod tls_read;
pub(crate) mod tunnel;
mod udp_own;
pub mod users;
pub mod workers;
