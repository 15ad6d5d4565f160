//! `/api/auth/*`: signup, login, me, tokens (sections 1-3 of the contract).

use std::collections::BTreeSet;

use eloquent::storage::Database;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::helpers::{
    Answer, JWT_SECRET, TestApp, now, python_style_token, spawn_app, spawn_app_with,
};

const SIGNUP: &str = "/api/auth/signup";
const LOGIN: &str = "/api/auth/login";
const ME: &str = "/api/auth/me";

// ---------------------------------------------------------------------------
// helpers local to this module

/// Asserts a 422 "Validation error" whose first error names `loc`.
fn assert_validation(answer: &Answer, loc: &[&str]) {
    let data = answer.expect(422);
    assert_eq!(data["message"], "Validation error", "body: {}", answer.body);
    let errors = data["errors"].as_array().expect("errors is a list");
    assert!(!errors.is_empty(), "no errors: {}", answer.body);
    assert_eq!(errors[0]["loc"], json!(loc), "body: {}", answer.body);
    assert!(
        errors[0]["msg"].as_str().is_some_and(|msg| !msg.is_empty()),
        "no msg: {}",
        answer.body
    );
}

/// Every stored email, in insertion order.
async fn stored_emails(app: &TestApp) -> Vec<String> {
    const SQL: &str = "SELECT email FROM users ORDER BY id";
    let db = app.db().await;
    let rows: Vec<(String,)> = match &db {
        Database::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        Database::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
    }
    .expect("query users");
    db.close().await;
    rows.into_iter().map(|(email,)| email).collect()
}

/// Inserts a user row the way an imported Python table would hold it
/// (`created_at` as text: SQLite keeps it, PostgreSQL parses it).
async fn insert_user(app: &TestApp, email: &str, name: &str, hash: &str, created_at: &str) -> i64 {
    let db = app.db().await;
    let (id,): (i64,) = match &db {
        Database::Sqlite(pool) => {
            sqlx::query_as(
                "INSERT INTO users (email, name, password_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(email)
            .bind(name)
            .bind(hash)
            .bind(created_at)
            .fetch_one(pool)
            .await
        }
        Database::Postgres(pool) => {
            sqlx::query_as(
                "INSERT INTO users (email, name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4::text::timestamptz) RETURNING id",
            )
            .bind(email)
            .bind(name)
            .bind(hash)
            .bind(created_at)
            .fetch_one(pool)
            .await
        }
    }
    .expect("insert user");
    db.close().await;
    id
}

/// POST with a JSON body; returns status and the raw body bytes.
async fn post_bytes(app: &TestApp, path: &str, body: &Value) -> (u16, Vec<u8>) {
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

/// GET /api/auth/me with a raw `Authorization` header value.
async fn me_with_header(app: &TestApp, authorization: &str) -> Answer {
    app.send(
        app.client
            .get(format!("{}{ME}", app.address))
            .header("authorization", authorization),
    )
    .await
}

/// Unpadded base64url, for hand-built tokens.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// True when any key mentions a password or any string looks like a bcrypt hash.
fn leaks_secret(value: &Value, password: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, value)| {
            key.to_lowercase().contains("password") || leaks_secret(value, password)
        }),
        Value::Array(items) => items.iter().any(|item| leaks_secret(item, password)),
        Value::String(text) => text.starts_with("$2") || text.contains(password),
        _ => false,
    }
}

fn decode_claims(token: &str, algorithm: Algorithm) -> Value {
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .expect("token signed with JWT_SECRET")
    .claims
}

// ---------------------------------------------------------------------------
// signup

#[tokio::test]
async fn signup_creates_a_normalised_user_and_a_working_token() {
    let app = spawn_app().await;
    let password = "correct horse battery staple";
    let answer = app
        .post(
            SIGNUP,
            &json!({"email": " Ada@Example.COM ", "name": "Ada Lovelace", "password": password}),
            None,
        )
        .await;
    let data = answer.expect(201);
    assert_eq!(data["message"], "User created");
    assert_eq!(data["token_type"], "bearer");
    let user = &data["user"];
    let keys: BTreeSet<&str> = user
        .as_object()
        .expect("user object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["created_at", "email", "id", "name"]));
    let id = user["id"].as_i64().expect("integer id");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada Lovelace");
    let created_at = user["created_at"].as_str().expect("created_at string");
    let created_at = chrono::DateTime::parse_from_rfc3339(created_at).expect("ISO-8601 created_at");
    assert!(
        (created_at.timestamp() - now()).abs() < 60,
        "created_at {created_at} is not now"
    );
    assert!(
        !leaks_secret(&answer.body, password),
        "secret in body: {}",
        answer.body
    );

    // Stored trimmed and lower-cased.
    assert_eq!(
        stored_emails(&app).await,
        vec!["ada@example.com".to_string()]
    );

    // Claims exactly as the Python version issued them.
    let token = data["access_token"].as_str().expect("token");
    let claims = decode_claims(token, Algorithm::HS256);
    assert_eq!(claims["user_id"], json!(id.to_string()));
    assert_eq!(claims["email"], "ada@example.com");
    let exp = claims["exp"].as_i64().expect("numeric exp");
    assert!(
        (exp - (now() + 3600)).abs() < 60,
        "exp {exp} is not one hour ahead"
    );

    let me = app.get(ME, Some(token)).await;
    let me_data = me.expect(200);
    assert_eq!(me_data["user"], *user);
    assert!(
        !leaks_secret(&me.body, password),
        "secret in body: {}",
        me.body
    );
}

#[tokio::test]
async fn duplicate_signup_is_rejected_case_insensitively() {
    let app = spawn_app().await;
    app.signup("grace@example.com").await;
    let body = |email: &str| json!({"email": email, "name": "Grace", "password": "another-pass"});
    for email in [
        "grace@example.com",
        "GRACE@Example.com",
        "  grace@EXAMPLE.COM\t",
    ] {
        let answer = app.post(SIGNUP, &body(email), None).await;
        assert_eq!(
            answer.expect(400)["message"],
            "User already exists",
            "{email}"
        );
    }
    assert_eq!(
        stored_emails(&app).await,
        vec!["grace@example.com".to_string()]
    );
}

#[tokio::test]
async fn signup_rejects_invalid_emails() {
    let app = spawn_app().await;
    for email in [
        "not-an-email",
        "a@b",
        "",
        "   ",
        "ada@",
        "@example.com",
        "ada@example.",
    ] {
        let answer = app
            .post(
                SIGNUP,
                &json!({"email": email, "name": "Ada", "password": "pw-123456"}),
                None,
            )
            .await;
        assert_validation(&answer, &["body", "email"]);
    }
    assert!(stored_emails(&app).await.is_empty());
}

#[tokio::test]
async fn signup_rejects_a_missing_password() {
    let app = spawn_app().await;
    let answer = app
        .post(
            SIGNUP,
            &json!({"email": "ada@example.com", "name": "Ada"}),
            None,
        )
        .await;
    assert_validation(&answer, &["body", "password"]);
    let answer = app
        .post(
            SIGNUP,
            &json!({"email": "ada@example.com", "name": "Ada", "password": ""}),
            None,
        )
        .await;
    assert_validation(&answer, &["body", "password"]);
    assert!(stored_emails(&app).await.is_empty());
}

#[tokio::test]
async fn signup_rejects_wrong_types() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"email": "ada@example.com", "name": 3, "password": "pw-123456"}),
            "name",
        ),
        (
            json!({"email": ["ada@example.com"], "name": "Ada", "password": "pw-123456"}),
            "email",
        ),
        (
            json!({"email": "ada@example.com", "name": "Ada", "password": 123456}),
            "password",
        ),
        (
            json!({"email": null, "name": "Ada", "password": "pw-123456"}),
            "email",
        ),
    ];
    for (body, field) in cases {
        let answer = app.post(SIGNUP, &body, None).await;
        assert_validation(&answer, &["body", field]);
    }
    assert!(stored_emails(&app).await.is_empty());
}

#[tokio::test]
async fn signup_rejects_malformed_json() {
    let app = spawn_app().await;
    for raw in [
        r#"{"email": "ada@example.com", "name": "Ada", "password": "pw-123456""#,
        r#"{"email": "ada@example.com", "name": "Ada", "password": "pw-123456"} trailing"#,
        "{email: 'ada@example.com'}",
    ] {
        let answer = app.post_raw(SIGNUP, raw, "application/json").await;
        let data = answer.expect(422);
        assert_eq!(data["message"], "Validation error");
        assert_eq!(data["errors"][0]["loc"][0], "body", "body: {}", answer.body);
    }
    assert!(stored_emails(&app).await.is_empty());
}

#[tokio::test]
async fn signup_rejects_an_empty_body() {
    let app = spawn_app().await;
    let answer = app.post_raw(SIGNUP, "", "application/json").await;
    assert_validation(&answer, &["body"]);
    let answer = app.post_raw(SIGNUP, "{}", "application/json").await;
    let data = answer.expect(422);
    assert_eq!(data["message"], "Validation error");
    assert_eq!(data["errors"][0]["loc"][0], "body");
    assert!(stored_emails(&app).await.is_empty());
}

#[tokio::test]
async fn signup_rejects_a_json_array_body() {
    let app = spawn_app().await;
    for body in [json!([]), json!(["ada@example.com", "Ada", "pw-123456"])] {
        let answer = app.post(SIGNUP, &body, None).await;
        let data = answer.expect(422);
        assert_eq!(data["message"], "Validation error");
        assert_eq!(data["errors"][0]["loc"][0], "body", "body: {}", answer.body);
    }
    assert!(stored_emails(&app).await.is_empty());
}

#[tokio::test]
async fn signup_refuses_passwords_over_72_bytes_instead_of_truncating() {
    let app = spawn_app().await;
    let exactly_72 = "p".repeat(72);
    let answer = app
        .post(
            SIGNUP,
            &json!({"email": "max@example.com", "name": "Max", "password": exactly_72}),
            None,
        )
        .await;
    answer.expect(201);
    let login = app
        .post(
            LOGIN,
            &json!({"email": "max@example.com", "password": exactly_72}),
            None,
        )
        .await;
    assert_eq!(login.expect(200)["message"], "User logged in");

    // 73 ASCII bytes, and 72 characters that are 73 bytes: bytes are what count.
    for (email, password) in [
        ("long@example.com", "p".repeat(73)),
        ("multibyte@example.com", format!("{}é", "p".repeat(71))),
    ] {
        let answer = app
            .post(
                SIGNUP,
                &json!({"email": email, "name": "Long", "password": password}),
                None,
            )
            .await;
        assert_validation(&answer, &["body", "password"]);
    }
    assert_eq!(
        stored_emails(&app).await,
        vec!["max@example.com".to_string()]
    );
}

#[tokio::test]
async fn login_with_a_password_over_72_bytes_does_not_match_its_prefix() {
    // bcrypt only reads 72 bytes; a longer password must never be accepted as
    // its 72-byte prefix (signup refuses such passwords, so none is correct).
    let app = spawn_app().await;
    let exactly_72 = "q".repeat(72);
    app.post(
        SIGNUP,
        &json!({"email": "pre@example.com", "name": "Pre", "password": exactly_72}),
        None,
    )
    .await
    .expect(201);
    let longer = format!("{exactly_72}-anything-after-byte-72");
    let answer = app
        .post(
            LOGIN,
            &json!({"email": "pre@example.com", "password": longer}),
            None,
        )
        .await;
    let status = answer.status.as_u16();
    assert!(
        status == 401 || status == 422,
        "over-long password logged in: {}",
        answer.body
    );
    answer.data();
}

#[tokio::test]
async fn signup_ignores_unknown_fields() {
    let app = spawn_app().await;
    let answer = app
        .post(
            SIGNUP,
            &json!({
                "email": "extra@example.com", "name": "Extra", "password": "pw-123456",
                "is_admin": true, "id": 999, "user_id": 5, "nested": {"a": [1, 2]}
            }),
            None,
        )
        .await;
    let data = answer.expect(201);
    assert_eq!(data["user"]["email"], "extra@example.com");
    assert_ne!(data["user"]["id"], 999);
    assert!(data["user"].get("is_admin").is_none());
    assert_eq!(
        stored_emails(&app).await,
        vec!["extra@example.com".to_string()]
    );
}

// ---------------------------------------------------------------------------
// login

#[tokio::test]
async fn login_returns_a_working_token() {
    let app = spawn_app().await;
    let (_, id) = app.signup("lin@example.com").await;
    let answer = app
        .post(
            LOGIN,
            &json!({"email": "lin@example.com", "password": "s3cret-pass"}),
            None,
        )
        .await;
    let data = answer.expect(200);
    assert_eq!(data["message"], "User logged in");
    assert_eq!(data["token_type"], "bearer");
    assert_eq!(data["user"]["id"], id);
    assert_eq!(data["user"]["email"], "lin@example.com");
    assert!(
        !leaks_secret(&answer.body, "s3cret-pass"),
        "secret in body: {}",
        answer.body
    );
    let token = data["access_token"].as_str().expect("token");
    assert_eq!(
        decode_claims(token, Algorithm::HS256)["user_id"],
        json!(id.to_string())
    );
    assert_eq!(app.get(ME, Some(token)).await.expect(200)["user"]["id"], id);
}

#[tokio::test]
async fn login_with_a_differently_cased_email_works() {
    let app = spawn_app().await;
    let (_, id) = app.signup("Case@Example.com").await;
    for email in [
        "case@example.com",
        "CASE@EXAMPLE.COM",
        "  Case@example.COM ",
    ] {
        let answer = app
            .post(
                LOGIN,
                &json!({"email": email, "password": "s3cret-pass"}),
                None,
            )
            .await;
        let data = answer.expect(200);
        assert_eq!(data["user"]["id"], id, "{email}");
        assert_eq!(data["user"]["email"], "case@example.com");
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_identical_401() {
    let app = spawn_app().await;
    app.signup("known@example.com").await;
    let (wrong_status, wrong_body) = post_bytes(
        &app,
        LOGIN,
        &json!({"email": "known@example.com", "password": "not-the-password"}),
    )
    .await;
    let (unknown_status, unknown_body) = post_bytes(
        &app,
        LOGIN,
        &json!({"email": "nobody@example.com", "password": "s3cret-pass"}),
    )
    .await;
    assert_eq!(wrong_status, 401);
    assert_eq!(unknown_status, 401);
    assert_eq!(
        String::from_utf8_lossy(&wrong_body),
        String::from_utf8_lossy(&unknown_body),
        "bodies differ"
    );
    let parsed: Value = serde_json::from_slice(&wrong_body).expect("json");
    assert_eq!(
        parsed,
        json!({"data": {"message": "Invalid email or password"}, "status_code": 401})
    );
}

// ---------------------------------------------------------------------------
// /api/auth/me and tokens

#[tokio::test]
async fn me_without_a_header_is_not_authenticated() {
    let app = spawn_app().await;
    let answer = app.get(ME, None).await;
    assert_eq!(answer.expect(401)["message"], "Not authenticated");
}

#[tokio::test]
async fn me_with_garbage_tokens_is_invalid_token() {
    let app = spawn_app().await;
    for token in ["garbage", "null", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30."] {
        let answer = app.get(ME, Some(token)).await;
        assert_eq!(answer.expect(401)["message"], "Invalid token", "{token}");
    }
    for header in ["Bearer", "Basic dXNlcjpwYXNz", "garbage"] {
        let answer = me_with_header(&app, header).await;
        assert_eq!(answer.expect(401)["message"], "Invalid token", "{header}");
    }
}

#[tokio::test]
async fn me_with_an_expired_token_is_token_expired() {
    let app = spawn_app().await;
    let (_, id) = app.signup("old@example.com").await;
    let expired = python_style_token(
        &id.to_string(),
        "old@example.com",
        now() - 3600,
        JWT_SECRET,
        Algorithm::HS256,
    );
    let answer = app.get(ME, Some(&expired)).await;
    assert_eq!(answer.expect(401)["message"], "Token expired");
}

#[tokio::test]
async fn me_with_a_token_signed_by_another_secret_is_invalid() {
    let app = spawn_app().await;
    let (_, id) = app.signup("forged@example.com").await;
    let forged = python_style_token(
        &id.to_string(),
        "forged@example.com",
        now() + 3600,
        "not-the-server-secret",
        Algorithm::HS256,
    );
    let answer = app.get(ME, Some(&forged)).await;
    assert_eq!(answer.expect(401)["message"], "Invalid token");
}

#[tokio::test]
async fn me_for_a_user_that_does_not_exist_is_user_not_found() {
    let app = spawn_app().await;
    let (_, id) = app.signup("ghost@example.com").await;
    let token = python_style_token(
        &(id + 1000).to_string(),
        "ghost@example.com",
        now() + 3600,
        JWT_SECRET,
        Algorithm::HS256,
    );
    let answer = app.get(ME, Some(&token)).await;
    assert_eq!(answer.expect(401)["message"], "User not found");
    // A user id that is not a number at all is not a valid token.
    let token = python_style_token(
        "abc",
        "ghost@example.com",
        now() + 3600,
        JWT_SECRET,
        Algorithm::HS256,
    );
    let answer = app.get(ME, Some(&token)).await;
    assert_eq!(answer.expect(401)["message"], "Invalid token");
}

#[tokio::test]
async fn python_issued_tokens_are_accepted() {
    let app = spawn_app().await;
    let (_, id) = app.signup("py@example.com").await;
    let token = python_style_token(
        &id.to_string(),
        "py@example.com",
        now() + 3600,
        JWT_SECRET,
        Algorithm::HS256,
    );
    let answer = app.get(ME, Some(&token)).await;
    let user = &answer.expect(200)["user"];
    assert_eq!(user["id"], id);
    assert_eq!(user["email"], "py@example.com");
    // The lower-case scheme some scripts send.
    let answer = me_with_header(&app, &format!("bearer {token}")).await;
    assert_eq!(answer.expect(200)["user"]["id"], id);
}

#[tokio::test]
async fn alg_none_tokens_are_rejected() {
    let app = spawn_app().await;
    let (token, id) = app.signup("none@example.com").await;
    let header_segment = |header: &Value| base64url(header.to_string().as_bytes());
    // The encoder is right (known value), so a rejection is about the algorithm.
    assert_eq!(
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    );
    let payload = base64url(
        json!({"user_id": id.to_string(), "email": "none@example.com", "exp": now() + 3600})
            .to_string()
            .as_bytes(),
    );
    // Control: the server's own token works.
    app.get(ME, Some(&token)).await.expect(200);
    let unsigned = [
        format!(
            "{}.{payload}.",
            header_segment(&json!({"alg": "none", "typ": "JWT"}))
        ),
        format!(
            "{}.{payload}.",
            header_segment(&json!({"alg": "None", "typ": "JWT"}))
        ),
        format!(
            "{}.{payload}",
            header_segment(&json!({"alg": "none", "typ": "JWT"}))
        ),
        format!(
            "{}.{payload}.",
            header_segment(&json!({"alg": "HS256", "typ": "JWT"}))
        ),
    ];
    for forged in unsigned {
        let answer = app.get(ME, Some(&forged)).await;
        assert_eq!(answer.expect(401)["message"], "Invalid token", "{forged}");
    }
}

async fn check_other_hmac_algorithm(name: &str, algorithm: Algorithm) {
    let app = spawn_app_with(&[("JWT_ALGORITHM", name)]).await;
    let (token, id) = app.signup("hmac@example.com").await;
    let header = jsonwebtoken::decode_header(&token).expect("token header");
    assert_eq!(header.alg, algorithm);
    assert_eq!(
        decode_claims(&token, algorithm)["user_id"],
        json!(id.to_string())
    );
    assert_eq!(
        app.get(ME, Some(&token)).await.expect(200)["user"]["id"],
        id
    );

    let login = app
        .post(
            LOGIN,
            &json!({"email": "hmac@example.com", "password": "s3cret-pass"}),
            None,
        )
        .await;
    let login_token = login.expect(200)["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        jsonwebtoken::decode_header(&login_token)
            .expect("header")
            .alg,
        algorithm
    );

    let same_alg = python_style_token(
        &id.to_string(),
        "hmac@example.com",
        now() + 3600,
        JWT_SECRET,
        algorithm,
    );
    app.get(ME, Some(&same_alg)).await.expect(200);
    let hs256 = python_style_token(
        &id.to_string(),
        "hmac@example.com",
        now() + 3600,
        JWT_SECRET,
        Algorithm::HS256,
    );
    let answer = app.get(ME, Some(&hs256)).await;
    assert_eq!(answer.expect(401)["message"], "Invalid token");
}

#[tokio::test]
async fn hs512_tokens_are_issued_and_hs256_ones_rejected() {
    check_other_hmac_algorithm("HS512", Algorithm::HS512).await;
}

#[tokio::test]
async fn hs384_tokens_are_issued_and_hs256_ones_rejected() {
    check_other_hmac_algorithm("HS384", Algorithm::HS384).await;
}

#[tokio::test]
async fn python_bcrypt_2b_hashes_verify() {
    let app = spawn_app().await;
    let hash = bcrypt::hash_with_result("imported-pass", 4)
        .expect("hash")
        .format_for_version(bcrypt::Version::TwoB);
    assert!(hash.starts_with("$2b$04$"), "{hash}");
    let id = insert_user(
        &app,
        "imported@example.com",
        "Imported",
        &hash,
        "2024-05-01T10:20:30Z",
    )
    .await;
    // SQLAlchemy's own DateTime text form, as the Python version stored it.
    let hash2 = bcrypt::hash_with_result("other-pass", 4)
        .expect("hash")
        .format_for_version(bcrypt::Version::TwoB);
    let id2 = insert_user(
        &app,
        "sqla@example.com",
        "Sqla",
        &hash2,
        "2023-12-31 23:59:58.123456",
    )
    .await;

    let answer = app
        .post(
            LOGIN,
            &json!({"email": "Imported@example.com", "password": "imported-pass"}),
            None,
        )
        .await;
    let data = answer.expect(200);
    assert_eq!(data["user"]["id"], id);
    assert_eq!(data["user"]["name"], "Imported");
    let created_at = data["user"]["created_at"].as_str().expect("created_at");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(created_at)
            .expect("rfc3339")
            .timestamp(),
        chrono::DateTime::parse_from_rfc3339("2024-05-01T10:20:30Z")
            .expect("rfc3339")
            .timestamp()
    );
    let token = data["access_token"].as_str().expect("token");
    assert_eq!(app.get(ME, Some(token)).await.expect(200)["user"]["id"], id);

    let answer = app
        .post(
            LOGIN,
            &json!({"email": "imported@example.com", "password": "imported-pasS"}),
            None,
        )
        .await;
    assert_eq!(answer.expect(401)["message"], "Invalid email or password");

    let answer = app
        .post(
            LOGIN,
            &json!({"email": "sqla@example.com", "password": "other-pass"}),
            None,
        )
        .await;
    let data = answer.expect(200);
    assert_eq!(data["user"]["id"], id2);
    assert!(
        data["user"]["created_at"]
            .as_str()
            .is_some_and(|text| text.starts_with("2023-12-31T23:59:58")),
        "{}",
        answer.body
    );
}

// ---------------------------------------------------------------------------
// bad-input battery

/// One hostile request: raw body bytes and content type (`None` = no header).
struct Hostile {
    label: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
}

fn hostile(label: &'static str, body: impl Into<Vec<u8>>) -> Hostile {
    Hostile {
        label,
        body: body.into(),
        content_type: Some("application/json"),
    }
}

fn hostile_json(label: &'static str, body: Value) -> Hostile {
    hostile(label, body.to_string())
}

async fn send_hostile(app: &TestApp, path: &str, case: &Hostile) -> Answer {
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    let answer = app.send(request).await;
    assert!(
        !answer.status.is_server_error(),
        "{}: {} {}",
        case.label,
        answer.status,
        answer.body
    );
    // Enveloped, whatever the outcome.
    answer.data();
    answer
}

/// Cases shared by both routes; `email` is valid, `password` must not be the right one.
fn common_cases(email: &str, password: &str) -> Vec<Hostile> {
    let big = "x".repeat(60 * 1024);
    let mut with_bad_utf8 = format!(r#"{{"email":"{email}","name":"n","password":""#).into_bytes();
    with_bad_utf8.extend_from_slice(b"\xff\xfe\xc3(");
    with_bad_utf8.extend_from_slice(b"\"}");
    vec![
        hostile("invalid utf-8 only", b"\xff\xfe\xfd\x00\x80".to_vec()),
        hostile("invalid utf-8 in a string", with_bad_utf8),
        hostile("10k open brackets", "[".repeat(10_000)),
        hostile("10k nested objects", r#"{"a":"#.repeat(10_000)),
        hostile(
            "deep nesting in an unknown field",
            format!(
                r#"{{"email":"{email}","name":"n","password":"{password}","x":{}1{}}}"#,
                "[".repeat(5_000),
                "]".repeat(5_000)
            ),
        ),
        hostile_json(
            "60 KB email",
            json!({"email": format!("{big}@example.com"), "name": "n", "password": password}),
        ),
        hostile_json(
            "60 KB password",
            json!({"email": email, "name": "n", "password": big}),
        ),
        hostile_json(
            "NUL in email",
            json!({"email": "nul\u{0}@example.com", "name": "n", "password": password}),
        ),
        hostile_json(
            "RTL in email",
            json!({"email": "rtl\u{202e}moc@example.com", "name": "n", "password": password}),
        ),
        hostile_json(
            "zero-width in email",
            json!({"email": "z\u{200b}w@example.com", "name": "n", "password": password}),
        ),
        hostile_json(
            "emoji in email",
            json!({"email": "🦀@example.com", "name": "n", "password": password}),
        ),
        hostile_json(
            "SQL as email",
            json!({"email": "' OR 1=1 --", "name": "n", "password": password}),
        ),
        hostile_json(
            "SQL in email local part",
            json!({"email": "x'or'1'='1@example.com", "name": "n", "password": password}),
        ),
        hostile_json("null body", Value::Null),
        hostile_json("string body", json!("email")),
        Hostile {
            label: "form-encoded",
            body: format!("email={email}&name=n&password={password}").into_bytes(),
            content_type: Some("application/x-www-form-urlencoded"),
        },
    ]
}

#[tokio::test]
async fn signup_survives_hostile_input() {
    let app = spawn_app().await;
    let mut cases = common_cases("deep@example.com", "pw-123456");
    cases.extend([
        hostile_json("60 KB name", json!({"email": "bigname@example.com", "name": "x".repeat(60 * 1024), "password": "pw"})),
        hostile_json("NUL in name", json!({"email": "nulname@example.com", "name": "a\u{0}b", "password": "pw-123456"})),
        hostile_json("RTL in name", json!({"email": "rtlname@example.com", "name": "\u{202e}nimda", "password": "pw-123456"})),
        hostile_json("zero-width in name", json!({"email": "zwname@example.com", "name": "a\u{200b}\u{feff}b", "password": "pw-123456"})),
        hostile_json("emoji in name", json!({"email": "emoji@example.com", "name": "Ada 🦀👩‍💻", "password": "pw-123456"})),
        hostile_json("SQL as password", json!({"email": "sqlpw@example.com", "name": "n", "password": "' OR 1=1 --"})),
        hostile_json("SQL as name", json!({"email": "sqlname@example.com", "name": "'); DROP TABLE users; --", "password": "pw-123456"})),
        Hostile {
            label: "text/plain with valid JSON",
            body: json!({"email": "plain@example.com", "name": "n", "password": "pw-123456"}).to_string().into_bytes(),
            content_type: Some("text/plain"),
        },
        Hostile {
            label: "no content type with valid JSON",
            body: json!({"email": "nocontent@example.com", "name": "n", "password": "pw-123456"}).to_string().into_bytes(),
            content_type: None,
        },
    ]);

    let mut acknowledged = BTreeSet::new();
    for case in &cases {
        let answer = send_hostile(&app, SIGNUP, case).await;
        let status = answer.status.as_u16();
        assert!(
            status == 201 || (400..500).contains(&status),
            "{}: {status}",
            case.label
        );
        if status == 201 {
            let user = &answer.data()["user"];
            let email = user["email"].as_str().expect("email").to_string();
            // Whatever was accepted is stored and served back intact.
            let token = answer.data()["access_token"].as_str().expect("token");
            let me = app.get(ME, Some(token)).await;
            assert_eq!(me.expect(200)["user"], *user, "{}", case.label);
            acknowledged.insert(email);
        } else {
            assert!(!answer.message().is_empty(), "{}: no message", case.label);
        }
    }

    // The documented successes really succeeded, and the documented 422s did not.
    for email in [
        "plain@example.com",
        "nocontent@example.com",
        "sqlpw@example.com",
        "sqlname@example.com",
        "emoji@example.com",
    ] {
        assert!(
            acknowledged.contains(email),
            "{email} was not created: {acknowledged:?}"
        );
    }
    assert!(
        !acknowledged.iter().any(|email| email.contains("1=1")),
        "{acknowledged:?}"
    );

    let stored = stored_emails(&app).await;
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "stored {stored:?}, acknowledged {acknowledged:?}"
    );
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), acknowledged);
}

#[tokio::test]
async fn login_survives_hostile_input() {
    let app = spawn_app().await;
    app.signup("victim@example.com").await;
    let mut cases = common_cases("victim@example.com", "wrong-pass");
    cases.extend([
        hostile_json(
            "SQL as password",
            json!({"email": "victim@example.com", "password": "' OR 1=1 --"}),
        ),
        hostile_json(
            "SQL quote password",
            json!({"email": "victim@example.com", "password": "' OR '1'='1"}),
        ),
        hostile_json(
            "SQL in email",
            json!({"email": "victim@example.com' --", "password": "x"}),
        ),
        hostile_json(
            "SQL as both",
            json!({"email": "' OR 1=1 --", "password": "' OR 1=1 --"}),
        ),
        hostile_json(
            "NUL in password",
            json!({"email": "victim@example.com", "password": "s3cret-pass\u{0}"}),
        ),
        hostile_json(
            "zero-width in password",
            json!({"email": "victim@example.com", "password": "s3cret\u{200b}-pass"}),
        ),
    ]);
    for case in &cases {
        let answer = send_hostile(&app, LOGIN, case).await;
        let status = answer.status.as_u16();
        assert!(
            (400..500).contains(&status),
            "{} logged in or failed: {status} {}",
            case.label,
            answer.body
        );
        assert!(!answer.message().is_empty(), "{}: no message", case.label);
        if case.label.starts_with("SQL") {
            assert_eq!(status, 401, "{}: {}", case.label, answer.body);
        }
    }

    // The documented success: any content type carrying valid JSON.
    for content_type in [Some("text/plain"), None] {
        let case = Hostile {
            label: "valid credentials",
            body: json!({"email": "victim@example.com", "password": "s3cret-pass"})
                .to_string()
                .into_bytes(),
            content_type,
        };
        let answer = send_hostile(&app, LOGIN, &case).await;
        assert_eq!(
            answer.expect(200)["message"],
            "User logged in",
            "{content_type:?}"
        );
    }

    assert_eq!(
        stored_emails(&app).await,
        vec!["victim@example.com".to_string()]
    );
}

#[tokio::test]
async fn me_shows_the_role_admin_for_admin_emails_in_any_case() {
    let app = spawn_app_with(&[("ADMIN_EMAILS", " Boss@Example.com , ,other@example.com")]).await;
    let (admin, _) = app.signup("boss@example.com").await;
    let (user, _) = app.signup("worker@example.com").await;
    let data = app.get(ME, Some(&admin)).await.expect(200).clone();
    assert_eq!(data["role"], "admin");
    assert_eq!(data["user"]["email"], "boss@example.com");
    // The user object stays exactly Part I's `<User>`.
    assert!(data["user"].get("role").is_none(), "{data}");
    let data = app.get(ME, Some(&user)).await.expect(200).clone();
    assert_eq!(data["role"], "user");
    // Without ADMIN_EMAILS nobody is an admin.
    let plain = spawn_app().await;
    let (token, _) = plain.signup("boss@example.com").await;
    assert_eq!(
        plain.get(ME, Some(&token)).await.expect(200)["role"],
        "user"
    );
}
