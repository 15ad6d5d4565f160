//! Several servers on one database and one Redis (contract section 15):
//! resume and stop across servers, limits counted once, and a Redis that
//! goes away and comes back. Each test starts its own `redis-server`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::fakes::slow;
use crate::helpers::{RedisServer, TestApp, deltas, read_sse, spawn_app_with, try_spawn_app_on};

/// Two servers sharing one database and `redis`, with `overrides`.
async fn two_servers(redis: &RedisServer, overrides: &[(&str, &str)]) -> (TestApp, TestApp) {
    let url = redis.url();
    let mut settings: Vec<(&str, &str)> = vec![("REDIS_URL", url.as_str())];
    settings.extend_from_slice(overrides);
    let first = spawn_app_with(&settings).await;
    let second = try_spawn_app_on(
        tempfile::tempdir().expect("tempdir"),
        &first.database_url,
        &settings,
    )
    .await
    .expect("second server");
    (first, second)
}

async fn resume(app: &TestApp, turn_id: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/api/chat/stream/{turn_id}", app.address));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.expect("resume")
}

/// A metric's value in an exposition (one exact series).
async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_turn_started_on_one_server_is_resumed_on_another_with_nothing_lost() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (first, second) = two_servers(&redis, &[("STREAM_RESUME_GRACE_SECS", "1")]).await;
    first.openai.behave(slow(80, 25));
    let response = first
        .open_stream(&json!({"message": "Tell me everything"}), None)
        .await;
    let turn_id = response.headers()["x-turn-id"]
        .to_str()
        .expect("turn id")
        .to_string();
    let seen = read_sse(response, 3).await;
    // The connection to the first server drops; the client comes back
    // through the other one. It follows for longer than the first server's
    // grace period: its reading keeps the turn alive there.
    let resumed = resume(&second, &turn_id, Some(&seen[2].id)).await;
    assert_eq!(resumed.status(), 200);
    let rest = read_sse(resumed, usize::MAX).await;
    let numbers: Vec<u64> = rest
        .iter()
        .map(|event| {
            event
                .id
                .rsplit_once(':')
                .expect("id")
                .1
                .parse()
                .expect("seq")
        })
        .collect();
    assert_eq!(numbers, (4..=81).collect::<Vec<u64>>());
    let done = rest.last().expect("done");
    assert_eq!(done.event, "done");
    let expected: String = (0..80).map(|i| format!(" t{i}")).collect();
    assert_eq!(deltas(&seen) + &deltas(&rest), expected);
    let messages = done.data["messages"].as_array().expect("messages");
    assert_eq!(
        messages.last().expect("answer")["content"],
        expected.as_str()
    );
    assert_eq!(first.openai.closed_early(), 0, "the model ran to its end");
    // The ended turn replays on either server; after its end, 204.
    let again = read_sse(resume(&second, &turn_id, None).await, usize::MAX).await;
    assert_eq!(deltas(&again), expected);
    let over = resume(&second, &turn_id, Some(&format!("{turn_id}:81"))).await;
    assert_eq!(over.status(), 204);
    assert_eq!(second.get("/api/chat/stream/nope", None).await.status, 404);
}

#[tokio::test]
async fn a_turn_is_stopped_from_another_server_and_owners_are_checked_there() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (first, second) = two_servers(&redis, &[("STREAM_RESUME_GRACE_SECS", "30")]).await;
    let (owner, _) = first.signup("owner@example.com").await;
    let (other, _) = first.signup("other@example.com").await;
    first.openai.behave(slow(500, 20));
    let response = first
        .open_stream(&json!({"message": "Go on"}), Some(&owner))
        .await;
    let turn_id = response.headers()["x-turn-id"]
        .to_str()
        .expect("turn id")
        .to_string();
    let mut stream = response.bytes_stream();
    stream.next().await.expect("a first event").expect("bytes");
    let path = format!("/api/chat/stop/{turn_id}");
    second
        .post(&path, &json!({}), Some(&other))
        .await
        .expect(403);
    let stopped = second.post(&path, &json!({}), Some(&owner)).await;
    assert_eq!(stopped.expect(200)["stopped"], true);
    first.openai.wait_closed_early(1).await;
    let mut rest = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let done: Value = serde_json::from_str(
        rest.split("event: done\ndata: ")
            .nth(1)
            .and_then(|data| data.split("\n\n").next())
            .expect("done"),
    )
    .expect("json");
    let answer = done["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .expect("answer");
    assert_eq!(answer["stopped"], true);
    // Once ended, a stop from anywhere says so.
    let again = second.post(&path, &json!({}), Some(&owner)).await;
    assert_eq!(again.expect(200)["stopped"], false);
}

#[tokio::test]
async fn limits_are_counted_once_across_servers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (first, second) = two_servers(
        &redis,
        &[
            ("RATE_LIMIT_CHAT_PER_MINUTE", "2"),
            ("RATE_LIMIT_AUTH_PER_MINUTE", "3"),
            ("MAX_STREAMS_PER_USER", "1"),
            ("STREAM_RESUME_GRACE_SECS", "30"),
        ],
    )
    .await;
    let (token, _) = first.signup("busy@example.com").await;
    // One answer streaming on the first server: the second refuses another.
    first.openai.behave(slow(200, 20));
    let streaming = first
        .open_stream(&json!({"message": "long"}), Some(&token))
        .await;
    let turn_id = streaming.headers()["x-turn-id"]
        .to_str()
        .expect("turn id")
        .to_string();
    let busy = second
        .post(
            "/api/chat/create",
            &json!({"message": "and another"}),
            Some(&token),
        )
        .await;
    assert_eq!(busy.status, 503, "{:?}", busy.body);
    first
        .post(
            &format!("/api/chat/stop/{turn_id}"),
            &json!({}),
            Some(&token),
        )
        .await
        .expect(200);
    drop(streaming);
    // Two turns a minute: one was on the first server, one here; the third
    // is refused, whichever server gets it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = second
            .post(
                "/api/chat/create",
                &json!({"message": "second"}),
                Some(&token),
            )
            .await;
        if answer.status == 200 {
            break;
        }
        // The stopped turn's shared slot is released right after it ends.
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first
        .post(
            "/api/chat/create",
            &json!({"message": "third"}),
            Some(&token),
        )
        .await
        .expect(429);
    // Sign-in attempts too (signup counted one on the first server).
    let login = json!({"email": "busy@example.com", "password": "wrong"});
    second
        .post("/api/auth/login", &login, None)
        .await
        .expect(401);
    first
        .post("/api/auth/login", &login, None)
        .await
        .expect(401);
    second
        .post("/api/auth/login", &login, None)
        .await
        .expect(429);
    assert_eq!(
        metric(&first, r#"eloquent_redis_state{state="connected"}"#).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn servers_keep_answering_while_redis_is_down_and_reconnect_by_themselves() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let (first, second) = two_servers(&redis, &[("RATE_LIMIT_CHAT_PER_MINUTE", "100")]).await;
    let (token, _) = first.signup("steady@example.com").await;
    first
        .create(Value::Null, "before", Some(&token))
        .await
        .expect(200);
    redis.kill().await;
    // No 5xx because of Redis: turns, streams, resumes, logins go on.
    for app in [&first, &second] {
        app.create(Value::Null, "during", Some(&token))
            .await
            .expect(200);
        let events = app
            .stream_events(&json!({"message": "streamed during"}), None)
            .await;
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
        let turn_id = events[0].id.split(':').next().expect("turn").to_string();
        let response = resume(app, &turn_id, None).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let replay = read_sse(response, usize::MAX).await;
        assert_eq!(deltas(&replay), deltas(&events));
        app.post(
            "/api/auth/login",
            &json!({"email": "steady@example.com", "password": "wrong"}),
            None,
        )
        .await
        .expect(401);
    }
    assert_eq!(
        metric(&first, r#"eloquent_redis_state{state="disconnected"}"#).await,
        Some(1.0)
    );
    assert!(
        metric(&first, "eloquent_redis_errors_total")
            .await
            .is_some_and(|errors| errors >= 1.0)
    );
    // Back on the same port: the servers find it again by themselves.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        first
            .create(Value::Null, "after", Some(&token))
            .await
            .expect(200);
        if metric(&first, r#"eloquent_redis_state{state="connected"}"#).await == Some(1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Turns are shared again: one started on the first resumes on the second.
    let events = first
        .stream_events(&json!({"message": "shared again"}), None)
        .await;
    let turn_id = events[0].id.split(':').next().expect("turn").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let replay = loop {
        let response = resume(&second, &turn_id, None).await;
        if response.status() == 200 {
            break read_sse(response, usize::MAX).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "turn never shared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(deltas(&replay), deltas(&events), "{replay:?}");
}

#[tokio::test]
async fn the_same_send_on_two_servers_at_once_starts_one_turn() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (first, second) = two_servers(&redis, &[]).await;
    let (token, _) = first.signup("double@example.com").await;
    let body = json!({"message": "How do I freeze my card?", "client_message_id": "both-at-once"});
    let (a, b) = tokio::join!(
        first.post("/api/chat/create", &body, Some(&token)),
        second.post("/api/chat/create", &body, Some(&token))
    );
    let (a, b) = (a.expect(200).clone(), b.expect(200).clone());
    assert_eq!(a["conversation_id"], b["conversation_id"]);
    assert_eq!(a["messages"], b["messages"]);
    assert_eq!(
        first.openai.request_count() + second.openai.request_count(),
        1,
        "one model call in all"
    );
}
