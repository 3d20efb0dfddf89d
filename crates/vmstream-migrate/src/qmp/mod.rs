//! A QMP-shaped control protocol: QEMU's Machine Protocol as QEMU speaks it,
//! so that scripts written for QEMU's migration commands work unchanged.
//!
//! ```text
//! client                                   server
//!   |  <- {"QMP": {"version": ..., "capabilities": []}}      greeting
//!   |  -> {"execute": "qmp_capabilities"}                    negotiation mode:
//!   |  <- {"return": {}}                                     only this command
//!   |  -> {"execute": "migrate", "arguments": {...}, "id": 1}
//!   |  <- {"return": {}, "id": 1}                            command mode
//!   |  <- {"timestamp": {...}, "event": "MIGRATION", "data": {"status": "active"}}
//! ```
//!
//! Layers, each usable alone:
//!
//! - [`Splitter`]: bytes in any split to JSON values, bounded by [`QmpLimits`],
//!   resynchronising after malformed input as QEMU does.
//! - [`Request`], [`Session`], [`Handler`], [`Event`]: the I/O-free protocol:
//!   request checks, negotiation, built-in commands, responses and events.
//! - QEMU's migration types and commands with QEMU's names, JSON shapes,
//!   defaults and checks ([`MigrationInfo`], [`MigrationParameters`],
//!   [`MigrateArgs`], ...); an engine implements
//!   [`MigrationControl`] and is served by [`MigrationCommands`].
//! - [`QmpServer`] on a unix socket, with [`Events`] to broadcast, and the
//!   blocking [`QmpClient`].
//!
//! Errors sent to clients are [`QmpError`]s, worded as QEMU words them
//! ("Parameter 'x' is unexpected", "The command x has not been found").

mod args;
mod client;
mod error;
mod json;
mod migration;
mod protocol;
mod server;

pub use client::{ClientError, QmpClient};
pub use error::{ErrorClass, QmpError};
pub use json::{InputError, Message, QmpLimits, Splitter};
pub use migration::{
    capabilities_from_args, dispatch_migration, migration_event_data, MigrateArgs,
    MigrateIncomingArgs, MigrationCapability, MigrationCapabilityStatus, MigrationCommands,
    MigrationControl, MigrationInfo, MigrationParameters, MigrationStats, MigrationStatus,
    MigrationTarget, MultiFdCompression, SetMigrationParameters, MAX_DOWNTIME_LIMIT,
    MIGRATION_COMMANDS,
};
pub use protocol::{
    error_response, greeting, ok_response, version, Event, Handler, Request, RequestError, Session,
    BUILTIN_COMMANDS, MAX_PENDING_FDS,
};
pub use server::{Events, QmpServer, ServerConfig};
