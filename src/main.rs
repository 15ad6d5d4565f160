//! The `eloquent` server binary. `eloquent migrate` applies migrations and exits.

use std::process::ExitCode;

use eloquent::startup::{self, Application};
use eloquent::{Config, telemetry};

// glibc malloc keeps freed memory in per-thread arenas, so RSS stays near its
// peak after a burst of streams; jemalloc returns it (settings in .cargo/config.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(config.log_format);
    let result = match std::env::args().nth(1).as_deref() {
        Some("migrate") => startup::open_database(&config).await.map(|_| {
            tracing::info!("migrations applied");
        }),
        None | Some("serve") => match Application::build(config).await {
            Ok(app) => app
                .run_until_stopped(startup::shutdown_signal())
                .await
                .map_err(|err| startup::StartupError::Init(err.to_string())),
            Err(err) => Err(err),
        },
        Some(other) => {
            eprintln!("unknown command {other:?}: use `eloquent` (serve) or `eloquent migrate`");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
