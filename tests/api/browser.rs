//! A real browser's `EventSource` (Chromium, headless) resuming a turn after
//! its connection is cut mid-answer: it reconnects by itself with
//! `Last-Event-ID` and ends with exactly the stored answer, nothing missing
//! and nothing twice (contract section 14).
//!
//! Skipped when no Chromium is installed, unless `EXPECT_BROWSER=1` (CI
//! installs Debian's `chromium` and sets it).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

use crate::fakes::Behaviour;
use crate::helpers::spawn_app_with;

/// The browser binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A TCP proxy in front of the server that cuts its first connection once
/// `cut_after` SSE events (blank-line separated blocks) have gone through,
/// and records the requests of every connection.
struct CuttingProxy {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl CuttingProxy {
    async fn start(server_port: u16, cut_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, counted) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", server_port)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let upstream = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        let mut request = Vec::new();
                        let mut recorded = false;
                        loop {
                            let n = client_read.read(&mut buffer).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            if !recorded {
                                request.extend_from_slice(&buffer[..n]);
                                if request.windows(4).any(|w| w == b"\r\n\r\n") {
                                    let head = String::from_utf8_lossy(&request).into_owned();
                                    seen.lock().await.push(head);
                                    recorded = true;
                                }
                            }
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let downstream = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        let mut events = 0;
                        loop {
                            let n = server_read.read(&mut buffer).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            if client_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            events += buffer[..n].windows(2).filter(|w| w == b"\n\n").count();
                            if first && events >= cut_after {
                                break; // the connection drops mid-answer
                            }
                        }
                    };
                    tokio::select! {
                        () = upstream => {}
                        () = downstream => {}
                    }
                });
            }
        });
        Self {
            port,
            requests,
            connections,
        }
    }
}

const PAGE: &str = r#"<!doctype html>
<html><body><script>
const seqs = [];
let text = "";
let opens = 0;
const source = new EventSource("SOURCE");
source.onopen = () => { opens += 1; };
source.onmessage = (event) => {
  seqs.push(event.lastEventId);
  text += JSON.parse(event.data).delta;
};
source.addEventListener("done", (event) => {
  seqs.push(event.lastEventId);
  source.close();
  fetch("/result", {
    method: "POST",
    body: JSON.stringify({ seqs, text, opens, done: JSON.parse(event.data) }),
  });
});
</script></body></html>"#;

#[tokio::test]
async fn a_browser_event_source_cut_mid_answer_reconnects_and_ends_with_the_stored_text() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("EXPECT_BROWSER").is_err(),
            "EXPECT_BROWSER is set but no Chromium is installed"
        );
        eprintln!("no Chromium installed: skipping the browser test");
        return;
    };
    let app = spawn_app_with(&[("STREAM_RESUME_GRACE_SECS", "30")]).await;
    app.openai.behave(Behaviour::Tokens {
        tokens: (0..100).map(|i| format!(" t{i}")).collect(),
        delay: Duration::from_millis(40),
    });
    // The turn starts on a connection that goes away at once.
    let started = app
        .open_stream(&json!({"message": "Tell me everything"}), None)
        .await;
    let turn_id = started.headers()["x-turn-id"]
        .to_str()
        .expect("turn id")
        .to_string();
    drop(started);

    // The browser follows it through a proxy that cuts its first connection
    // after a few events.
    let proxy = CuttingProxy::start(app.port, 5).await;
    let page = PAGE.replace(
        "SOURCE",
        &format!("http://127.0.0.1:{}/api/chat/stream/{turn_id}", proxy.port),
    );
    let (results, mut result) = mpsc::channel::<String>(1);
    let site = axum::Router::new()
        .route(
            "/page",
            get(move || async move { axum::response::Html(page) }),
        )
        .route(
            "/result",
            post(move |body: String| async move {
                let _ = results.send(body).await;
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let site_port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, site).await });
    let profile = tempfile::tempdir().expect("profile dir");
    let mut browser = tokio::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{site_port}/page"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let reported = tokio::time::timeout(Duration::from_secs(90), result.recv())
        .await
        .expect("the page reported in time")
        .expect("a result");
    let _ = browser.kill().await;
    let reported: Value = serde_json::from_str(&reported).expect("result JSON");

    let expected: String = (0..100).map(|i| format!(" t{i}")).collect();
    assert_eq!(reported["text"], expected.as_str(), "{reported}");
    let seqs: Vec<String> = (1..=101).map(|seq| format!("{turn_id}:{seq}")).collect();
    assert_eq!(reported["seqs"], json!(seqs), "every event once, in order");
    assert!(
        reported["opens"].as_u64().is_some_and(|opens| opens >= 2),
        "{reported}"
    );
    let answer = reported["done"]["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .expect("answer")
        .clone();
    assert_eq!(answer["content"], expected.as_str());
    // It reconnected by itself, saying where it was.
    assert!(proxy.connections.load(Ordering::SeqCst) >= 2);
    let requests = proxy.requests.lock().await.clone();
    assert!(
        requests
            .iter()
            .skip(1)
            .any(|request| request.to_ascii_lowercase().contains("last-event-id:")),
        "{requests:?}"
    );
    let stored = app.wait_for_assistant(1).await;
    assert_eq!(stored, expected);
}
