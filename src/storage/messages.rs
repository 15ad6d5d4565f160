//! The `messages` table.

use chrono::{DateTime, Utc};

use super::outbox::{self, NewEvent, OwnedEvent};
use super::{Database, on_reader, on_writer};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Guardrails,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Guardrails => "guardrails",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "system" => Self::System,
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "guardrails" => Self::Guardrails,
            _ => return None,
        })
    }
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub id: i64,
    pub conversation_id: i64,
    pub role: Role,
    /// Empty for `user` rows read by [`list`] (see there).
    pub content: String,
    pub user_message: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Assistant answers: the JSON array of the sources they were given.
    pub sources: Option<String>,
    /// Assistant answers: whether any retrieved hit cleared the minimum score.
    pub grounded: Option<bool>,
    /// Feedback on an answer: `up` or `down`, and the reason given.
    pub feedback_rating: Option<String>,
    pub feedback_reason: Option<String>,
    /// Assistant answers: cut short by a stop request.
    pub stopped: bool,
    /// Assistant rows: who wrote it.
    pub author: Author,
}

/// Who wrote an assistant message (contract section 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// The model, or one of the fixed replies.
    Bot,
    /// A person (`author_id`: their user id).
    Agent(Option<i64>),
}

impl Author {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bot => "bot",
            Self::Agent(_) => "agent",
        }
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: i64,
    conversation_id: i64,
    role: String,
    content: String,
    user_message: Option<String>,
    created_at: DateTime<Utc>,
    sources: Option<String>,
    grounded: Option<bool>,
    feedback_rating: Option<String>,
    feedback_reason: Option<String>,
    stopped: Option<bool>,
    author: Option<String>,
    author_id: Option<i64>,
}

impl TryFrom<MessageRow> for MessageRecord {
    type Error = sqlx::Error;

    fn try_from(row: MessageRow) -> Result<Self, Self::Error> {
        let role = Role::parse(&row.role).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "role".into(),
            source: format!("unknown role {:?}", row.role).into(),
        })?;
        Ok(Self {
            id: row.id,
            conversation_id: row.conversation_id,
            role,
            content: row.content,
            user_message: row.user_message,
            created_at: row.created_at,
            sources: row.sources,
            grounded: row.grounded,
            feedback_rating: row.feedback_rating,
            feedback_reason: row.feedback_reason,
            stopped: row.stopped.unwrap_or(false),
            author: match row.author.as_deref() {
                Some("agent") => Author::Agent(row.author_id),
                _ => Author::Bot,
            },
        })
    }
}

/// The conversation, role and text of a message, for feedback.
pub async fn locate(db: &Database, id: i64) -> Result<Option<(i64, Role, String)>, sqlx::Error> {
    let row: Option<(i64, String, String)> = on_reader!(db, conn => {
        sqlx::query_as(
            "SELECT conversation_id, role, CASE WHEN role = 'user' THEN '' ELSE content END \
             FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await
    })?;
    row.map(|(conversation_id, role, content)| {
        Role::parse(&role)
            .map(|role| (conversation_id, role, content))
            .ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "role".into(),
                source: format!("unknown role {role:?}").into(),
            })
    })
    .transpose()
}

/// Sets (or with `None`, removes) the feedback on a message, and moves its
/// conversation's `feedback_version` so cached histories are read again;
/// one transaction, with the webhook event it causes, if any.
pub async fn set_feedback(
    db: &Database,
    id: i64,
    conversation_id: i64,
    feedback: Option<(String, Option<String>)>,
    now: DateTime<Utc>,
    event: Option<NewEvent<'_>>,
) -> Result<(), sqlx::Error> {
    let event = event.map(OwnedEvent::from);
    let now_ms = now.timestamp_millis();
    let (rating, reason, at) = match feedback {
        Some((rating, reason)) => (Some(rating), reason, Some(now)),
        None => (None, None, None),
    };
    on_writer!(db, conn => {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query(
            "UPDATE messages SET feedback_rating = $1, feedback_reason = $2, feedback_at = $3 \
             WHERE id = $4",
        )
        .bind(rating)
        .bind(reason)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE conversations SET feedback_version = feedback_version + 1 WHERE id = $1",
        )
        .bind(conversation_id)
        .execute(&mut *tx)
        .await?;
        if let Some(event) = event {
            outbox::insert_event!(&mut *tx, event, now_ms)?;
        }
        tx.commit().await
    })
}

/// What to store for one message.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub conversation_id: i64,
    pub role: Role,
    pub content: &'a str,
    pub user_message: Option<&'a str>,
    /// Assistant answers only: sources (a JSON array) and grounding.
    pub sources: Option<&'a str>,
    pub grounded: Option<bool>,
    /// Assistant answers: cut short by a stop request.
    pub stopped: bool,
    /// User (and guardrails) rows: the turn, and the client's id for the
    /// send with the key it is unique under (migration 0010).
    pub turn_id: Option<&'a str>,
    pub client_message_id: Option<&'a str>,
    pub client_key: Option<&'a str>,
    /// Assistant rows written by a person (`None`: the bot).
    pub agent: Option<i64>,
}

impl<'a> NewMessage<'a> {
    /// An assistant message with only its text: a fixed reply (set `agent`
    /// for a person's; sources and grounding for the model's answers).
    pub fn answer(conversation_id: i64, content: &'a str) -> Self {
        Self {
            conversation_id,
            role: Role::Assistant,
            content,
            user_message: None,
            sources: None,
            grounded: None,
            stopped: false,
            turn_id: None,
            client_message_id: None,
            client_key: None,
            agent: None,
        }
    }
}

/// Stores a message. The `messages_touch_conversation` trigger (migration
/// 0002) moves its conversation's `updated_at` in the same statement, so a
/// message costs one round trip and one commit.
pub async fn insert(db: &Database, message: NewMessage<'_>) -> Result<i64, sqlx::Error> {
    let now = Utc::now();
    let (conversation_id, role) = (message.conversation_id, message.role.as_str());
    let content = message.content.to_owned();
    let user_message = message.user_message.map(str::to_owned);
    let (sources, grounded) = (message.sources.map(str::to_owned), message.grounded);
    let stopped = message.stopped.then_some(true);
    let turn_id = message.turn_id.map(str::to_owned);
    let client_message_id = message.client_message_id.map(str::to_owned);
    let client_key = message.client_key.map(str::to_owned);
    let (author, author_id) = match (message.role, message.agent) {
        (_, Some(agent)) => (Some("agent"), Some(agent)),
        (Role::Assistant, None) => (Some("bot"), None),
        _ => (None, None),
    };
    on_writer!(db, conn => {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO messages (conversation_id, role, content, user_message, created_at, sources, grounded, \
             stopped, turn_id, client_message_id, client_key, author, author_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(conversation_id)
        .bind(role)
        .bind(content)
        .bind(user_message)
        .bind(now)
        .bind(sources)
        .bind(grounded)
        .bind(stopped)
        .bind(turn_id.clone())
        .bind(client_message_id.clone())
        .bind(client_key.clone())
        .bind(author)
        .bind(author_id)
        .fetch_one(&mut *conn)
        .await?;
        Ok(id)
    })
}

/// Every message of a conversation, in creation order.
///
/// `user` rows come back with an empty `content`: what was sent upstream for
/// them (the question plus its whole context block, kilobytes per turn) is
/// stored for the record but never read back; clients and later prompts use
/// `user_message`. Skipping it keeps history reads from growing by a context
/// block per turn.
pub async fn list(db: &Database, conversation_id: i64) -> Result<Vec<MessageRecord>, sqlx::Error> {
    let rows = on_reader!(db, conn => {
        sqlx::query_as::<_, MessageRow>(
            "SELECT id, conversation_id, role, \
             CASE WHEN role = 'user' THEN '' ELSE content END AS content, user_message, created_at, \
             sources, grounded, feedback_rating, feedback_reason, stopped, author, author_id \
             FROM messages WHERE conversation_id = $1 ORDER BY id",
        )
        .bind(conversation_id)
        .fetch_all(conn)
        .await
    })?;
    rows.into_iter().map(MessageRecord::try_from).collect()
}

/// The message a client's earlier send with the same id made: its row,
/// what it said (redacted), its role and its turn.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EarlierSend {
    pub id: i64,
    pub conversation_id: i64,
    pub role: String,
    pub user_message: Option<String>,
    pub turn_id: Option<String>,
}

/// Where a client message id is unique: its conversation, or, for a send
/// that started a new conversation, its sender (`user:<id>` / `ip:<addr>`).
#[derive(Debug, Clone, Copy)]
pub enum SendKey<'a> {
    Conversation(i64),
    Sender(&'a str),
}

/// The earlier send with `client_message_id` under `key`, if any.
pub async fn earlier_send(
    db: &Database,
    key: SendKey<'_>,
    client_message_id: &str,
) -> Result<Option<EarlierSend>, sqlx::Error> {
    const BY_CONVERSATION: &str = "SELECT id, conversation_id, role, user_message, turn_id FROM messages \
         WHERE conversation_id = $1 AND client_message_id = $2 LIMIT 1";
    const BY_SENDER: &str = "SELECT id, conversation_id, role, user_message, turn_id FROM messages \
         WHERE client_key = $1 AND client_message_id = $2 ORDER BY id LIMIT 1";
    let client_message_id = client_message_id.to_owned();
    match key {
        SendKey::Conversation(conversation_id) => on_reader!(db, conn => {
            sqlx::query_as::<_, EarlierSend>(BY_CONVERSATION)
                .bind(conversation_id)
                .bind(client_message_id.clone())
                .fetch_optional(conn)
                .await
        }),
        SendKey::Sender(sender) => {
            let sender = sender.to_owned();
            on_reader!(db, conn => {
                sqlx::query_as::<_, EarlierSend>(BY_SENDER)
                    .bind(sender.clone())
                    .bind(client_message_id.clone())
                    .fetch_optional(conn)
                    .await
            })
        }
    }
}

/// The answer stored right after message `after` in its conversation (the
/// first assistant row after it), if any.
pub async fn answer_after(
    db: &Database,
    conversation_id: i64,
    after: i64,
) -> Result<Option<String>, sqlx::Error> {
    on_reader!(db, conn => {
        sqlx::query_as::<_, (String,)>(
            "SELECT content FROM messages WHERE conversation_id = $1 AND id > $2 \
             AND role = 'assistant' ORDER BY id LIMIT 1",
        )
        .bind(conversation_id)
        .bind(after)
        .fetch_optional(conn)
        .await
        .map(|row| row.map(|(content,)| content))
    })
}
