//! Logging setup, installed once per process.

use std::ffi::OsString;
use std::io::IsTerminal;
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
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour(terminal, std::env::var_os("NO_COLOR")));
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

/// Colour codes only for a person at a terminal: never in a file, a pipe,
/// Docker's or systemd's log, and never when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsString::new())));
        assert!(!colour(true, Some(OsString::from("1"))));
        assert!(!colour(false, None));
    }
}
