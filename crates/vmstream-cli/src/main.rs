//! `vmstream`: inspect, check, convert and compare VM migration streams.
//!
//! A thin binary over the library crates: flags are parsed by `args`, each
//! subcommand lives in its own module, and only this crate knows `clap` and
//! `anyhow`. Its only `unsafe` code is the file mapping in `mapped`.

#![deny(unsafe_code)]

mod aligned;
mod args;
mod compat;
mod convert;
mod decode;
mod diff;
mod guest;
mod input;
mod inspect;
mod mapped;
mod progress;
mod relay;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let _ = std::io::stdout().flush();
            eprintln!("vmstream: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    use args::Command;
    let opts = input::Opts {
        limits: cli.limits(),
        vmdesc: cli.vmdesc.clone(),
        channels: cli.channels.clone(),
        arch: cli.arch,
    };
    let opts = &opts;
    match cli.command {
        Command::Inspect(a) => inspect::inspect(&a, opts),
        Command::Dump(a) => inspect::dump(&a, opts),
        Command::Verify(a) => inspect::verify(&a, opts),
        Command::Decode(a) => decode::decode(&a, opts),
        Command::Encode(a) => decode::encode(&a, opts),
        Command::Extract(a) => decode::extract(&a, opts),
        Command::Diff(a) => diff::diff(&a, opts),
        Command::Convert(a) => convert::convert(&a, opts),
        Command::Guest(a) => guest::guest(&a),
        Command::Schema(a) => compat::schema(&a, opts),
        Command::SchemaDiff(a) => compat::schema_diff(&a, opts),
        Command::Transform(a) => compat::transform(&a, opts),
        Command::Relay(a) => relay::relay(&a, opts.limits),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
