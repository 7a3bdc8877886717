//! Shared helpers for the end-to-end tests: the real `tunneld` and the real `openconnect` 9.01 client,
//! talking over veths between network namespaces, with real TUN devices.
//!
//! A test builds a [`Topology`] (namespaces `dev…`, `gw`, `corp`), starts a [`Gateway`] in `gw`, and
//! drives [`Client`]s (openconnect) or a [`raw`] TLS client (tests/scripts/cstp_raw_client.py) from a
//! device namespace. Everything is torn down on drop, also on panic, and every wait has a deadline.
//!
//! Traffic stays inside the namespaces the test made: nothing is sent to any other address.

pub mod bench;
pub mod certs;
pub mod client;
pub mod container;
pub mod gateway;
pub mod metrics;
pub mod privileges;
pub mod process;
pub mod raw;
pub mod topology;
pub mod transfer;
pub mod wait;

pub use client::{
    authenticate, authenticate_certificate, run_expecting_exit, Client, ClientOpts, Launch,
    ScriptRun,
};
pub use gateway::{Gateway, GatewayConfig, HttpReply, LaunchInfo, Launcher};
pub use metrics::metric_value;
pub use topology::{Topology, CORP_ADDR, CORP_ADDR6, GW_DEVICE_ADDR};
pub use wait::{wait_for, wait_until};

/// The Prometheus text of the gateway's /metrics (read with curl inside the gateway namespace).
pub fn metrics(gw: &Gateway) -> anyhow::Result<String> {
    gw.metrics()
}
