//! `lookalike`: parse arguments, set up logging and config, dispatch. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use lookalike::cli::{self, Cli};
use lookalike::config::Config;

fn main() -> ExitCode {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "lookalike=info,warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: bad configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match cli::run(args.command, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
