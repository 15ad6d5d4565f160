//! Storage under load and across processes: concurrent turns lose nothing,
//! two server processes share one database.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::fakes::{Behaviour, FakeOpenAi, FakePinecone};
use crate::helpers::{JWT_SECRET, read_sse, spawn_app, test_database_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_turns_over_fifty_conversations_lose_nothing() {
    let app = spawn_app().await;
    app.openai.behave(Behaviour::EchoQuestion);
    let mut conversations = Vec::new();
    for i in 0..50 {
        let answer = app
            .create(Value::Null, &format!("seed for conversation c{i}"), None)
            .await;
        conversations.push(answer.expect(200)["conversation_id"].as_i64().expect("id"));
    }
    let client = reqwest::Client::new();
    let statuses: Vec<(usize, u16, Value)> = futures::stream::iter(0..500)
        .map(|turn| {
            let client = client.clone();
            let conversation = conversations[turn % 50];
            let address = app.address.clone();
            async move {
                let response = client
                    .post(format!("{address}/api/chat/create"))
                    .json(&json!({"conversation_id": conversation, "message": format!("question q{turn} here")}))
                    .send()
                    .await
                    .expect("send");
                let status = response.status().as_u16();
                (turn, status, response.json::<Value>().await.expect("json"))
            }
        })
        .buffer_unordered(500)
        .collect()
        .await;
    for (turn, status, body) in &statuses {
        assert_eq!(*status, 200, "turn {turn}: {body}");
    }
    for (index, conversation) in conversations.iter().enumerate() {
        let rows = app.stored_messages(*conversation).await;
        // system + (seed + 10 turns) × (user + assistant)
        assert_eq!(rows.len(), 1 + 11 * 2, "conversation {conversation}");
        for turn in (index..500).step_by(50) {
            let question = format!("question q{turn} here");
            let user_at = rows
                .iter()
                .position(|(role, _, typed)| {
                    role == "user" && typed.as_deref() == Some(question.as_str())
                })
                .unwrap_or_else(|| panic!("user turn {turn} lost"));
            let answer_at = rows
                .iter()
                .position(|(role, content, _)| role == "assistant" && content == &question)
                .unwrap_or_else(|| panic!("answer to turn {turn} lost"));
            assert!(
                user_at < answer_at,
                "turn {turn}: answer stored before its question"
            );
        }
    }
}

/// A server binary started as its own process, logging JSON to stdout.
struct ServerProcess {
    _child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

async fn start_server_process(
    database_url: &str,
    openai: &FakeOpenAi,
    pinecone: &FakePinecone,
) -> ServerProcess {
    // An empty working directory: no stray .env is read.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eloquent"))
        .current_dir(dir.path())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATABASE_URL", database_url)
        .env("DB_POOL_SIZE", "4")
        .env("OPENAI_API_KEY", "sk-test-key-not-real")
        .env("OPENAI_BASE_URL", &openai.base_url)
        .env("PINECONE_API_KEY", "pc-test-key")
        .env("PINECONE_HOST", &pinecone.base_url)
        .env("JWT_SECRET", JWT_SECRET)
        .env("BCRYPT_COST", "4")
        .env("RATE_LIMIT_AUTH_PER_MINUTE", "0")
        .env("RATE_LIMIT_CHAT_PER_MINUTE", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start server process");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // The "listening" log line names the bound address.
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && entry["fields"]["message"] == "listening"
            {
                return entry["fields"]["addr"].as_str().expect("addr").to_string();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .expect("server listening in time");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ServerProcess {
        _child: child,
        address: format!("http://{address}"),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_share_one_database() {
    let openai = FakeOpenAi::start().await;
    let pinecone = FakePinecone::start().await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let database_url = test_database_url(&scratch.path().join("shared.db")).await;
    let first = start_server_process(&database_url, &openai, &pinecone).await;
    let second = start_server_process(&database_url, &openai, &pinecone).await;
    let client = reqwest::Client::new();
    let call =
        |method: reqwest::Method, base: &str, path: &str, token: &str, body: Option<Value>| {
            let mut request = client
                .request(method, format!("{base}{path}"))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            request.send()
        };

    let signup: Value = client
        .post(format!("{}/api/auth/signup", first.address))
        .json(&json!({"email": "multi@example.com", "name": "M", "password": "s3cret-pass"}))
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

    // The token issued by the first process works on the second.
    let me = call(
        reqwest::Method::GET,
        &second.address,
        "/api/auth/me",
        &token,
        None,
    )
    .await
    .expect("me");
    assert_eq!(me.status(), 200);

    // Created through the first...
    let created: Value = call(
        reqwest::Method::POST,
        &first.address,
        "/api/chat/create",
        &token,
        Some(json!({"conversation_id": null, "message": "Started on the first"})),
    )
    .await
    .expect("create")
    .json()
    .await
    .expect("json");
    let id = created["data"]["conversation_id"].as_i64().expect("id");
    let read_history = |base: &str| {
        let request = call(
            reqwest::Method::GET,
            base,
            &format!("/api/chat/messages/{id}"),
            &token,
            None,
        );
        async move {
            let answer = request.await.expect("messages");
            assert_eq!(answer.status(), 200);
            answer.json::<Value>().await.expect("json")
        }
    };
    let history = read_history(&first.address).await;
    assert_eq!(
        history["data"]["messages"].as_array().map(Vec::len),
        Some(2)
    );

    // ...continued and streamed through the second...
    let streamed = call(
        reqwest::Method::POST,
        &second.address,
        "/api/chat/stream",
        &token,
        Some(json!({"conversation_id": id.to_string(), "message": "Continued on the second"})),
    )
    .await
    .expect("stream");
    assert_eq!(streamed.status(), 200);
    let events = read_sse(streamed, usize::MAX).await;
    let done = events.last().expect("events");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["messages"].as_array().expect("messages").len(), 4);

    // ...and read through the first again, whose history cache still holds
    // the two messages it read before: it sees all four.
    let history = read_history(&first.address).await;
    assert_eq!(history["data"]["messages"], done.data["messages"]);

    // ...listed through the first, deleted through the second.
    let listed: Value = call(
        reqwest::Method::GET,
        &first.address,
        "/api/chat/conversations",
        &token,
        None,
    )
    .await
    .expect("list")
    .json()
    .await
    .expect("json");
    assert_eq!(listed["data"]["conversations"][0]["id"], id);
    let deleted = call(
        reqwest::Method::POST,
        &second.address,
        &format!("/api/chat/delete/{id}"),
        &token,
        None,
    )
    .await
    .expect("delete");
    assert_eq!(deleted.status(), 200);
    let gone = call(
        reqwest::Method::GET,
        &first.address,
        &format!("/api/chat/messages/{id}"),
        &token,
        None,
    )
    .await
    .expect("messages");
    assert_eq!(gone.status(), 400);
    let listed: Value = call(
        reqwest::Method::GET,
        &first.address,
        "/api/chat/conversations",
        &token,
        None,
    )
    .await
    .expect("list")
    .json()
    .await
    .expect("json");
    assert_eq!(listed["data"]["conversations"], json!([]));
}
