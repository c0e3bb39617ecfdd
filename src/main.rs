//! The shadowgate binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shadowgate: serve from v1, mirror to v2, compare, promote.
#[derive(Debug, Parser)]
#[command(name = "shadowgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bench backend: a small fast HTTP server for benchmarks.
    BenchBackend(shadowgate::bench_backend::BenchBackendArgs),
    /// Validate configuration files; exit 0, or 2 with one line per problem.
    Check {
        /// Configuration file (YAML); may be given several times.
        #[arg(long, short, required = true)]
        config: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::BenchBackend(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match rt.map(|rt| rt.block_on(shadowgate::bench_backend::run(args))) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) | Err(e) => {
                    eprintln!("bench-backend: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match shadowgate::config::load_files(&config) {
            Ok(c) => {
                println!("ok: {}", shadowgate::config::load::summary(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
    }
}
