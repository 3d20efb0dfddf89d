//! Integration tests of vmstream-transport, over loopback TCP, Unix sockets
//! and files in temporary directories only.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns drive known-good peers

mod address;
mod oneway;
mod sets;
mod tls;
mod util;
