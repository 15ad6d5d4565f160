//! Conversation routes: messages, list, delete, summarize, and the ownership
//! rule across them (including `/create` with an existing id).

use eloquent::storage::Database;
use serde_json::{Value, json};

use crate::fakes::Behaviour;
use crate::helpers::{Answer, JWT_SECRET, TestApp, now, python_style_token, spawn_app};

const FIRST_QUESTION: &str = "How do I freeze my card?";
const FAKE_ANSWER: &str = "Hello from the fake model.";

fn messages_path(id: impl std::fmt::Display) -> String {
    format!("/api/chat/messages/{id}")
}

fn summarize_path(id: impl std::fmt::Display) -> String {
    format!("/api/chat/summarize/{id}")
}

fn delete_path(id: impl std::fmt::Display) -> String {
    format!("/api/chat/delete/{id}")
}

/// Reads a conversation row directly: (user_id, is_deleted).
async fn conversation_row(app: &TestApp, id: i64) -> Option<(Option<i64>, bool)> {
    const SQL: &str = "SELECT user_id, is_deleted FROM conversations WHERE id = $1";
    let db = app.db().await;
    let row = match &db {
        Database::Sqlite(pool) => sqlx::query_as(SQL).bind(id).fetch_optional(pool).await,
        Database::Postgres(pool) => sqlx::query_as(SQL).bind(id).fetch_optional(pool).await,
    };
    db.close().await;
    row.expect("query conversation")
}

async fn list(app: &TestApp, query: &str, token: &str) -> Vec<Value> {
    let answer = app
        .get(&format!("/api/chat/conversations{query}"), Some(token))
        .await;
    answer.expect(200)["conversations"]
        .as_array()
        .expect("conversations")
        .clone()
}

async fn listed_ids(app: &TestApp, query: &str, token: &str) -> Vec<i64> {
    list(app, query, token)
        .await
        .iter()
        .map(|conversation| conversation["id"].as_i64().expect("id"))
        .collect()
}

fn assert_error(answer: &Answer, status: u16, message: &str) {
    assert_eq!(
        answer.expect(status)["message"],
        message,
        "body: {}",
        answer.body
    );
}

/// The four conversation-scoped operations, in an order that leaves delete last.
async fn every_operation(
    app: &TestApp,
    id: i64,
    token: Option<&str>,
) -> Vec<(&'static str, Answer)> {
    vec![
        ("messages", app.get(&messages_path(id), token).await),
        (
            "summarize",
            app.post(&summarize_path(id), &json!({}), token).await,
        ),
        (
            "create",
            app.create(json!(id.to_string()), "Follow-up question", token)
                .await,
        ),
        (
            "delete",
            app.post(&delete_path(id), &json!({}), token).await,
        ),
    ]
}

/// Every operation on `id` by `token` is 403 "Forbidden" and changes nothing.
async fn assert_forbidden_everywhere(app: &TestApp, id: i64, token: Option<&str>) {
    let rows_before = app.stored_messages(id).await;
    let model_calls = app.openai.request_count();
    for (operation, answer) in every_operation(app, id, token).await {
        assert_eq!(answer.status.as_u16(), 403, "{operation}: {}", answer.body);
        assert_eq!(answer.data()["message"], "Forbidden", "{operation}");
    }
    assert_eq!(
        app.stored_messages(id).await,
        rows_before,
        "a forbidden call changed the history"
    );
    assert_eq!(
        app.openai.request_count(),
        model_calls,
        "a forbidden call reached the model"
    );
    assert_eq!(
        conversation_row(app, id).await.map(|(_, deleted)| deleted),
        Some(false)
    );
}

/// Every operation on `id` by `token` succeeds.
async fn assert_usable_everywhere(app: &TestApp, id: i64, token: Option<&str>) {
    for (operation, answer) in every_operation(app, id, token).await {
        assert_eq!(answer.status.as_u16(), 200, "{operation}: {}", answer.body);
        answer.data();
    }
    assert_eq!(
        conversation_row(app, id).await.map(|(_, deleted)| deleted),
        Some(true)
    );
}

// --- GET /api/chat/messages/{id} ---------------------------------------------

#[tokio::test]
async fn messages_returns_the_client_view() {
    let app = spawn_app().await;
    let created = app.create(Value::Null, FIRST_QUESTION, None).await;
    let created = created.expect(200).clone();
    let id = created["conversation_id"].as_i64().expect("id");
    let answer = app.get(&messages_path(id), None).await;
    let data = answer.expect(200);
    assert_eq!(data["conversation_id"], id);
    assert_eq!(data["messages"], created["messages"]);
    let messages = data["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"], FIRST_QUESTION);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], FAKE_ANSWER);
    for message in messages {
        assert!(message["id"].is_i64(), "{message}");
        assert!(message["created_at"].is_string(), "{message}");
    }
    // The stuffed prompt and the system prompt stay server-side.
    let raw = answer.body.to_string();
    assert!(
        !raw.contains("Source:") && !raw.contains("You are Eloquent"),
        "{raw}"
    );
}

#[tokio::test]
async fn messages_of_an_unknown_or_negative_id_is_404() {
    let app = spawn_app().await;
    app.new_conversation(None).await;
    for id in ["999999", "-1", "0"] {
        let answer = app.get(&messages_path(id), None).await;
        assert_error(&answer, 404, "Conversation not found");
    }
}

#[tokio::test]
async fn non_integer_ids_are_422_on_every_route() {
    let app = spawn_app().await;
    for id in ["abc", "1.5", "99999999999999999999", "1e3"] {
        let answers = [
            app.get(&messages_path(id), None).await,
            app.post(&summarize_path(id), &json!({}), None).await,
            app.post(&delete_path(id), &json!({}), None).await,
        ];
        for answer in answers {
            let data = answer.expect(422);
            assert_eq!(data["message"], "Validation error", "{id}");
            assert_eq!(data["errors"][0]["loc"][0], "path", "{id}: {data}");
        }
    }
}

#[tokio::test]
async fn unknown_ids_are_404_on_summarize_and_delete() {
    let app = spawn_app().await;
    let answer = app.post(&summarize_path(424_242), &json!({}), None).await;
    assert_error(&answer, 404, "Conversation not found");
    let answer = app.post(&delete_path(424_242), &json!({}), None).await;
    assert_error(&answer, 404, "Conversation not found");
    assert_eq!(app.openai.request_count(), 0);
}

// --- the ownership rule ------------------------------------------------------

#[tokio::test]
async fn owner_can_use_an_owned_conversation() {
    let app = spawn_app().await;
    let (ada, ada_id) = app.signup("ada@example.com").await;
    let id = app.new_conversation(Some(&ada)).await;
    assert_eq!(
        conversation_row(&app, id).await,
        Some((Some(ada_id), false))
    );
    assert_usable_everywhere(&app, id, Some(&ada)).await;
}

#[tokio::test]
async fn other_users_are_forbidden_from_an_owned_conversation() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let (bob, _) = app.signup("bob@example.com").await;
    let id = app.new_conversation(Some(&ada)).await;
    assert_forbidden_everywhere(&app, id, Some(&bob)).await;
    // Still intact for the owner.
    app.get(&messages_path(id), Some(&ada)).await.expect(200);
}

#[tokio::test]
async fn anonymous_callers_are_forbidden_from_an_owned_conversation() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let id = app.new_conversation(Some(&ada)).await;
    // Deliberate difference from the Python version, which let them through.
    assert_forbidden_everywhere(&app, id, None).await;
    assert_forbidden_everywhere(&app, id, Some("null")).await;
    app.get(&messages_path(id), Some(&ada)).await.expect(200);
}

#[tokio::test]
async fn anonymous_conversations_are_usable_by_anyone() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let (bob, _) = app.signup("bob@example.com").await;
    let first = app.new_conversation(None).await;
    assert_usable_everywhere(&app, first, None).await;
    let second = app.new_conversation(None).await;
    assert_usable_everywhere(&app, second, Some(&ada)).await;
    // Used by a signed-in user, it stays anonymous (and out of their list).
    let third = app.new_conversation(None).await;
    app.create(json!(third), "Another question", Some(&ada))
        .await
        .expect(200);
    assert_eq!(conversation_row(&app, third).await, Some((None, false)));
    assert!(!listed_ids(&app, "", &ada).await.contains(&third));
    assert_usable_everywhere(&app, third, Some(&bob)).await;
}

#[tokio::test]
async fn bearer_null_and_garbage_tokens_are_anonymous() {
    let app = spawn_app().await;
    for token in ["null", "undefined", "not-a-jwt", "a.b.c"] {
        // A new conversation, anonymous.
        let answer = app.create(Value::Null, FIRST_QUESTION, Some(token)).await;
        let id = answer.expect(200)["conversation_id"].as_i64().expect("id");
        assert_eq!(
            conversation_row(&app, id).await,
            Some((None, false)),
            "{token}"
        );
        // Usable afterwards with the same header, and without any.
        app.get(&messages_path(id), Some(token)).await.expect(200);
        app.get(&messages_path(id), None).await.expect(200);
        app.create(json!(id), "Follow-up", Some(token))
            .await
            .expect(200);
    }
    // On a required-auth route the same header is a 401, not an anonymous call.
    let answer = app.get("/api/chat/conversations", Some("null")).await;
    answer.expect(401);
}

#[tokio::test]
async fn expired_token_is_401_on_optional_auth_routes() {
    let app = spawn_app().await;
    let (ada, ada_id) = app.signup("ada@example.com").await;
    let owned = app.new_conversation(Some(&ada)).await;
    let anonymous = app.new_conversation(None).await;
    let expired = python_style_token(
        &ada_id.to_string(),
        "ada@example.com",
        now() - 3600,
        JWT_SECRET,
        jsonwebtoken::Algorithm::HS256,
    );
    for id in [owned, anonymous] {
        for (operation, answer) in every_operation(&app, id, Some(&expired)).await {
            assert_eq!(
                answer.status.as_u16(),
                401,
                "{operation} on {id}: {}",
                answer.body
            );
            assert_eq!(answer.data()["message"], "Token expired", "{operation}");
        }
    }
    let answer = app
        .create(Value::Null, FIRST_QUESTION, Some(&expired))
        .await;
    assert_error(&answer, 401, "Token expired");
    let answer = app.get("/api/chat/conversations", Some(&expired)).await;
    assert_error(&answer, 401, "Token expired");
    // Nothing happened to either conversation.
    for id in [owned, anonymous] {
        assert_eq!(
            conversation_row(&app, id).await.map(|(_, deleted)| deleted),
            Some(false)
        );
        assert_eq!(app.stored_messages(id).await.len(), 3);
    }
    assert_eq!(app.openai.request_count(), 2);
}

// --- POST /api/chat/delete/{id} ----------------------------------------------

#[tokio::test]
async fn delete_is_soft_and_final() {
    let app = spawn_app().await;
    let (ada, ada_id) = app.signup("ada@example.com").await;
    let kept = app.new_conversation(Some(&ada)).await;
    let id = app.new_conversation(Some(&ada)).await;
    let answer = app.post(&delete_path(id), &json!({}), Some(&ada)).await;
    assert_eq!(answer.expect(200)["message"], "Conversation deleted");

    let again = app.post(&delete_path(id), &json!({}), Some(&ada)).await;
    assert_error(&again, 400, "Conversation already deleted");
    let messages = app.get(&messages_path(id), Some(&ada)).await;
    assert_error(&messages, 400, "Conversation already deleted");
    let summary = app.post(&summarize_path(id), &json!({}), Some(&ada)).await;
    summary.expect(400);
    let model_calls = app.openai.request_count();
    for form in [json!(id), json!(id.to_string())] {
        let create = app
            .create(form, "Can I still write here?", Some(&ada))
            .await;
        assert_error(&create, 400, "Conversation is deleted");
    }
    assert_eq!(
        app.openai.request_count(),
        model_calls,
        "a deleted conversation reached the model"
    );

    assert_eq!(listed_ids(&app, "", &ada).await, [kept]);
    // Soft delete: the rows are still there.
    assert_eq!(conversation_row(&app, id).await, Some((Some(ada_id), true)));
    let rows = app.stored_messages(id).await;
    let roles: Vec<&str> = rows.iter().map(|(role, _, _)| role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
}

#[tokio::test]
async fn deleted_conversations_stay_forbidden_to_others() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let (bob, _) = app.signup("bob@example.com").await;
    let id = app.new_conversation(Some(&ada)).await;
    app.post(&delete_path(id), &json!({}), Some(&ada))
        .await
        .expect(200);
    // Ownership is checked before the deleted flag: others learn nothing.
    for token in [Some(bob.as_str()), None] {
        let answer = app.get(&messages_path(id), token).await;
        assert_error(&answer, 403, "Forbidden");
        let answer = app.post(&delete_path(id), &json!({}), token).await;
        assert_error(&answer, 403, "Forbidden");
    }
}

// --- GET /api/chat/conversations ---------------------------------------------

#[tokio::test]
async fn list_requires_authentication() {
    let app = spawn_app().await;
    let answer = app.get("/api/chat/conversations", None).await;
    assert_error(&answer, 401, "Not authenticated");
    let answer = app.get("/api/chat/conversations?user_id=1", None).await;
    assert_error(&answer, 401, "Not authenticated");
}

#[tokio::test]
async fn list_shows_only_the_callers_live_conversations_newest_first() {
    let app = spawn_app().await;
    let (ada, ada_id) = app.signup("ada@example.com").await;
    let (bob, bob_id) = app.signup("bob@example.com").await;
    let a1 = app.new_conversation(Some(&ada)).await;
    let b1 = app.new_conversation(Some(&bob)).await;
    let a2 = app.new_conversation(Some(&ada)).await;
    let _anonymous = app.new_conversation(None).await;
    let a3 = app.new_conversation(Some(&ada)).await;
    let a4 = app.new_conversation(Some(&ada)).await;
    app.post(&delete_path(a3), &json!({}), Some(&ada))
        .await
        .expect(200);
    // Continuing an older conversation does not reorder the list.
    app.create(json!(a1), "Follow-up", Some(&ada))
        .await
        .expect(200);

    let conversations = list(&app, "", &ada).await;
    let ids: Vec<i64> = conversations
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [a4, a2, a1]);
    for conversation in &conversations {
        let object = conversation.as_object().expect("object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_at",
                "id",
                "is_deleted",
                "short_name",
                "status",
                "updated_at",
                "user_id"
            ],
            "{conversation}"
        );
        assert_eq!(conversation["user_id"], ada_id);
        assert_eq!(conversation["is_deleted"], false);
        assert_eq!(conversation["short_name"], FIRST_QUESTION);
        assert!(conversation["created_at"].is_string() && conversation["updated_at"].is_string());
    }
    let bobs = list(&app, "", &bob).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["id"], b1);
    assert_eq!(bobs[0]["user_id"], bob_id);
}

#[tokio::test]
async fn list_ignores_the_user_id_query_parameter() {
    let app = spawn_app().await;
    let (ada, ada_id) = app.signup("ada@example.com").await;
    let (bob, bob_id) = app.signup("bob@example.com").await;
    let ada_conversation = app.new_conversation(Some(&ada)).await;
    let bob_conversation = app.new_conversation(Some(&bob)).await;
    for query in [
        format!("?user_id={bob_id}"),
        format!("?user_id={ada_id}"),
        "?user_id=123".to_string(),
        "?user_id=".to_string(),
        "?user_id=abc".to_string(),
    ] {
        assert_eq!(
            listed_ids(&app, &query, &ada).await,
            [ada_conversation],
            "{query}"
        );
        assert_eq!(
            listed_ids(&app, &query, &bob).await,
            [bob_conversation],
            "{query}"
        );
    }
}

#[tokio::test]
async fn list_pages_with_limit_and_offset() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.new_conversation(Some(&ada)).await);
    }
    ids.reverse(); // newest first
    assert_eq!(listed_ids(&app, "", &ada).await, ids);
    assert_eq!(listed_ids(&app, "?limit=2&offset=1", &ada).await, ids[1..3]);
    assert_eq!(listed_ids(&app, "?limit=2", &ada).await, ids[..2]);
    assert_eq!(listed_ids(&app, "?offset=3", &ada).await, ids[3..]);
    assert_eq!(listed_ids(&app, "?limit=10&offset=2", &ada).await, ids[2..]);
    assert!(listed_ids(&app, "?offset=10", &ada).await.is_empty());
    assert!(listed_ids(&app, "?limit=0", &ada).await.is_empty());
}

#[tokio::test]
async fn list_rejects_bad_paging_values() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    app.new_conversation(Some(&ada)).await;
    for query in [
        "?limit=-1",
        "?limit=abc",
        "?offset=-1",
        "?offset=abc",
        "?limit=1.5",
    ] {
        let answer = app
            .get(&format!("/api/chat/conversations{query}"), Some(&ada))
            .await;
        let data = answer.expect(422);
        assert_eq!(data["message"], "Validation error", "{query}");
        assert_eq!(data["errors"][0]["loc"][0], "query", "{query}: {data}");
    }
}

// --- POST /api/chat/summarize/{id} -------------------------------------------

#[tokio::test]
async fn summarize_asks_the_model_with_the_typed_transcript() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let id = app.new_conversation(Some(&ada)).await;
    app.openai.answer(&["Second", " answer."]);
    app.create(json!(id), "And my PIN?", Some(&ada))
        .await
        .expect(200);
    app.openai
        .answer(&["The customer", " asked about", " cards."]);
    let answer = app.post(&summarize_path(id), &json!({}), Some(&ada)).await;
    assert_eq!(
        answer.expect(200)["summary"],
        "The customer asked about cards."
    );

    let requests = app.openai.requests();
    assert_eq!(requests.len(), 3);
    let request = &requests[2];
    assert_eq!(request["stream"], false, "{request}");
    assert_eq!(request["model"], "fake-model");
    let text: String = request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| message["content"].as_str().expect("content").to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let transcript = format!(
        "user: {FIRST_QUESTION}\n\nassistant: {FAKE_ANSWER}\n\nuser: And my PIN?\n\nassistant: Second answer."
    );
    assert!(text.contains(&transcript), "{text}");
    assert!(
        !text.contains("Source:"),
        "stuffed prompt in the summary request: {text}"
    );
    // Summarizing does not add to the conversation.
    assert_eq!(app.stored_messages(id).await.len(), 5);
}

#[tokio::test]
async fn summarize_upstream_failure_is_502() {
    let app = spawn_app().await;
    let id = app.new_conversation(None).await;
    app.openai.behave(Behaviour::Status(500));
    let answer = app.post(&summarize_path(id), &json!({}), None).await;
    assert_error(&answer, 502, "Upstream model error");
    assert!(!answer.body.to_string().contains("sk-upstream-detail"));
    app.openai.behave(Behaviour::Status(401));
    let answer = app.post(&summarize_path(id), &json!({}), None).await;
    assert_error(&answer, 502, "Upstream model error");
}

#[tokio::test]
async fn every_stored_message_moves_updated_at_and_unnamed_conversations_get_named() {
    let app = spawn_app().await;
    let (ada, _) = app.signup("ada@example.com").await;
    let id = app.new_conversation(Some(&ada)).await;
    let before = list(&app, "", &ada).await;
    let first_updated = before[0]["updated_at"]
        .as_str()
        .expect("updated_at")
        .to_owned();
    // A conversation stored without a name (as older rows are) is named
    // after the next message typed into it.
    let db = app.db().await;
    let unnamed = "UPDATE conversations SET short_name = NULL WHERE id = $1";
    let cleared = match &db {
        Database::Sqlite(pool) => sqlx::query(unnamed)
            .bind(id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        Database::Postgres(pool) => sqlx::query(unnamed)
            .bind(id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
    };
    assert_eq!(cleared.expect("clear short_name"), 1);
    db.close().await;

    app.create(json!(id), "  Where is   my statement? ", Some(&ada))
        .await
        .expect(200);

    let after = list(&app, "", &ada).await;
    assert_eq!(after[0]["id"], id);
    assert_eq!(after[0]["short_name"], "Where is my statement?");
    let updated = after[0]["updated_at"].as_str().expect("updated_at");
    let parse = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    };
    assert!(
        parse(updated) > parse(&first_updated),
        "updated_at did not move: {first_updated} then {updated}"
    );
    // The stored answer (the last message) set it.
    let messages = app
        .get(&format!("/api/chat/messages/{id}"), Some(&ada))
        .await;
    let last = messages.expect(200)["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["created_at"].as_str())
        .expect("last message")
        .to_owned();
    assert_eq!(parse(updated), parse(&last));
}
