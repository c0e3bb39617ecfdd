//! The shadowgate binary: parses the command line, sets up the runtime and
//! logging, and hands over to the library. Exit codes: 0 success, 1
//! runtime failure, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shadowgate::app::{self, StartOptions};
use shadowgate::telemetry::{init_logging, LogFormat};

/// shadowgate: serve from v1, mirror to v2, compare, promote.
#[derive(Debug, Parser)]
#[command(name = "shadowgate", version, about, long_about = None)]
struct Cli {
    /// Log format for diagnostics (stderr) and the access log (stdout).
    #[arg(long, global = true, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    ///
    /// SIGHUP or a change of a config file reloads the configuration (an
    /// invalid one is rejected and the old one keeps serving); SIGTERM or
    /// Ctrl-C stops accepting, drains in-flight requests and exits 0.
    Run {
        /// Configuration file (YAML); may be given several times, the files merge.
        #[arg(long, short, required = true)]
        config: Vec<PathBuf>,
    },
    /// Validate configuration files; exit 0, or 2 with one line per problem.
    Check {
        /// Configuration file (YAML); may be given several times.
        #[arg(long, short, required = true)]
        config: Vec<PathBuf>,
    },
    /// Print the native configuration equivalent to Istio / Gateway API
    /// manifests (and any native files given with them).
    Convert {
        /// Manifest or config files (YAML, multi-document).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The seeds' walkthrough on one machine: sample apps v1 and v2, the
    /// proxy routing my-app.local to v1 and mirroring 100% to v2.
    Demo(shadowgate::demo::DemoArgs),
    /// Show each route's primary and mirrors side by side: request rate,
    /// errors, latency percentiles, dropped and failed mirrors, diff rate.
    Status {
        /// Admin server address, e.g. http://127.0.0.1:9901
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Admin token (or SHADOWGATE_ADMIN_TOKEN).
        #[arg(long, env = "SHADOWGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Window: 1m, 5m or 15m.
        #[arg(long, default_value = "1m", value_parser = ["1m", "5m", "15m"])]
        window: String,
    },
    /// Run the bench backend: a small fast HTTP server for benchmarks.
    BenchBackend(shadowgate::bench_backend::BenchBackendArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.workers {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadowgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
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
        Command::Convert { files } => match shadowgate::config::kube::convert_files(&files) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let loaded = match shadowgate::config::load_files(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cli.log_format);
            exit(rt.block_on(run(loaded, cli.log_format)))
        }
        Command::Demo(args) => {
            init_logging(cli.log_format);
            exit(rt.block_on(demo(args, cli.log_format)))
        }
        Command::Status {
            admin,
            token,
            window,
        } => exit(rt.block_on(async {
            let stats: shadowgate::admin::api::StatsResponse = shadowgate::admin::client::call(
                &admin,
                token.as_deref(),
                http::Method::GET,
                "/api/v1/stats",
                None,
            )
            .await?;
            print!("{}", shadowgate::admin::status::render(&stats, &window));
            Ok(())
        })),
        Command::BenchBackend(args) => exit(
            rt.block_on(shadowgate::bench_backend::run(args))
                .context("bench-backend"),
        ),
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: shadowgate::config::Config, log_format: LogFormat) -> anyhow::Result<()> {
    let running = app::start(config, StartOptions { log_format }).await?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = running.reload();
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

async fn demo(args: shadowgate::demo::DemoArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let running = shadowgate::demo::start(&args, log_format)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.shutdown().await;
    Ok(())
}
