//! Live migration over vmstream channels: an I/O-free protocol core, a driver
//! that owns threads, sockets and clocks, and a QMP-shaped control server.

#![forbid(unsafe_code)]
