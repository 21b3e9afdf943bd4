//! `bouncer`: command-line wiring of the admin service and the operator tools.
//!
//! Each subcommand loads the configuration, builds what it needs and hands
//! over to a library crate; no product logic lives here.
#![forbid(unsafe_code)]

mod cli;
mod echo;
mod logging;
mod signal;
mod up;

use std::process::ExitCode;

use clap::Parser;

// pingora allocates and frees several buffers per proxied request; glibc's
// malloc spent ~17 % of the gateway's CPU on them (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Alternate form prints the whole context chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
