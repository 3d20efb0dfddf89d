//! Migration channels for vmstream: where a migration's bytes go and how the
//! connections of one migration find each other. This crate moves bytes and
//! never interprets them.

#![forbid(unsafe_code)]
