//! Human handoff and signed webhooks (contract section 17): statuses, the
//! triggers, the agents' routes, and webhook events delivered to a real
//! HTTP receiver that fails, is down, and sees the server restart.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fakes::{Behaviour, FakeReceiver};
use crate::helpers::{TestApp, deltas, spawn_app_with, try_spawn_app_on};

const HANDOFF_REPLY: &str = "I'm passing this conversation to a member of our support team. \
     A person will reply here as soon as possible; you can keep writing in the meantime.";
const ACK_REPLY: &str =
    "Thanks, your message has been passed on. A member of our support team will reply here.";
const SECRET: &str = "whsec_test_secret";

const AGENT: &str = "agent@example.com";
const ADMIN: &str = "boss@example.com";

/// A server with an agent and an admin configured, and `overrides`.
async fn app_with(overrides: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![("AGENT_EMAILS", AGENT), ("ADMIN_EMAILS", ADMIN)];
    settings.extend_from_slice(overrides);
    spawn_app_with(&settings).await
}

/// Webhooks to `receiver`, retried quickly.
fn webhook_settings(receiver: &FakeReceiver) -> [(&'static str, &str); 3] {
    [
        ("WEBHOOK_URL", receiver.url.as_str()),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_RETRY_BASE_SECS", "0.05"),
    ]
}

/// A server posting webhooks to `receiver`.
async fn app_with_webhooks(receiver: &FakeReceiver) -> TestApp {
    app_with(&webhook_settings(receiver)).await
}

fn last(view: &Value) -> &Value {
    view["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .expect("a message")
}

fn agent_path(id: i64, action: &str) -> String {
    format!("/api/agent/conversations/{id}/{action}")
}

#[tokio::test]
async fn asking_for_a_person_hands_over_and_the_model_is_silent_until_closed() {
    let app = app_with(&[]).await;
    let (user, _) = app.signup("customer@example.com").await;
    let (agent, _) = app.signup(AGENT).await;
    let (admin, _) = app.signup(ADMIN).await;
    let (other, _) = app.signup("other@example.com").await;

    let first = app
        .create(Value::Null, "How do I freeze my card?", Some(&user))
        .await;
    let first = first.expect(200);
    let id = first["conversation_id"].as_i64().expect("id");
    assert_eq!(first["status"], "bot");
    assert_eq!(last(first)["author"], "bot");
    assert_eq!(app.openai.request_count(), 1);

    // A plain ask, with a typo: answered with the handoff reply, no model call.
    let asked = app
        .create(json!(id), "I want to talk to a humna please", Some(&user))
        .await;
    let asked = asked.expect(200);
    assert_eq!(asked["status"], "pending_human");
    assert_eq!(last(asked)["content"], HANDOFF_REPLY);
    assert_eq!(last(asked)["author"], "bot");
    assert_eq!(last(asked)["grounded"], Value::Null);
    assert_eq!(app.openai.request_count(), 1);

    // While waiting: acknowledged over SSE and WebSocket, still no model call.
    let events = app
        .stream_events(
            &json!({"conversation_id": id, "message": "Hello? Anyone there?"}),
            Some(&user),
        )
        .await;
    assert_eq!(deltas(&events), ACK_REPLY);
    let done = events.last().expect("done");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["status"], "pending_human");
    let frames = app
        .ws_turn(
            &id.to_string(),
            Some(&user),
            &json!({"message": "It is about a card payment"}).to_string(),
        )
        .await;
    // The `turn` frame, deltas as raw text frames, the JSON `done`.
    let (done, streamed) = frames[1..].split_last().expect("frames");
    assert_eq!(streamed.concat(), ACK_REPLY);
    let done: Value = serde_json::from_str(done).expect("done frame");
    assert_eq!(done["event"], "done");
    assert_eq!(done["status"], "pending_human");
    assert_eq!(app.openai.request_count(), 1);

    // The user's list and history show the status.
    let list = app.get("/api/chat/conversations", Some(&user)).await;
    assert_eq!(
        list.expect(200)["conversations"][0]["status"],
        "pending_human"
    );

    // The queue: agents and admins see it, users do not.
    let queue = app
        .get(
            "/api/agent/conversations?status=pending_human",
            Some(&agent),
        )
        .await;
    let queue = queue.expect(200).as_array().expect("list").clone();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0]["id"], id);
    assert_eq!(queue[0]["user"]["email"], "customer@example.com");
    assert_eq!(
        queue[0]["status_reason"],
        "I want to talk to a humna please"
    );
    assert!(queue[0]["status_changed_at"].is_string());
    app.get("/api/agent/conversations", Some(&admin))
        .await
        .expect(200);
    let me = app.get("/api/auth/me", Some(&agent)).await;
    assert_eq!(me.expect(200)["role"], "agent");
    app.get("/api/agent/conversations", Some(&user))
        .await
        .expect(403);
    app.get("/api/agent/conversations", None).await.expect(401);
    app.get("/api/agent/conversations", Some("garbage.token"))
        .await
        .expect(401);

    // The agent reads the conversation (not theirs) and answers.
    let seen = app
        .get(&format!("/api/agent/conversations/{id}"), Some(&agent))
        .await;
    assert_eq!(
        seen.expect(200)["messages"].as_array().map(Vec::len),
        Some(8)
    );
    let answered = app
        .post(
            &agent_path(id, "messages"),
            &json!({"content": "Hi, I'm Sam. Which payment is it?"}),
            Some(&agent),
        )
        .await;
    let answered = answered.expect(200);
    assert_eq!(answered["status"], "human");
    assert_eq!(last(answered)["author"], "agent");
    let history = app
        .get(&format!("/api/chat/messages/{id}"), Some(&user))
        .await;
    let history = history.expect(200);
    assert_eq!(history["status"], "human");
    assert_eq!(
        last(history)["content"],
        "Hi, I'm Sam. Which payment is it?"
    );
    assert_eq!(last(history)["author"], "agent");
    // Someone else still cannot read it.
    app.get(&format!("/api/chat/messages/{id}"), Some(&other))
        .await
        .expect(403);

    // The user replies to the person: acknowledged, no model call.
    let reply = app
        .create(json!(id), "The one from yesterday", Some(&user))
        .await;
    assert_eq!(last(reply.expect(200))["content"], ACK_REPLY);
    assert_eq!(app.openai.request_count(), 1);

    // An admin acts as an agent: closes it; twice is a conflict, and so is
    // an agent message to a closed conversation.
    let closed = app
        .post(&agent_path(id, "close"), &json!({}), Some(&admin))
        .await;
    assert_eq!(closed.expect(200)["status"], "closed");
    let again = app
        .post(&agent_path(id, "close"), &json!({}), Some(&agent))
        .await;
    again.expect(409);
    assert_eq!(again.message(), "Conversation is already closed");
    app.post(
        &agent_path(id, "messages"),
        &json!({"content": "One more thing"}),
        Some(&agent),
    )
    .await
    .expect(409);
    let queue = app.get("/api/agent/conversations", Some(&agent)).await;
    assert_eq!(queue.expect(200).as_array().map(Vec::len), Some(0));

    // The next user message returns it to the bot.
    let back = app
        .create(json!(id), "Thanks! How do I unfreeze it?", Some(&user))
        .await;
    let back = back.expect(200);
    assert_eq!(back["status"], "bot");
    assert_eq!(last(back)["content"], "Hello from the fake model.");
    assert_eq!(app.openai.request_count(), 2);
}

#[tokio::test]
async fn consecutive_ungrounded_answers_hand_over_and_a_grounded_one_resets_the_count() {
    let app = app_with(&[("HANDOFF_AFTER_UNGROUNDED", "2")]).await;
    let (user, _) = app.signup("customer@example.com").await;
    let hits = app.pinecone.hits();
    app.pinecone.set_hits(json!([]));
    let first = app
        .create(Value::Null, "Can I pay my rent in doubloons?", Some(&user))
        .await;
    let id = first.expect(200)["conversation_id"].as_i64().expect("id");
    assert_eq!(first.expect(200)["status"], "bot");
    // A grounded answer in between: the count starts again.
    app.pinecone.set_hits(hits);
    let grounded = app
        .create(json!(id), "How do I freeze my card?", Some(&user))
        .await;
    assert_eq!(last(grounded.expect(200))["grounded"], true);
    app.pinecone.set_hits(json!([]));
    let second = app
        .create(json!(id), "And in pieces of eight?", Some(&user))
        .await;
    assert_eq!(second.expect(200)["status"], "bot");
    assert_eq!(app.openai.request_count(), 3);
    // The second ungrounded turn in a row: handed over, no model call.
    let third = app
        .create(json!(id), "What about gold bars?", Some(&user))
        .await;
    let third = third.expect(200);
    assert_eq!(third["status"], "pending_human");
    assert_eq!(last(third)["content"], HANDOFF_REPLY);
    assert_eq!(app.openai.request_count(), 3);
}

#[tokio::test]
async fn without_a_knowledge_base_ungrounded_turns_do_not_hand_over() {
    // The local knowledge base, empty: every turn is ungrounded, which says
    // nothing about the questions.
    let app = app_with(&[("RETRIEVAL_BACKEND", "local")]).await;
    let mut id = Value::Null;
    for question in ["How do I freeze my card?", "And unfreeze it?", "Fees?"] {
        let answer = app.create(id.clone(), question, None).await;
        let answer = answer.expect(200);
        assert_eq!(answer["status"], "bot");
        assert_eq!(last(answer)["grounded"], false);
        id = answer["conversation_id"].clone();
    }
    assert_eq!(app.openai.request_count(), 3);
    // 0 turns the ungrounded trigger off where there is a knowledge base.
    let app = app_with(&[("HANDOFF_AFTER_UNGROUNDED", "0")]).await;
    app.pinecone.set_hits(json!([]));
    let mut id = Value::Null;
    for question in ["Doubloons?", "Pieces of eight?", "Gold bars?"] {
        let answer = app.create(id.clone(), question, None).await;
        assert_eq!(answer.expect(200)["status"], "bot");
        id = answer.expect(200)["conversation_id"].clone();
    }
}

#[tokio::test]
async fn the_owner_asks_for_a_person_through_the_api_and_bad_requests_are_clear() {
    let app = app_with(&[]).await;
    let (user, _) = app.signup("customer@example.com").await;
    let (other, _) = app.signup("other@example.com").await;
    let id = app.new_conversation(Some(&user)).await;
    let path = format!("/api/chat/handoff/{id}");

    app.post(&path, &json!({"reason": 42}), Some(&user))
        .await
        .expect(422);
    let long = "x".repeat(501);
    let too_long = app.post(&path, &json!({"reason": long}), Some(&user)).await;
    too_long.expect(422);
    assert_eq!(
        too_long.data()["errors"][0]["loc"],
        json!(["body", "reason"])
    );
    let garbage = app
        .send(
            app.client
                .post(format!("{}{path}", app.address))
                .bearer_auth(&user)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    garbage.expect(422);
    app.post(&path, &json!({}), Some(&other)).await.expect(403);
    app.post(&path, &json!({}), None).await.expect(403);
    app.post("/api/chat/handoff/999999", &json!({}), Some(&user))
        .await
        .expect(404);
    app.post("/api/chat/handoff/abc", &json!({}), Some(&user))
        .await
        .expect(422);
    assert_eq!(app.count_rows("messages").await, 3);

    let handed = app
        .post(&path, &json!({"reason": "Dispute a payment"}), Some(&user))
        .await;
    let handed = handed.expect(200);
    assert_eq!(handed["status"], "pending_human");
    assert_eq!(last(handed)["content"], HANDOFF_REPLY);
    let again = app.post(&path, &json!({}), Some(&user)).await;
    again.expect(409);
    // With no body at all, on another conversation.
    let second = app.new_conversation(Some(&user)).await;
    let empty = app
        .send(
            app.client
                .post(format!("{}/api/chat/handoff/{second}", app.address))
                .bearer_auth(&user),
        )
        .await;
    assert_eq!(empty.expect(200)["status"], "pending_human");
    // A deleted conversation cannot be handed over.
    let third = app.new_conversation(Some(&user)).await;
    app.post(
        &format!("/api/chat/delete/{third}"),
        &json!({}),
        Some(&user),
    )
    .await
    .expect(200);
    app.post(
        &format!("/api/chat/handoff/{third}"),
        &json!({}),
        Some(&user),
    )
    .await
    .expect(400);
}

#[tokio::test]
async fn agent_routes_refuse_bad_input_with_clear_errors() {
    let app = app_with(&[]).await;
    let (agent, _) = app.signup(AGENT).await;
    let (user, _) = app.signup("customer@example.com").await;
    let id = app.new_conversation(Some(&user)).await;
    let message = json!({"content": "Hello"});

    for (path, body) in [
        (agent_path(999_999, "messages"), message.clone()),
        (agent_path(999_999, "close"), json!({})),
    ] {
        app.post(&path, &body, Some(&agent)).await.expect(404);
        app.post(&path, &body, Some(&user)).await.expect(403);
        app.post(&path, &body, None).await.expect(401);
    }
    app.get("/api/agent/conversations/999999", Some(&agent))
        .await
        .expect(404);
    app.post("/api/agent/conversations/x/close", &json!({}), Some(&agent))
        .await
        .expect(422);
    for query in [
        "status=waiting",
        "limit=0",
        "limit=501",
        "offset=-1",
        "limit=abc",
    ] {
        let answer = app
            .get(&format!("/api/agent/conversations?{query}"), Some(&agent))
            .await;
        answer.expect(422);
        assert_eq!(answer.data()["errors"][0]["loc"][0], "query", "{query}");
    }
    for body in [
        json!({"content": ""}),
        json!({"content": "   "}),
        json!({"content": 7}),
        json!({}),
        json!({"content": "x".repeat(8001)}),
    ] {
        app.post(&agent_path(id, "messages"), &body, Some(&agent))
            .await
            .expect(422);
    }
    // A conversation with the bot cannot be closed; an agent may step in.
    let bot = app
        .post(&agent_path(id, "close"), &json!({}), Some(&agent))
        .await;
    bot.expect(409);
    assert_eq!(bot.message(), "Conversation is with the bot, not a person");
    let stepped_in = app
        .post(&agent_path(id, "messages"), &message, Some(&agent))
        .await;
    assert_eq!(stepped_in.expect(200)["status"], "human");
    // Deleted by its owner: 400 for agents too.
    app.post(&format!("/api/chat/delete/{id}"), &json!({}), Some(&user))
        .await
        .expect(200);
    app.post(&agent_path(id, "messages"), &message, Some(&agent))
        .await
        .expect(400);
    // Nothing was stored by the refused requests.
    assert_eq!(app.count_rows("messages").await, 4);
}

/// Delivered events by id: how many times each was accepted.
fn accepted_by_id(receiver: &FakeReceiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for delivery in receiver.accepted() {
        *counts.entry(delivery.id().to_string()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn webhook_events_are_signed_retried_after_failures_and_delivered_once() {
    let receiver = FakeReceiver::start(SECRET).await;
    receiver.fail_next(2);
    let app = app_with_webhooks(&receiver).await;
    let (user, user_id) = app.signup("customer@example.com").await;
    let (agent, _) = app.signup(AGENT).await;
    let first = app
        .create(Value::Null, "How do I freeze my card?", Some(&user))
        .await;
    let first = first.expect(200).clone();
    let id = first["conversation_id"].as_i64().expect("id");
    let answer_id = last(&first)["id"].as_i64().expect("id");
    app.create(json!(id), "Let me speak to an agent", Some(&user))
        .await
        .expect(200);

    // Two 500s, then accepted: three attempts of the same event.
    receiver
        .wait_until(Duration::from_secs(20), |deliveries| {
            deliveries.iter().any(|d| d.status == 200)
        })
        .await;
    let attempts = receiver.deliveries();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert!(attempts.iter().all(|d| d.signature_ok));
    assert!(attempts.iter().all(|d| d.id() == attempts[0].id()));
    assert!(
        attempts
            .iter()
            .all(|d| d.event_id_header.as_deref() == Some(d.id()))
    );
    let now = chrono::Utc::now().timestamp();
    assert!(attempts.iter().all(|d| (now - d.t).abs() < 60));
    let event = &attempts[2].body;
    assert_eq!(event["type"], "handoff.requested");
    assert!(
        event["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_"))
    );
    assert!(event["created_at"].is_string());
    let data = &event["data"];
    assert_eq!(data["conversation"]["id"], id);
    assert_eq!(data["conversation"]["status"], "pending_human");
    assert_eq!(data["user"]["id"], user_id);
    assert_eq!(data["user"]["email"], "customer@example.com");
    assert_eq!(data["anonymous"], false);
    assert_eq!(data["trigger"], "user_request");
    assert_eq!(data["reason"], "Let me speak to an agent");
    // The model wrote the summary (the fake answers every request alike).
    assert_eq!(data["summary"], "Hello from the fake model.");
    let transcript = data["transcript"].as_array().expect("transcript");
    assert_eq!(transcript.len(), 3);
    assert_eq!(transcript[2]["content"], "Let me speak to an agent");

    // Feedback and a close: one event each.
    app.post(
        &format!("/api/chat/messages/{answer_id}/feedback"),
        &json!({"rating": "down", "reason": "Too vague"}),
        Some(&user),
    )
    .await
    .expect(200);
    app.post(&agent_path(id, "close"), &json!({}), Some(&agent))
        .await
        .expect(200);
    receiver
        .wait_until(Duration::from_secs(20), |_| {
            accepted_by_id(&receiver).len() == 3
        })
        .await;
    let accepted = receiver.accepted();
    let feedback = accepted
        .iter()
        .find(|d| d.kind() == "feedback.created")
        .expect("feedback.created");
    assert_eq!(feedback.body["data"]["rating"], "down");
    assert_eq!(feedback.body["data"]["reason"], "Too vague");
    assert_eq!(feedback.body["data"]["message"]["id"], answer_id);
    assert_eq!(
        feedback.body["data"]["message"]["content"],
        "Hello from the fake model."
    );
    let closed = accepted
        .iter()
        .find(|d| d.kind() == "conversation.closed")
        .expect("conversation.closed");
    assert_eq!(closed.body["data"]["conversation"]["status"], "closed");
    assert_eq!(closed.body["data"]["closed_by"]["email"], AGENT);
    assert!(accepted.iter().all(|d| d.signature_ok));
    // Each accepted once, and the outbox says so.
    assert!(accepted_by_id(&receiver).values().all(|n| *n == 1));
    wait_all_delivered(&app.db().await).await;
}

/// Waits until every event in the outbox is marked delivered (the server
/// marks it just after the receiver answers).
async fn wait_all_delivered(db: &eloquent::storage::Database) {
    const SQL: &str = "SELECT COUNT(*) FROM webhook_outbox WHERE delivered_ms IS NULL";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let undelivered: i64 = match db {
            eloquent::storage::Database::Sqlite(pool) => {
                sqlx::query_scalar(SQL).fetch_one(pool).await
            }
            eloquent::storage::Database::Postgres(pool) => {
                sqlx::query_scalar(SQL).fetch_one(pool).await
            }
        }
        .expect("count");
        if undelivered == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{undelivered} events still undelivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failed_summary_does_not_hold_the_event_back() {
    let receiver = FakeReceiver::start(SECRET).await;
    let app = app_with_webhooks(&receiver).await;
    let id = app.new_conversation(None).await;
    app.openai.behave(Behaviour::Status(500));
    app.post(&format!("/api/chat/handoff/{id}"), &json!({}), None)
        .await
        .expect(200);
    receiver
        .wait_until(Duration::from_secs(20), |deliveries| !deliveries.is_empty())
        .await;
    let event = &receiver.accepted()[0].body;
    assert_eq!(event["data"]["summary"], Value::Null);
    assert_eq!(event["data"]["user"], Value::Null);
    assert_eq!(event["data"]["anonymous"], true);
    assert_eq!(event["data"]["trigger"], "api");
}

#[tokio::test]
async fn an_undelivered_event_is_delivered_after_the_server_restarts() {
    let receiver = FakeReceiver::start(SECRET).await;
    receiver.set_failing(true);
    let mut app = app_with_webhooks(&receiver).await;
    let id = app.new_conversation(None).await;
    app.post(&format!("/api/chat/handoff/{id}"), &json!({}), None)
        .await
        .expect(200);
    receiver
        .wait_until(Duration::from_secs(20), |deliveries| !deliveries.is_empty())
        .await;
    let event_id = receiver.deliveries()[0].id().to_string();
    app.stop().await;

    // Down while no server runs; back up before the next one starts.
    receiver.set_failing(false);
    let restarted = try_spawn_app_on(
        tempfile::tempdir().expect("tempdir"),
        &app.database_url,
        &webhook_settings(&receiver),
    )
    .await
    .expect("restarted server");
    receiver
        .wait_until(Duration::from_secs(30), |_| !receiver.accepted().is_empty())
        .await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].id(), event_id);
    assert!(accepted[0].signature_ok);
    wait_all_delivered(&restarted.db().await).await;
}

#[tokio::test]
async fn two_servers_deliver_each_event_once() {
    let receiver = FakeReceiver::start(SECRET).await;
    let first = app_with_webhooks(&receiver).await;
    let second = try_spawn_app_on(
        tempfile::tempdir().expect("tempdir"),
        &first.database_url,
        &webhook_settings(&receiver),
    )
    .await
    .expect("second server");
    let mut handed = 0;
    for server in [&first, &second, &first, &second, &first, &second] {
        let id = server.new_conversation(None).await;
        server
            .post(&format!("/api/chat/handoff/{id}"), &json!({}), None)
            .await
            .expect(200);
        handed += 1;
    }
    receiver
        .wait_until(Duration::from_secs(30), |_| {
            accepted_by_id(&receiver).len() == handed
        })
        .await;
    // Both servers poll the same outbox: still one attempt per event.
    assert_eq!(receiver.deliveries().len(), handed);
    assert!(accepted_by_id(&receiver).values().all(|n| *n == 1));
}

#[tokio::test]
async fn webhook_settings_are_checked_at_startup() {
    for (overrides, variable) in [
        (
            vec![("WEBHOOK_URL", "http://127.0.0.1:9/hook")],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URL", "ftp://example.com/"),
                ("WEBHOOK_SECRET", "s"),
            ],
            "WEBHOOK_URL",
        ),
        (
            vec![
                ("WEBHOOK_URL", "http://127.0.0.1:9/hook"),
                ("WEBHOOK_SECRET", "s"),
                ("WEBHOOK_MAX_ATTEMPTS", "0"),
            ],
            "WEBHOOK_MAX_ATTEMPTS",
        ),
        (
            vec![("HANDOFF_AFTER_UNGROUNDED", "-1")],
            "HANDOFF_AFTER_UNGROUNDED",
        ),
    ] {
        let vars: HashMap<&str, &str> = overrides.into_iter().collect();
        let err = eloquent::Config::from_lookup(|name| vars.get(name).map(|v| v.to_string()))
            .expect_err("refused");
        assert_eq!(err.variable, variable);
    }
}

/// `eloquent webhooks ARGS` on `app`'s database: (exit ok, stdout).
async fn webhooks_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_eloquent"))
        .arg("webhooks")
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        // No `.env` of the working copy's.
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run eloquent webhooks");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn an_event_given_up_after_its_last_attempt_is_listed_and_sent_again_on_request() {
    let receiver = FakeReceiver::start(SECRET).await;
    receiver.set_failing(true);
    let app = app_with(&[
        ("WEBHOOK_URL", receiver.url.as_str()),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_RETRY_BASE_SECS", "0.02"),
        ("WEBHOOK_MAX_ATTEMPTS", "2"),
    ])
    .await;
    let id = app.new_conversation(None).await;
    app.post(&format!("/api/chat/handoff/{id}"), &json!({}), None)
        .await
        .expect(200);
    receiver
        .wait_until(Duration::from_secs(20), |deliveries| deliveries.len() == 2)
        .await;
    // Given up: listed as failed with its last error, no third attempt.
    let failed = loop {
        let (ok, out) = webhooks_cli(&app, &["list", "--failed", "--json"]).await;
        assert!(ok);
        let listed: Value = serde_json::from_str(&out).expect("json");
        if listed["events"]
            .as_array()
            .is_some_and(|events| !events.is_empty())
        {
            break listed["events"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(failed["id"], receiver.deliveries()[0].id());
    assert_eq!(failed["attempts"], 2);
    assert_eq!(failed["last_error"], "the receiver answered 500");
    let (ok, out) = webhooks_cli(&app, &["list", "--json"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["events"],
        json!([])
    );
    // An unknown id is an error; --failed sends it again, once.
    assert!(!webhooks_cli(&app, &["retry", "evt_unknown"]).await.0);
    receiver.set_failing(false);
    assert!(webhooks_cli(&app, &["retry", "--failed"]).await.0);
    receiver
        .wait_until(Duration::from_secs(20), |_| !receiver.accepted().is_empty())
        .await;
    assert_eq!(
        receiver.accepted()[0].id(),
        failed["id"].as_str().expect("id")
    );
    assert_eq!(receiver.deliveries().len(), 3);
}
