//! Logging setup, installed once per process.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static INIT: Once = Once::new();

/// Installs the global subscriber (`RUST_LOG` filters; default `info`),
/// logging to stdout, as a server does.
pub fn init(format: LogFormat) {
    install(format, false);
}

/// The same, logging to stderr: for commands whose stdout is their answer
/// (`eloquent kb search --json`).
pub fn init_to_stderr(format: LogFormat) {
    install(format, true);
}

fn install(format: LogFormat, to_stderr: bool) {
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let installed = match (format, to_stderr) {
            (LogFormat::Text, false) => builder.try_init(),
            (LogFormat::Json, false) => builder.json().try_init(),
            (LogFormat::Text, true) => builder.with_writer(std::io::stderr).try_init(),
            (LogFormat::Json, true) => builder.json().with_writer(std::io::stderr).try_init(),
        };
        if let Err(err) = installed {
            eprintln!("logging already initialised: {err}");
        }
    });
}
