//! Logging setup, installed once per process.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static INIT: Once = Once::new();

/// Installs the global subscriber (`RUST_LOG` filters; default `info`).
pub fn init(format: LogFormat) {
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let installed = match format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        if let Err(err) = installed {
            eprintln!("logging already initialised: {err}");
        }
    });
}
