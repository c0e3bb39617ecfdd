//! A small, fast HTTP server used as v1/v2 in benchmarks (`shadowgate bench-backend`).
//! (Being written: see the benchmarks issue.)

/// Options of `shadowgate bench-backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchBackendArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    pub listen: String,
}

/// Runs the bench backend until the process ends.
pub async fn run(_args: BenchBackendArgs) -> std::io::Result<()> {
    Ok(())
}
