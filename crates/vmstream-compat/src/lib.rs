//! Versioned device state: schemas of device types at each version
//! ([`schema`]), a static checker that compares two schemas and says what
//! breaks migration in each direction ([`diff`]), and transforms between
//! versions, declared in Rust or in TOML rules files ([`transform`],
//! [`rules`]), applied to vmstream and QEMU streams ([`stream`]).

#![forbid(unsafe_code)]

pub mod diff;
pub mod rules;
pub mod schema;
pub mod stream;
pub mod transform;

pub use schema::{DeviceSchema, Field, Schema, Source, StructTy, Ty};
pub use transform::{Op, Registry, Scalar, Step};
