//! Shared helpers for the end-to-end tests (topology in network namespaces, openconnect runner).
