//! The server under test: the release `eloquent` binary in its own process,
//! plus what `/proc` says about it (RSS, peak RSS, CPU time, open files).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A running server process.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// What the server's allocator reports, KiB.
#[derive(Debug, Clone, Copy)]
pub struct AllocatorStats {
    /// Bytes the program holds.
    pub allocated_kib: u64,
    /// Pages of the slabs and extents in use: `allocated` plus the free
    /// space inside them (fragmentation).
    pub active_kib: u64,
    /// The allocator's own bookkeeping (never given back).
    pub metadata_kib: u64,
    /// Pages the allocator keeps mapped and resident (includes all of the above).
    pub resident_kib: u64,
}

/// A snapshot of the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size since start or the last [`Server::reset_peak`], KiB.
    pub hwm_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// The server binary next to the bench binary (same cargo profile).
pub fn server_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
    let dir = exe.parent().ok_or("bench binary has no directory")?;
    let server = dir.join("eloquent");
    if !server.is_file() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release --bins`",
            server.display()
        ));
    }
    Ok(server)
}

/// Warns when sources are newer than the server binary (it would measure old code).
pub fn stale_sources(server: &Path) -> Vec<PathBuf> {
    let Ok(built) = std::fs::metadata(server).and_then(|meta| meta.modified()) else {
        return Vec::new();
    };
    let root = Path::new(crate::ROOT);
    let mut newer = Vec::new();
    let mut dirs = vec![root.join("src"), root.join("migrations")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                // The bench's own sources do not change the server.
                if path != root.join("src/bin") {
                    dirs.push(path);
                }
            } else if modified(&path).is_some_and(|time| time > built) {
                newer.push(path);
            }
        }
    }
    newer
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| format!("free port: {err}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| err.to_string())
}

impl Server {
    /// Starts the server with exactly `env` (nothing inherited but `PATH`),
    /// working in `dir` (so no `.env` file is picked up), and waits for `/health`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let port = free_port()?;
        let log = dir.join("server.log");
        let log_file =
            std::fs::File::create(&log).map_err(|err| format!("create server log: {err}"))?;
        let log_err = log_file
            .try_clone()
            .map_err(|err| format!("server log: {err}"))?;
        let mut command = Command::new(binary);
        command
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .map_err(|err| format!("start {}: {err}", binary.display()))?;
        let server = Self {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/health", self.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!(
                    "server did not become healthy in 30 s; log:\n{log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> ProcStats {
        proc_stats(self.pid).unwrap_or_default()
    }

    /// Resets the peak RSS (`VmHWM`) so the next reading is the peak of what follows.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// The allocator's statistics (KiB), from the log line the server writes
    /// on SIGUSR1: what it holds against what it keeps resident.
    pub async fn allocator_stats(&self) -> Option<AllocatorStats> {
        let count = |text: &str| text.matches("memory statistics").count();
        let before = count(&std::fs::read_to_string(&self.log).unwrap_or_default());
        Command::new("kill")
            .args(["-USR1", &self.pid.to_string()])
            .status()
            .ok()?;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if count(&text) > before {
                let line = strip_ansi(
                    text.lines()
                        .rev()
                        .find(|line| line.contains("memory statistics"))?,
                );
                let field = |name: &str| -> Option<u64> {
                    let rest = line.split_once(&format!("{name}="))?.1;
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                };
                return Some(AllocatorStats {
                    allocated_kib: field("allocated_kib")?,
                    active_kib: field("active_kib")?,
                    metadata_kib: field("metadata_kib")?,
                    resident_kib: field("resident_kib")?,
                });
            }
        }
        None
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 35 s.
    pub async fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(35);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("exited: {status}"),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "killed after 35 s".to_string();
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A note on the server's WARN and ERROR log lines: how many, and the
/// messages of the most frequent ones (timestamps and fields stripped).
pub fn log_warnings(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for line in text.lines() {
        let line = strip_ansi(line);
        let Some((level, rest)) = ["WARN", "ERROR"]
            .iter()
            .find_map(|level| line.split_once(level).map(|(_, rest)| (*level, rest)))
        else {
            continue;
        };
        // `target: message field=value ...`; numbers become N so lines group.
        let message = rest
            .trim()
            .split_once(": ")
            .map_or(rest, |(_, message)| message);
        let mut grouped = String::new();
        for c in message.chars() {
            if c.is_ascii_digit() {
                if !grouped.ends_with('N') {
                    grouped.push('N');
                }
            } else {
                grouped.push(c);
            }
        }
        let grouped: String = grouped.trim().chars().take(200).collect();
        *counts.entry(format!("{level} {grouped}")).or_default() += 1;
    }
    if counts.is_empty() {
        return Some("The server logged no warnings or errors.".into());
    }
    let total: usize = counts.values().sum();
    let mut frequent: Vec<_> = counts.into_iter().collect();
    frequent.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let top = frequent
        .iter()
        .take(5)
        .map(|(message, count)| format!("{count} × `{message}`"))
        .collect::<Vec<_>>()
        .join("; ");
    Some(format!("The server logged {total} warnings/errors: {top}."))
}

/// Drops terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// USER_HZ, the unit of CPU times in `/proc/<pid>/stat` (100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // stat(5): utime is field 14 and stime 15; fields[0] is field 3.
    let ticks = field(11) + field(12);
    Some(ProcStats {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_secs: ticks as f64 / clock_ticks(),
    })
}
