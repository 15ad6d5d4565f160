//! Streams that survive (contract section 14): turn ids, resuming after a
//! dropped connection, the grace period, stopping, the replay window.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fakes::slow;
use crate::helpers::{SseEvent, TestApp, deltas, read_sse, spawn_app_with};

/// `GET /api/chat/stream/{turn_id}`, as an `EventSource` reconnecting does.
async fn resume(
    app: &TestApp,
    turn_id: &str,
    last_event_id: Option<&str>,
    query: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/api/chat/stream/{turn_id}{query}", app.address))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("resume")
}

/// The events' numbers, from their `id: <turn_id>:<seq>` lines.
fn seqs(turn_id: &str, events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|event| {
            let (turn, seq) = event.id.rsplit_once(':').expect("turn:seq");
            assert_eq!(turn, turn_id);
            seq.parse().expect("seq")
        })
        .collect()
}

fn last_assistant(view: &Value) -> Value {
    view["messages"]
        .as_array()
        .and_then(|items| items.iter().rev().find(|m| m["role"] == "assistant"))
        .cloned()
        .expect("assistant item")
}

/// Starts an SSE turn and reads its first `n` events; returns the turn id
/// and those events (the connection is dropped with the response).
async fn start_and_leave(app: &TestApp, n: usize, token: Option<&str>) -> (String, Vec<SseEvent>) {
    let response = app
        .open_stream(&json!({"message": "Tell me everything"}), token)
        .await;
    assert_eq!(response.status(), 200);
    let turn_id = response.headers()["x-turn-id"]
        .to_str()
        .expect("turn id")
        .to_string();
    let seen = read_sse(response, n).await;
    (turn_id, seen)
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_its_last_event_with_nothing_missing_or_twice() {
    let app = spawn_app_with(&[("STREAM_RESUME_GRACE_SECS", "30")]).await;
    app.openai.behave(slow(60, 10));
    let (turn_id, seen) = start_and_leave(&app, 3, None).await;
    assert_eq!(seqs(&turn_id, &seen), vec![1, 2, 3]);

    // Reconnect as an EventSource does: the same turn, Last-Event-ID.
    let response = resume(&app, &turn_id, Some(&seen[2].id), "", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-turn-id"], turn_id.as_str());
    let rest = read_sse(response, usize::MAX).await;
    let numbers = seqs(&turn_id, &rest);
    assert_eq!(numbers, (4..=61).collect::<Vec<u64>>(), "no gap, no repeat");
    let done = rest.last().expect("done");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["turn_id"], turn_id.as_str());
    let text = deltas(&seen) + &deltas(&rest);
    let expected: String = (0..60).map(|i| format!(" t{i}")).collect();
    assert_eq!(text, expected);
    assert_eq!(last_assistant(&done.data)["content"], expected.as_str());
    assert_eq!(last_assistant(&done.data)["stopped"], false);
    // The model was never cancelled: the client came back within the grace.
    assert_eq!(app.openai.closed_early(), 0);

    // A finished turn replays from the start, or from any event, and ends
    // with done; after its last event: 204 (an EventSource stops there).
    let all = read_sse(resume(&app, &turn_id, None, "", None).await, usize::MAX).await;
    assert_eq!(seqs(&turn_id, &all), (1..=61).collect::<Vec<u64>>());
    assert_eq!(deltas(&all), expected);
    let tail = read_sse(
        resume(&app, &turn_id, None, "?last_event_id=59", None).await,
        usize::MAX,
    )
    .await;
    assert_eq!(seqs(&turn_id, &tail), vec![60, 61]);
    // The header wins over the query (the browser keeps the first URL).
    let tail = read_sse(
        resume(
            &app,
            &turn_id,
            Some(&format!("{turn_id}:60")),
            "?last_event_id=1",
            None,
        )
        .await,
        usize::MAX,
    )
    .await;
    assert_eq!(seqs(&turn_id, &tail), vec![61]);
    let over = resume(&app, &turn_id, Some(&format!("{turn_id}:61")), "", None).await;
    assert_eq!(over.status(), 204);
}

#[tokio::test]
async fn resuming_follows_the_access_rules_and_unknown_turns_are_404() {
    let app = spawn_app_with(&[("STREAM_RESUME_GRACE_SECS", "30")]).await;
    let (owner, _) = app.signup("owner@example.com").await;
    let (other, _) = app.signup("other@example.com").await;
    let events = app
        .stream_events(&json!({"message": "Mine"}), Some(&owner))
        .await;
    let turn_id = events[0].id.split(':').next().expect("turn").to_string();
    for (token, status) in [
        (Some(owner.as_str()), 200),
        (Some(&other), 403),
        (None, 403),
    ] {
        let response = resume(&app, &turn_id, None, "", token).await;
        assert_eq!(response.status(), status);
    }
    // The token may come in the query (EventSource cannot set headers).
    let response = resume(&app, &turn_id, None, &format!("?token={owner}"), None).await;
    assert_eq!(response.status(), 200);
    let unknown = app.get("/api/chat/stream/no-such-turn", None).await;
    assert_eq!(unknown.expect(404)["message"], "Turn not found");
    let stop = app
        .post("/api/chat/stop/no-such-turn", &json!({}), None)
        .await;
    stop.expect(404);
    let stop = app
        .post(
            &format!("/api/chat/stop/{turn_id}"),
            &json!({}),
            Some(&other),
        )
        .await;
    stop.expect(403);
}

#[tokio::test]
async fn nobody_back_within_the_grace_cancels_the_model_and_stores_the_partial() {
    let app = spawn_app_with(&[("STREAM_RESUME_GRACE_SECS", "1")]).await;
    app.openai.behave(slow(500, 20));
    let (turn_id, seen) = start_and_leave(&app, 2, None).await;
    app.openai.wait_closed_early(1).await;
    let stored = app.wait_for_assistant(1).await;
    assert!(stored.starts_with(&deltas(&seen)), "{stored}");
    // Kept going for the grace (about 50 tokens), not to the end.
    assert!(stored.len() > deltas(&seen).len(), "{stored}");
    assert!(stored.len() < 500 * 4, "{stored}");
    // A late resume replays what there was and ends with done.
    let late = read_sse(resume(&app, &turn_id, None, "", None).await, usize::MAX).await;
    assert_eq!(late.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(deltas(&late), stored);
}

#[tokio::test]
async fn stop_cancels_the_model_and_every_follower_ends_with_done() {
    let app = spawn_app_with(&[("STREAM_RESUME_GRACE_SECS", "30")]).await;
    let (token, _) = app.signup("stopper@example.com").await;
    app.openai.behave(slow(500, 20));
    let response = app
        .open_stream(&json!({"message": "Go on and on"}), Some(&token))
        .await;
    let turn_id = response.headers()["x-turn-id"]
        .to_str()
        .expect("turn id")
        .to_string();
    let mut first = response.bytes_stream();
    first.next().await.expect("a first event").expect("bytes");
    // A second follower on the same turn.
    let second = resume(&app, &turn_id, None, "", Some(&token)).await;
    assert_eq!(second.status(), 200);

    let stopped = app
        .post(
            &format!("/api/chat/stop/{turn_id}"),
            &json!({}),
            Some(&token),
        )
        .await;
    assert_eq!(
        stopped.expect(200).clone(),
        json!({"turn_id": turn_id, "stopped": true})
    );
    app.openai.wait_closed_early(1).await;
    let mut rest = String::new();
    while let Some(Ok(chunk)) = first.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("event: done"), "{rest}");
    let events = read_sse(second, usize::MAX).await;
    let done = events.last().expect("done");
    assert_eq!(done.event, "done");
    let answer = last_assistant(&done.data);
    assert_eq!(answer["stopped"], true);
    assert_eq!(answer["content"].as_str(), Some(deltas(&events).as_str()));
    // Every view shows it; stopping again says it had ended.
    let id = done.data["conversation_id"].as_i64().expect("id");
    let history = app
        .get(&format!("/api/chat/messages/{id}"), Some(&token))
        .await
        .expect(200)
        .clone();
    assert_eq!(last_assistant(&history)["stopped"], true);
    let again = app
        .post(
            &format!("/api/chat/stop/{turn_id}"),
            &json!({}),
            Some(&token),
        )
        .await;
    assert_eq!(again.expect(200)["stopped"], false);
}

#[tokio::test]
async fn a_websocket_client_stops_its_turn_with_an_action_frame() {
    let app = spawn_app_with(&[("STREAM_RESUME_GRACE_SECS", "30")]).await;
    app.openai.behave(slow(500, 20));
    let (mut socket, _) = tokio_tungstenite::connect_async(app.ws_url("0", None))
        .await
        .expect("connect");
    socket
        .send(Message::Text(r#"{"message":"long"}"#.into()))
        .await
        .expect("send");
    let turn: Value = match socket.next().await.expect("frame").expect("ok") {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("turn frame"),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(turn["event"], "turn");
    assert!(turn["turn_id"].as_str().is_some_and(|id| id.len() >= 32));
    socket.next().await.expect("a delta").expect("ok");
    socket
        .send(Message::Text(r#"{"action":"stop"}"#.into()))
        .await
        .expect("send stop");
    let mut last = String::new();
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            last = text.to_string();
        }
    }
    let done: Value = serde_json::from_str(&last).expect("done frame");
    assert_eq!(done["event"], "done");
    assert_eq!(done["turn_id"], turn["turn_id"]);
    assert_eq!(last_assistant(&done)["stopped"], true);
    app.openai.wait_closed_early(1).await;
}

#[tokio::test]
async fn ended_turns_are_forgotten_after_the_replay_window() {
    let app = spawn_app_with(&[("STREAM_REPLAY_TTL_SECS", "0")]).await;
    let events = app.stream_events(&json!({"message": "Quick"}), None).await;
    let turn_id = events[0].id.split(':').next().expect("turn").to_string();
    assert_eq!(
        app.get(&format!("/api/chat/stream/{turn_id}"), None)
            .await
            .expect(404)["message"],
        "Turn not found"
    );
}
