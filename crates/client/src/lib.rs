//! A Rust client of the AnyConnect protocol, built on `tunnel-proto`.
//!
//! Not yet implemented: the capacity harness issue builds it. It exists so the workspace layout is
//! final and the harness has a home.
