//! Envelope, health, docs, unknown routes, CORS, limits.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_root_are_enveloped() {
    let app = spawn_app().await;
    let health = app.get("/health", None).await;
    assert_eq!(health.expect(200)["status"], "healthy");
    let root = app.get("/", None).await;
    assert!(root.expect(200)["message"].is_string());
    assert!(health.headers.get("x-request-id").is_some());
    assert_eq!(health.headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_enveloped() {
    let app = spawn_app().await;
    let missing = app.get("/api/nope", None).await;
    assert_eq!(missing.expect(404)["message"], "Not Found");
    let wrong = app.post("/health", &json!({}), None).await;
    assert_eq!(wrong.expect(405)["message"], "Method Not Allowed");
    let wrong = app.get("/api/chat/create", None).await;
    wrong.expect(405);
}

#[tokio::test]
async fn oversized_body_is_413_envelope() {
    let app = spawn_app().await;
    let huge = "x".repeat(1024 * 1024);
    let answer = app
        .post_raw(
            "/api/chat/create",
            format!("{{\"message\":\"{huge}\"}}"),
            "application/json",
        )
        .await;
    assert_eq!(answer.expect(413)["message"], "Request body too large");
    // Chunked (no Content-Length) bodies are cut as well.
    let stream =
        futures::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 16 * 1024])));
    let answer = app
        .post_raw(
            "/api/auth/login",
            reqwest::Body::wrap_stream(stream),
            "application/json",
        )
        .await;
    answer.expect(413);
}

#[tokio::test]
async fn openapi_and_docs_are_served_offline() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let document: serde_json::Value = response.json().await.expect("json");
    for path in [
        "/api/auth/signup",
        "/api/auth/login",
        "/api/auth/me",
        "/api/chat/create",
        "/api/chat/stream",
        "/api/chat/ws/{conversation_id}",
        "/api/chat/messages/{id}",
        "/api/chat/conversations",
        "/api/chat/delete/{id}",
        "/api/chat/summarize/{id}",
        "/health",
    ] {
        assert!(document["paths"].get(path).is_some(), "missing {path}");
    }
    assert!(document["components"]["schemas"].get("ErrorData").is_some());
    let docs = app
        .client
        .get(format!("{}/docs/", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.expect("html");
    assert!(html.contains("swagger"), "{html}");
    // The Swagger UI bundle comes from the binary, not a CDN.
    let bundle = app
        .client
        .get(format!("{}/docs/swagger-ui-bundle.js", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(bundle.status(), 200);
    let redoc = app
        .client
        .get(format!("{}/redoc", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(redoc.status(), 200);
    // ReDoc too: its script is the binary's, and nothing else is fetched.
    let page = redoc.text().await.expect("html");
    assert!(
        page.contains(r#"<script src="/redoc/redoc.standalone.js">"#),
        "{page}"
    );
    assert!(!page.contains("https://"), "{page}");
    let script = app
        .client
        .get(format!("{}/redoc/redoc.standalone.js", app.address))
        .send()
        .await
        .expect("get");
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .is_ok_and(|kind| kind.starts_with("text/javascript"))
    );
    let script = script.text().await.expect("script");
    assert!(script.len() > 500_000 && script.contains("Redoc"));
}

#[tokio::test]
async fn cors_preflight_from_the_frontend_passes() {
    let app = crate::helpers::spawn_app_with(&[(
        "CORS_ALLOW_ORIGINS",
        "http://localhost:3000,https://app.example.com",
    )])
    .await;
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/chat/create", app.address),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let other = app
        .client
        .get(format!("{}/health", app.address))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("get");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_ip_with_retry_after() {
    let app = crate::helpers::spawn_app_with(&[("RATE_LIMIT_AUTH_PER_MINUTE", "3")]).await;
    let body = json!({"email": "nobody@example.com", "password": "wrong"});
    for _ in 0..3 {
        app.post("/api/auth/login", &body, None).await.expect(401);
    }
    let limited = app.post("/api/auth/login", &body, None).await;
    assert_eq!(limited.expect(429)["message"], "Too Many Requests");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    // Other routes are not affected.
    app.get("/health", None).await.expect(200);
}

#[tokio::test]
async fn chat_turns_are_rate_limited_per_user() {
    let app = crate::helpers::spawn_app_with(&[("RATE_LIMIT_CHAT_PER_MINUTE", "2")]).await;
    let (alice, _) = app.signup("alice@example.com").await;
    let (bob, _) = app.signup("bob@example.com").await;
    app.create(serde_json::Value::Null, "one", Some(&alice))
        .await
        .expect(200);
    app.create(serde_json::Value::Null, "two", Some(&alice))
        .await
        .expect(200);
    app.create(serde_json::Value::Null, "three", Some(&alice))
        .await
        .expect(429);
    // The SSE route shares the budget.
    let response = app
        .open_stream(&json!({"message": "four"}), Some(&alice))
        .await;
    assert_eq!(response.status(), 429);
    // Another user on the same IP still has their own budget.
    app.create(serde_json::Value::Null, "hello", Some(&bob))
        .await
        .expect(200);
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let login = json!({"email": "nobody@example.com", "password": "wrong"});
    let attempt = |app: &crate::helpers::TestApp, forwarded: &'static str| {
        let request = app
            .client
            .post(format!("{}/api/auth/login", app.address))
            .header("x-forwarded-for", forwarded)
            .json(&login);
        async move { request.send().await.expect("send").status().as_u16() }
    };
    // Untrusted: a forged header does not buy a fresh budget.
    let app = crate::helpers::spawn_app_with(&[("RATE_LIMIT_AUTH_PER_MINUTE", "1")]).await;
    assert_eq!(attempt(&app, "203.0.113.1").await, 401);
    assert_eq!(attempt(&app, "203.0.113.2").await, 429);
    // Trusted proxy: the last hop it appended is the client.
    let app = crate::helpers::spawn_app_with(&[
        ("RATE_LIMIT_AUTH_PER_MINUTE", "1"),
        ("TRUST_FORWARDED_FOR", "true"),
    ])
    .await;
    assert_eq!(attempt(&app, "198.51.100.7, 203.0.113.1").await, 401);
    assert_eq!(attempt(&app, "198.51.100.7, 203.0.113.2").await, 401);
    assert_eq!(attempt(&app, "10.9.9.9, 203.0.113.2").await, 429);
}

/// What Python's `http.client` does: the whole request, body included, is
/// written before the answer is read. An oversized body must still get the
/// 413 envelope, not a reset or a broken pipe.
#[tokio::test]
async fn a_client_that_writes_a_whole_oversized_body_before_reading_gets_the_413() {
    use std::io::{Read, Write};
    let app = spawn_app().await;
    let port = app.port;
    for chunked in [false, true] {
        let received = tokio::task::spawn_blocking(move || {
            let mut socket =
                std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let body = vec![b'x'; 8 * 1024 * 1024];
            let head = if chunked {
                "POST /api/chat/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
            } else {
                format!(
                    "POST /api/chat/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
            };
            socket.write_all(head.as_bytes())?;
            if chunked {
                for chunk in body.chunks(64 * 1024) {
                    socket.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                    socket.write_all(chunk)?;
                    socket.write_all(b"\r\n")?;
                }
                socket.write_all(b"0\r\n\r\n")?;
            } else {
                socket.write_all(&body)?;
            }
            let mut answer = String::new();
            socket.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })
        .await
        .expect("join");
        let answer = received.unwrap_or_else(|err| panic!("chunked {chunked}: {err}"));
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "chunked {chunked}: {answer}"
        );
        assert!(
            answer.contains(r#""status_code":413"#),
            "chunked {chunked}: {answer}"
        );
    }
}
