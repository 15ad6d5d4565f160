//! Hardening: upstream retries, caps on answers in progress, secrets kept out of logs.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::fakes::{Behaviour, FakeOpenAi, FakePinecone};
use crate::helpers::{JWT_SECRET, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_5xx_before_the_first_token_is_retried_once() {
    let app = spawn_app().await;
    app.openai.behave(Behaviour::FailThen {
        failures: 1,
        status: 503,
        tokens: vec!["Recovered".into(), " answer".into()],
    });
    let answer = app.create(Value::Null, "Is it up?", None).await;
    let messages = &answer.expect(200)["messages"];
    assert_eq!(messages[1]["content"], "Recovered answer");
    assert_eq!(app.openai.request_count(), 2);
}

#[tokio::test]
async fn a_persistent_5xx_is_tried_twice_then_502() {
    let app = spawn_app().await;
    app.openai.behave(Behaviour::Status(500));
    let answer = app.create(Value::Null, "Is it up?", None).await;
    assert_eq!(answer.expect(502)["message"], "Upstream model error");
    assert_eq!(app.openai.request_count(), 2);
    // Client errors (bad key) are not retried.
    app.openai.behave(Behaviour::Status(401));
    let before = app.openai.request_count();
    app.create(Value::Null, "Again?", None).await.expect(502);
    assert_eq!(app.openai.request_count(), before + 1);
}

#[tokio::test]
async fn answers_in_progress_are_capped_per_user_and_released() {
    let app = spawn_app_with(&[("MAX_STREAMS_PER_USER", "1")]).await;
    let (alice, _) = app.signup("cap@example.com").await;
    let (bob, _) = app.signup("other@example.com").await;
    app.openai.behave(Behaviour::Tokens {
        tokens: (0..200).map(|i| format!(" t{i}")).collect(),
        delay: Duration::from_millis(20),
    });
    let open = app
        .open_stream(&json!({"message": "long"}), Some(&alice))
        .await;
    assert_eq!(open.status(), 200);
    let mut body = open.bytes_stream();
    body.next().await.expect("first chunk").expect("bytes");
    let busy = app
        .open_stream(&json!({"message": "second"}), Some(&alice))
        .await;
    assert_eq!(busy.status(), 503);
    assert!(busy.headers().get("retry-after").is_some());
    let envelope: Value = busy.json().await.expect("json");
    assert_eq!(envelope["status_code"], 503);
    // Another user is not affected.
    let other = app
        .open_stream(&json!({"message": "mine"}), Some(&bob))
        .await;
    assert_eq!(other.status(), 200);
    drop(other);
    // Leaving releases the slot.
    drop(body);
    app.openai.wait_closed_early(1).await;
    app.openai.answer(&["ok"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = app.create(Value::Null, "third", Some(&alice)).await;
        if again.status == 200 {
            break;
        }
        assert_eq!(again.status, 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        // The slot is freed when the server notices the disconnect: poll briefly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn answers_in_progress_are_capped_in_total() {
    let app = spawn_app_with(&[("MAX_STREAMS_TOTAL", "1")]).await;
    app.openai.behave(Behaviour::HangAfter {
        tokens: vec!["wait".into()],
    });
    let open = app.open_stream(&json!({"message": "hang"}), None).await;
    assert_eq!(open.status(), 200);
    let mut body = open.bytes_stream();
    body.next().await.expect("first chunk").expect("bytes");
    let busy = app.create(Value::Null, "anyone?", None).await;
    assert_eq!(
        busy.expect(503)["message"],
        "Too many answers in progress. Please try again shortly."
    );
}

/// Runs the real binary through a full session with debug logging and
/// returns everything it printed.
async fn logs_of_a_full_session() -> (String, Vec<String>) {
    let openai = FakeOpenAi::start().await;
    let pinecone = FakePinecone::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let openai_key = "sk-live-LOGCANARY0123456789abcdefABCDEF";
    let pinecone_key = "pcsk_LOGCANARY_pinecone_key_987654";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_eloquent"))
        .current_dir(dir.path())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env(
            "DATABASE_URL",
            format!("sqlite:///{}", dir.path().join("logs.db").display()),
        )
        .env("OPENAI_API_KEY", openai_key)
        .env("OPENAI_BASE_URL", &openai.base_url)
        .env("PINECONE_API_KEY", pinecone_key)
        .env("PINECONE_HOST", &pinecone.base_url)
        .env("JWT_SECRET", JWT_SECRET)
        .env("BCRYPT_COST", "4")
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start server");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stderr = child.stderr.take().expect("stderr");
    let mut printed = String::new();
    let address = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).await.expect("read") > 0,
            "server exited: {printed}"
        );
        printed.push_str(&line);
        if let Ok(entry) = serde_json::from_str::<Value>(&line)
            && entry["fields"]["message"] == "listening"
        {
            break format!("http://{}", entry["fields"]["addr"].as_str().expect("addr"));
        }
    };
    let client = reqwest::Client::new();
    let password = "LOGCANARY-password-42";
    let signup: Value = client
        .post(format!("{address}/api/auth/signup"))
        .json(&json!({"email": "logs@example.com", "name": "Logs", "password": password}))
        .send()
        .await
        .expect("signup")
        .json()
        .await
        .expect("json");
    let token = signup["data"]["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    client
        .post(format!("{address}/api/auth/login"))
        .json(&json!({"email": "logs@example.com", "password": password}))
        .send()
        .await
        .expect("login");
    client
        .get(format!("{address}/api/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me");
    let created: Value = client
        .post(format!("{address}/api/chat/create"))
        .bearer_auth(&token)
        .json(&json!({"message": "My card is 4111 1111 1111 1111, why was it declined?"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    assert_eq!(created["status_code"], 200);
    let stream = client
        .post(format!("{address}/api/chat/stream"))
        .bearer_auth(&token)
        .json(&json!({"message": "And via SSE?"}))
        .send()
        .await
        .expect("stream");
    let _ = stream.text().await;
    let ws_url = format!(
        "{}/api/chat/ws/0?token={token}",
        address.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("ws");
    futures::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::Text(r#"{"message":"ws"}"#.into()),
    )
    .await
    .expect("send");
    while let Some(Ok(_)) = socket.next().await {}
    // Stop gracefully so every line is flushed.
    let pid = child.id().expect("pid");
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await;
    assert!(status.expect("kill").success());
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("server stopped in time")
        .expect("wait");
    stdout
        .read_to_string(&mut printed)
        .await
        .expect("read stdout");
    stderr
        .read_to_string(&mut printed)
        .await
        .expect("read stderr");
    let secrets = vec![
        password.to_string(),
        token,
        openai_key.to_string(),
        pinecone_key.to_string(),
        JWT_SECRET.to_string(),
        "4111 1111 1111 1111".to_string(),
        "Bearer ".to_string(),
    ];
    (printed, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let (printed, secrets) = logs_of_a_full_session().await;
    assert!(
        printed.lines().count() > 20,
        "too few log lines to mean anything:\n{printed}"
    );
    assert!(
        printed.contains("\"stopped\""),
        "no graceful stop in the log"
    );
    for secret in secrets {
        assert!(!printed.contains(&secret), "the log contains {secret:?}");
    }
}

#[tokio::test]
async fn oversized_websocket_frames_are_refused_without_a_turn() {
    let app = spawn_app().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(app.ws_url("0", None))
        .await
        .expect("connect");
    let huge = format!("{{\"message\": \"{}\"}}", "x".repeat(100 * 1024));
    // The server may cut the connection while we are still sending.
    let _ = futures::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::Text(huge.into()),
    )
    .await;
    let mut texts = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            texts.push(text.to_string());
        }
    }
    assert!(
        texts.iter().all(|text| !text.contains("\"done\"")),
        "{texts:?}"
    );
    assert_eq!(app.openai.request_count(), 0);
    assert_eq!(app.count_rows("conversations").await, 0);
}

#[tokio::test]
async fn security_headers_are_on_every_response() {
    let app = spawn_app().await;
    for path in ["/health", "/api/nope", "/api/auth/me", "/openapi.json"] {
        let answer = app.get(path, None).await;
        assert_eq!(
            answer.headers["x-content-type-options"], "nosniff",
            "{path}"
        );
        assert_eq!(answer.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer", "{path}");
    }
}

#[tokio::test]
async fn wildcard_cors_never_allows_credentials() {
    let app = spawn_app().await;
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/chat/create", app.address),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert!(
        preflight
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
}

#[tokio::test]
async fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_eloquent"))
        .arg("migrate")
        .current_dir(dir.path())
        .env(
            "DATABASE_URL",
            format!("sqlite:///{}", dir.path().join("colour.db").display()),
        )
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "text")
        .env_remove("NO_COLOR")
        .output()
        .await
        .expect("run eloquent migrate");
    assert!(output.status.success(), "{output:?}");
    let printed = [output.stdout, output.stderr].concat();
    let printed = String::from_utf8_lossy(&printed);
    assert!(printed.contains("INFO"), "no log lines: {printed}");
    assert!(!printed.contains('\u{1b}'), "colour codes: {printed:?}");
}
