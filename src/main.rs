//! The shadowgate binary: parses the command line, sets up the runtime and
//! logging, and hands over to the library. Exit codes: 0 success, 1
//! runtime failure, 2 bad configuration or usage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shadowgate::app::{self, StartOptions};
use shadowgate::telemetry::{init_logging, LogFormat};

mod tools;

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
    /// Ctrl-C marks it not ready, keeps serving for `shutdown_delay` (a
    /// second one skips the rest), stops accepting, drains in-flight
    /// requests and exits 0.
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
    Demo(tools::demo::DemoArgs),
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
    /// Show what differs between primaries and mirrors, per endpoint and field.
    Diffs {
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Promote a route's mirror to primary (refused unless its gates pass, or --force).
    Promote {
        /// Route name.
        route: String,
        /// The mirror to promote (default: the route's candidate).
        #[arg(long)]
        to: Option<String>,
        /// Promote even when the gates do not pass.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Roll a promoted route back to its configured primary.
    Rollback {
        /// Route name.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run the bench backend: a small fast HTTP server for benchmarks.
    BenchBackend(tools::bench_backend::BenchBackendArgs),
    /// Send recorded requests to a build and judge its answers against the
    /// recorded ones (docs/replay.md). Exit 0 pass, 1 over a threshold, 2
    /// usage or input error.
    Replay(Box<ReplayArgs>),
    /// Work with recordings (docs/replay.md).
    #[command(subcommand)]
    Record(RecordCommand),
}

#[derive(Debug, Subcommand)]
enum RecordCommand {
    /// Write a recording (JSON lines, plain or zstd) as a HAR 1.2 file;
    /// exit 0, 1 when OUT cannot be written, 2 when FILE cannot be read.
    Export {
        /// The recording.
        file: PathBuf,
        /// The HAR file to write.
        #[arg(long, required = true, value_name = "OUT")]
        har: PathBuf,
    },
}

/// `shadowgate replay FILE --target URL`.
#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The recording: JSON lines (plain or zstd) or a HAR 1.2 file.
    file: PathBuf,
    /// The build under test, http://HOST:PORT[/PREFIX].
    #[arg(long)]
    target: String,
    /// A second instance of the recorded version: what differs there too is noise.
    #[arg(long)]
    secondary: Option<String>,
    /// Exchanges in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Requests a second (instead of --speed).
    #[arg(long, conflicts_with = "speed", value_parser = shadowgate::replay::parse_rate)]
    rate: Option<f64>,
    /// Recorded pacing scaled: 1x, 2x, 0.5x, or max (as fast as allowed).
    #[arg(long, default_value = "max", value_parser = shadowgate::replay::parse_speed)]
    speed: shadowgate::replay::Pace,
    /// Send at most N exchanges.
    #[arg(long)]
    limit: Option<u64>,
    /// Only exchanges with route=NAME, method=GET or path=/items/* (repeatable;
    /// different keys must all hold, one of several of the same key).
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<shadowgate::replay::Filter>,
    /// Time for each answer, head and body.
    #[arg(long, default_value = "10s", value_parser = shadowgate::replay::parse_timeout)]
    timeout: std::time::Duration,
    /// Send the target's authority as Host instead of the recorded Host.
    #[arg(long)]
    target_host: bool,
    /// For https:// targets: trust the CA certificates in this PEM file
    /// instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// For https:// targets: accept any certificate (a build with a
    /// self-signed one); the traffic is still encrypted.
    #[arg(long, conflicts_with = "ca_file")]
    insecure: bool,
    /// A header set on every request, replacing a recorded one of the same name (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Answer bodies kept for comparison; longer ones compare status and headers only.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_body_bytes: u64,
    /// A shadowgate config: compare rules, endpoints, noise and redact of the routes of the same names.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Write each route's report as JSON (the shape of /api/v1/diffs/{route});
    /// `{route}` in the path is replaced by the route's name.
    #[arg(long)]
    report: Option<String>,
    /// Exit 1 when the diff rate (percent) is above this.
    #[arg(long)]
    max_diff_rate: Option<f64>,
    /// Exit 1 when the error rate (percent) is above this.
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// Serve the target's outbound calls (sent through this address as its
    /// HTTP proxy, or to it with Host) from the recorded ones; calls the
    /// recording lacks get 503. With --config, its `egress.services` name them.
    #[arg(long, value_name = "ADDR")]
    egress_listen: Option<std::net::SocketAddr>,
    /// With --egress-listen: exit 1 when more than N outbound calls differ
    /// from the recording (calls it lacks plus recorded calls not made).
    #[arg(long, value_name = "N", requires = "egress_listen")]
    max_call_diffs: Option<u64>,
}

fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected NAME: VALUE"))?;
    let name =
        http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| format!("`{s}`: {e}"))?;
    let value = http::HeaderValue::from_str(value.trim()).map_err(|e| format!("`{s}`: {e}"))?;
    Ok((name, value))
}

fn parse_size(s: &str) -> Result<u64, String> {
    shadowgate::config::units::parse_size(&shadowgate::config::raw::RawSize::Text(s.to_string()))
}

/// Where the admin server is.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// Admin server address, e.g. http://127.0.0.1:9901
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// Admin token (or SHADOWGATE_ADMIN_TOKEN).
    #[arg(long, env = "SHADOWGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists (see `process`).
    let fds = shadowgate::process::prepare_file_descriptors(shadowgate::process::FD_TABLE_SLOTS);
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
                // `run` opens the store first thing: a store it cannot open
                // (e.g. a read-only directory) fails `check` just the same.
                if let Err(e) = shadowgate::store::Store::open(&c.store) {
                    eprintln!("{e} (set `store:` to a writable file path, or `store: memory`)");
                    return ExitCode::from(2);
                }
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
            log_fd_setup(fds);
            let result = rt.block_on(run(loaded, cli.log_format));
            // A reload stuck reading a file (a hung mount) must not keep
            // the process from exiting after the drain.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                // A store that cannot be opened is a configuration problem.
                Err(e)
                    if matches!(
                        e.downcast_ref::<app::StartError>(),
                        Some(app::StartError::Store(_))
                    ) =>
                {
                    eprintln!("shadowgate: {e:#} (set `store:` to a writable file path, or `store: memory`)");
                    ExitCode::from(2)
                }
                result => exit(result),
            }
        }
        Command::Demo(args) => {
            init_logging(cli.log_format);
            log_fd_setup(fds);
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
            let process: Result<shadowgate::admin::api::StatusResponse, _> =
                shadowgate::admin::client::call(
                    &admin,
                    token.as_deref(),
                    http::Method::GET,
                    "/api/v1/status",
                    None,
                )
                .await;
            if let Some(line) = process
                .ok()
                .as_ref()
                .and_then(shadowgate::admin::status::render_restart_pending)
            {
                println!("{line}");
            }
            for route in &stats.routes {
                let path = format!("/api/v1/routes/{}/promotion", route.route);
                let promotion: Result<shadowgate::promote::ops::PromotionStatus, _> =
                    shadowgate::admin::client::call(
                        &admin,
                        token.as_deref(),
                        http::Method::GET,
                        &path,
                        None,
                    )
                    .await;
                if let Ok(p) = promotion {
                    println!("{}", shadowgate::admin::status::render_promotion(&p));
                }
            }
            Ok(())
        })),
        Command::Diffs { route, admin } => exit(rt.block_on(async {
            use shadowgate::admin::client::call;
            let token = admin.token.as_deref();
            let routes = match route {
                Some(r) => vec![r],
                None => {
                    let totals: shadowgate::admin::diffs::DiffTotals = call(
                        &admin.admin,
                        token,
                        http::Method::GET,
                        "/api/v1/diffs",
                        None,
                    )
                    .await?;
                    let mut names: Vec<String> =
                        totals.routes.into_iter().map(|t| t.route).collect();
                    names.dedup();
                    names
                }
            };
            for r in routes {
                let path = format!("/api/v1/diffs/{r}");
                let report: shadowgate::diff::RouteReport =
                    call(&admin.admin, token, http::Method::GET, &path, None).await?;
                print!(
                    "{}",
                    shadowgate::diff::render_route(
                        &r,
                        &report,
                        &shadowgate::diff::ReportOptions::default()
                    )
                );
            }
            Ok(())
        })),
        Command::Promote {
            route,
            to,
            force,
            admin,
        } => exit(rt.block_on(async {
            let body = serde_json::json!({ "to": to, "force": force });
            let path = format!("/api/v1/routes/{route}/promote");
            let s: shadowgate::promote::ops::PromotionStatus = shadowgate::admin::client::call(
                &admin.admin,
                admin.token.as_deref(),
                http::Method::POST,
                &path,
                Some(body),
            )
            .await?;
            println!(
                "route {}: {} now answers {}% of traffic (state {})",
                s.route, s.candidate, s.share, s.state
            );
            Ok(())
        })),
        Command::Rollback { route, admin } => exit(rt.block_on(async {
            let path = format!("/api/v1/routes/{route}/rollback");
            let s: shadowgate::promote::ops::PromotionStatus = shadowgate::admin::client::call(
                &admin.admin,
                admin.token.as_deref(),
                http::Method::POST,
                &path,
                None,
            )
            .await?;
            println!("route {}: rolled back; {} is primary", s.route, s.primary);
            Ok(())
        })),
        Command::Replay(args) => rt.block_on(replay(*args)),
        Command::BenchBackend(args) => exit(
            rt.block_on(tools::bench_backend::run(args))
                .context("bench-backend"),
        ),
        Command::Record(RecordCommand::Export { file, har }) => {
            use shadowgate::record::export::ExportError;
            match shadowgate::record::export_har(&file, &har) {
                Ok(s) => {
                    eprintln!("wrote {} entries to {}", s.entries, har.display());
                    if s.unreadable > 0 {
                        eprintln!("left out {} unreadable records:", s.unreadable);
                        for e in &s.examples {
                            eprintln!("  {e}");
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e @ ExportError::Write { .. }) => {
                    eprintln!("shadowgate: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("shadowgate: {e}");
                    ExitCode::from(2)
                }
            }
        }
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

fn log_fd_setup(fds: shadowgate::process::FdSetup) {
    let soft = fds
        .soft_limit
        .map_or("unlimited".to_string(), |l| l.to_string());
    if fds.table_slots == 0 {
        tracing::warn!(soft_limit = %soft, "could not pre-size the file descriptor table");
    } else {
        tracing::debug!(soft_limit = %soft, table_slots = fds.table_slots, "file descriptors ready");
    }
}

async fn run(config: shadowgate::config::Config, log_format: LogFormat) -> anyhow::Result<()> {
    // Handlers first: "serving" is logged inside `start`, and a SIGTERM or
    // SIGHUP right after it must drain or reload, not kill the process.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let running = app::start(config, StartOptions { log_format }).await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                // In the background: SIGTERM is still heard while a
                // reload reads files.
                drop(running.reload_in_background());
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: not ready; draining in-flight requests after shutdown_delay");
    // A second SIGTERM or Ctrl-C skips the rest of `shutdown_delay`.
    let again = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    running.shutdown_or_skip(again).await;
    Ok(())
}

/// Runs a replay: 0 pass, 1 over a threshold, 2 usage or input error.
async fn replay(args: ReplayArgs) -> ExitCode {
    use std::io::IsTerminal;
    let config = match &args.config {
        Some(path) => match shadowgate::config::load_files(std::slice::from_ref(path)) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    for (flag, value) in [
        ("--max-diff-rate", args.max_diff_rate),
        ("--max-error-rate", args.max_error_rate),
    ] {
        if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            eprintln!("shadowgate: {flag}: expected a percentage, 0 or more");
            return ExitCode::from(2);
        }
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let progress = bar.clone().map(|bar| {
        Box::new(move |p: &shadowgate::replay::Progress| {
            bar.set_message(format!(
                "judged {}, answered {}, errors {}",
                p.judged, p.answered, p.errors
            ));
        }) as shadowgate::replay::ProgressFn
    });
    let options = shadowgate::replay::Options {
        file: args.file,
        target: args.target,
        secondary: args.secondary,
        concurrency: usize::from(args.concurrency),
        pace: args.rate.map_or(args.speed, shadowgate::replay::Pace::Rate),
        limit: args.limit,
        filters: args.filters,
        send: shadowgate::replay::SendOptions {
            target_host: args.target_host,
            timeout: args.timeout,
            max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
            headers: args.headers,
            tls: shadowgate::replay::TlsOptions {
                ca_file: args.ca_file,
                insecure: args.insecure,
            },
        },
        config,
        progress,
        egress_listen: args.egress_listen.map(|addr| {
            let ready: shadowgate::replay::EgressReadyFn = Box::new(|bound| {
                eprintln!("shadowgate replay: egress listening on {bound}");
            });
            (addr, Some(ready))
        }),
    };
    let result = shadowgate::replay::run(options).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shadowgate: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", shadowgate::replay::render(&summary));
    if let Some(template) = &args.report {
        match shadowgate::replay::write_reports(&summary, template) {
            Ok(paths) => {
                for p in paths {
                    println!("report: {}", p.display());
                }
            }
            Err(e) => {
                eprintln!("shadowgate: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let failures = summary.failures(&shadowgate::replay::Gate {
        max_diff_rate: args.max_diff_rate,
        max_error_rate: args.max_error_rate,
        max_call_diffs: args.max_call_diffs,
    });
    if failures.is_empty() {
        println!("pass");
        ExitCode::SUCCESS
    } else {
        for f in failures {
            println!("FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}

async fn demo(args: tools::demo::DemoArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let running = tools::demo::start(&args, log_format)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.shutdown().await;
    Ok(())
}
