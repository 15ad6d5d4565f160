//! The `eloquent` server binary: `eloquent [serve]` serves; `eloquent migrate
//! [--dry-run]` applies migrations, adopts the Python service's tables and
//! exits; `eloquent kb ...` manages the knowledge base; `eloquent webhooks
//! ...` the webhook outbox.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use eloquent::startup::{self, Application};
use eloquent::{Config, telemetry};

// glibc malloc keeps freed memory in per-thread arenas, so RSS stays near its
// peak after a burst of streams; jemalloc returns it (settings in .cargo/config.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Fintech customer-support chat backend (HTTP, SSE and WebSocket).
#[derive(Parser)]
#[command(name = "eloquent", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply migrations and adopt the Python service's tables, then exit.
    Migrate {
        /// Report what would be adopted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The knowledge base answers are drawn from.
    #[command(subcommand)]
    Kb(eloquent::cli::KbCommand),
    /// The webhook outbox: list events, send given-up ones again.
    #[command(subcommand)]
    Webhooks(eloquent::cli::WebhooksCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let migrate_dry_run = match cli.command {
        Some(Command::Kb(command)) => {
            telemetry::init_to_stderr(config.log_format);
            return eloquent::cli::kb(command, config).await;
        }
        Some(Command::Webhooks(command)) => {
            telemetry::init_to_stderr(config.log_format);
            return eloquent::cli::webhooks(command, config).await;
        }
        Some(Command::Migrate { dry_run }) => Some(dry_run),
        None | Some(Command::Serve) => None,
    };
    telemetry::init(config.log_format);
    tokio::spawn(log_memory_on_sigusr1());
    let result = match migrate_dry_run {
        Some(true) => startup::adoption_dry_run(&config).await.map(|outcome| {
            println!("dry run, nothing changed: {outcome}");
        }),
        Some(false) => startup::open_database(&config).await.map(|_| {
            tracing::info!("migrations applied");
        }),
        None => match Application::build(config).await {
            Ok(app) => app
                .run_until_stopped(startup::shutdown_signal())
                .await
                .map_err(|err| startup::StartupError::Init(err.to_string())),
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// `kill -USR1 <pid>` logs the allocator's view of memory: what the program
/// holds (`allocated`) against what it keeps resident, so an operator can
/// tell a leak from memory held for reuse.
async fn log_memory_on_sigusr1() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut signals) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("SIGUSR1 handler not installed: memory statistics unavailable");
        return;
    };
    while signals.recv().await.is_some() {
        match memory_stats() {
            Ok(stats) => tracing::info!(
                allocated_kib = stats.allocated / 1024,
                active_kib = stats.active / 1024,
                resident_kib = stats.resident / 1024,
                metadata_kib = stats.metadata / 1024,
                retained_kib = stats.retained / 1024,
                "memory statistics"
            ),
            Err(err) => tracing::warn!(error = %err, "memory statistics unavailable"),
        }
    }
}

/// jemalloc's counters, in bytes.
struct MemoryStats {
    allocated: usize,
    active: usize,
    resident: usize,
    metadata: usize,
    retained: usize,
}

/// The allocator's counters, freshly sampled.
fn memory_stats() -> Result<MemoryStats, tikv_jemalloc_ctl::Error> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance()?;
    Ok(MemoryStats {
        allocated: stats::allocated::read()?,
        active: stats::active::read()?,
        resident: stats::resident::read()?,
        metadata: stats::metadata::read()?,
        retained: stats::retained::read()?,
    })
}
