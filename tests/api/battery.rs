//! The bad-input battery over the chat and conversation routes: every answer
//! is an enveloped 4xx (or the documented success), never a 5xx, and the
//! database afterwards holds exactly what was acknowledged.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Hostile strings, each also used as a message.
fn hostile_strings() -> Vec<String> {
    vec![
        "' OR 1=1 --".into(),
        "'); DROP TABLE messages; --".into(),
        "<script>alert('x')</script>".into(),
        "\u{202E}evil RTL override\u{202C}".into(),
        "zero\u{200B}width\u{FEFF}joiners".into(),
        "emoji 🏦💳🔐👨‍👩‍👧".into(),
        "NUL inside \u{0000} here".into(),
        "a".repeat(60_000),
        "\u{10FFFF}\u{FFFD} non-characters".into(),
        "{{template}} ${injection} %s %n".into(),
    ]
}

/// Sends one request and checks the answer shape; returns the status.
async fn throw(app: &TestApp, request: reqwest::RequestBuilder, what: &str) -> u16 {
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response.bytes().await.expect("body");
    assert!(
        status < 500,
        "{what}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    if content_type.starts_with("text/event-stream") {
        assert_eq!(status, 200, "{what}");
        return status;
    }
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{what}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(body["status_code"], status, "{what}: {body}");
    if status >= 400 {
        assert!(body["data"]["message"].is_string(), "{what}: {body}");
    }
    let _ = app;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_routes_survive_hostile_input_and_store_only_what_was_acknowledged() {
    let app = spawn_app().await;
    let (token, _) = app.signup("battery@example.com").await;
    let existing = app.new_conversation(Some(&token)).await;
    let mut acknowledged_turns = 1; // the conversation above
    let mut thrown = 0;
    let url = |path: &str| format!("{}{path}", app.address);

    // Raw bodies on both turn routes.
    let deep_array = "[".repeat(10_000);
    let deep_object = "{\"a\":".repeat(10_000);
    let raw_bodies: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "application/json"),
        (vec![0xff, 0xfe, 0x7b, 0x22], "application/json"),
        (b"{\"message\": \"\xff\xfe\"}".to_vec(), "application/json"),
        (deep_array.clone().into_bytes(), "application/json"),
        (deep_object.clone().into_bytes(), "application/json"),
        (
            b"message=hello".to_vec(),
            "application/x-www-form-urlencoded",
        ),
        (b"".to_vec(), "application/json"),
        (b"null".to_vec(), "application/json"),
        (b"[\"hello\"]".to_vec(), "application/json"),
        (b"{\"message\": [\"a\"]}".to_vec(), "application/json"),
        (
            b"{\"message\": {\"nested\": true}}".to_vec(),
            "application/json",
        ),
        (
            b"{\"message\": \"hi\", \"conversation_id\": -5}".to_vec(),
            "text/plain",
        ),
        (
            b"{\"message\": \"hi\", \"conversation_id\": 99999999999999999999}".to_vec(),
            "application/json",
        ),
        (
            b"{\"message\": \"hi\", \"conversation_id\": \"1; DROP TABLE users\"}".to_vec(),
            "application/json",
        ),
        (
            b"{\"message\": \"hi\", \"conversation_id\": true}".to_vec(),
            "application/json",
        ),
    ];
    for path in ["/api/chat/create", "/api/chat/stream"] {
        for (body, content_type) in &raw_bodies {
            let request = app
                .client
                .post(url(path))
                .header("content-type", *content_type)
                .body(body.clone());
            let status = throw(
                &app,
                request,
                &format!(
                    "{path} {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                ),
            )
            .await;
            thrown += 1;
            if status == 200 {
                acknowledged_turns += 1;
            }
        }
        for text in hostile_strings() {
            for conversation_id in [json!(null), json!(existing), json!(existing.to_string())] {
                let request = app
                    .client
                    .post(url(path))
                    .bearer_auth(&token)
                    .json(&json!({"conversation_id": conversation_id, "message": text}));
                let status = throw(
                    &app,
                    request,
                    &format!("{path} {:?}", text.chars().take(30).collect::<String>()),
                )
                .await;
                thrown += 1;
                if status == 200 {
                    acknowledged_turns += 1;
                }
            }
        }
    }

    // Path ids on the id routes.
    for id in [
        "-1",
        "0",
        "99999999999999999999",
        "abc",
        "1.5",
        "%00",
        "1%20OR%201=1",
        "%F0%9F%92%B3",
    ] {
        for (method, path) in [
            (reqwest::Method::GET, format!("/api/chat/messages/{id}")),
            (reqwest::Method::POST, format!("/api/chat/delete/{id}")),
            (reqwest::Method::POST, format!("/api/chat/summarize/{id}")),
            (reqwest::Method::GET, format!("/api/chat/ws/{id}")),
        ] {
            let request = app.client.request(method, url(&path)).bearer_auth(&token);
            let status = throw(&app, request, &path).await;
            assert!(status >= 400, "{path}: {status}");
            thrown += 1;
        }
    }
    // Query strings and tokens.
    for query in [
        "limit=-1",
        "limit=abc",
        "offset=-3",
        "limit=99999999999999999999",
        "limit=1&offset=%00",
    ] {
        let request = app
            .client
            .get(url(&format!("/api/chat/conversations?{query}")))
            .bearer_auth(&token);
        throw(&app, request, query).await;
        thrown += 1;
    }
    for header in [
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer a.b.c",
        "Bearer null",
        &format!("Bearer {}", "x".repeat(8000)),
    ] {
        let request = app
            .client
            .get(url(&format!("/api/chat/messages/{existing}")))
            .header("authorization", header);
        throw(&app, request, header).await;
        thrown += 1;
    }

    // The database holds exactly the acknowledged turns: one user or guardrails row each.
    let user_rows = count_where(&app, "role IN ('user', 'guardrails')").await;
    assert_eq!(
        user_rows, acknowledged_turns,
        "stored turns differ from acknowledged turns"
    );
    let list = app.get("/api/chat/conversations", Some(&token)).await;
    assert!(
        list.expect(200)["conversations"]
            .as_array()
            .is_some_and(|list| !list.is_empty())
    );
    println!(
        "battery: {thrown} hostile requests, 0 5xx, {acknowledged_turns} acknowledged turns stored"
    );
}

async fn count_where(app: &TestApp, condition: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM messages WHERE {condition}");
    let db = app.db().await;
    let count: (i64,) = match &db {
        eloquent::storage::Database::Sqlite(pool) => sqlx::query_as(&sql).fetch_one(pool).await,
        eloquent::storage::Database::Postgres(pool) => sqlx::query_as(&sql).fetch_one(pool).await,
    }
    .expect("count");
    db.close().await;
    count.0
}
