//! Upgrading in place: adopting the Python service's users, conversations and
//! messages into this server's tables, ids kept (contract section 12).
//!
//! The rules for rows the Python service let through are decided here, and
//! documented in the README ("Upgrading from the Python service"):
//! * rows that cannot be represented (a message whose conversation is gone, a
//!   conversation whose owner is gone, a role outside the four, a user with
//!   no email or password) are skipped and counted; they stay in the Python
//!   tables, which adoption never changes;
//! * addresses that differ only in case: the oldest account (lowest id) gets
//!   the lower-cased address; each other keeps its address exactly as stored
//!   (login with that exact spelling still reaches it, as it did in Python);
//! * timestamps are read with or without fractional seconds and time zone
//!   (naive = UTC); one that cannot be read stops the adoption, naming it;
//! * this server's own rows colliding with Python rows (same id, same
//!   address) stop it too, before anything is written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::services::prompt;
use crate::storage::Database;
use crate::storage::legacy::{
    AdoptedConversation, AdoptedMessage, AdoptedUser, AdoptionRecord, Collisions, LegacySchema,
    LegacyTx, PreviousAdoption,
};

/// Messages read per page: bounds memory on big histories.
const MESSAGE_PAGE: i64 = 5_000;

/// Why adoption stopped; each renders as one line naming the way out.
#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    #[error(
        "refusing to start: this server's tables already hold rows that collide with the Python service's ({0}); nothing was changed. Either empty this server's tables to adopt the Python data, or rename the Python tables to keep this server's (README: Upgrading from the Python service)"
    )]
    Conflict(String),
    #[error(
        "cannot adopt the Python service's table {table}: it has no column {column}; nothing was changed (README: Upgrading from the Python service)"
    )]
    MissingColumn {
        table: &'static str,
        column: &'static str,
    },
    #[error(
        "cannot adopt the Python service's data: {table} {id} has created_at {value:?}, which is not a timestamp; nothing was changed. Fix that row (e.g. UPDATE {table} SET created_at = '2024-01-31 12:00:00' WHERE id = {id}) and start again"
    )]
    Timestamp {
        table: &'static str,
        id: i64,
        value: String,
    },
    #[error("cannot adopt the Python service's data: database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Apply the adoption, or only report what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

/// What an adoption did (or, in a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    pub users: u64,
    pub conversations: u64,
    pub messages: u64,
    /// Conversations that got a title from their first message.
    pub titled: u64,
    /// Rows left in the Python tables, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Accounts that share their address (lower-cased) with an older one:
    /// (id, the address they keep).
    pub shared_addresses: Vec<(i64, String)>,
    pub elapsed: Duration,
}

/// The outcome of looking at the database.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No Python tables here.
    NoLegacyTables,
    /// Python tables, but never a row in them.
    EmptyLegacyTables,
    /// Everything in the Python tables was adopted before.
    NothingNew(PreviousAdoption),
    /// Rows were adopted (or would be, in a dry run).
    Adopted(Adopted),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLegacyTables => write!(f, "no Python service tables found: nothing to adopt"),
            Self::EmptyLegacyTables => {
                write!(f, "the Python service's tables are empty: nothing to adopt")
            }
            Self::NothingNew(previous) => write!(
                f,
                "the Python service's tables were adopted on {}: nothing new to adopt",
                previous.adopted_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Self::Adopted(adopted) => write!(f, "{adopted}"),
        }
    }
}

impl fmt::Display for Adopted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} users, {} conversations ({} titled from their first message), {} messages",
            self.users, self.conversations, self.titled, self.messages
        )?;
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self
                .skipped
                .iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect();
            write!(f, "; left in the Python tables: {}", skipped.join(", "))?;
        }
        if !self.shared_addresses.is_empty() {
            let accounts: Vec<String> = self
                .shared_addresses
                .iter()
                .map(|(id, email)| format!("user {id} keeps {email:?}"))
                .collect();
            write!(
                f,
                "; addresses differing only in case from an older account's: {}",
                accounts.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Whether the database holds Python rows not adopted yet (a cheap look:
/// table names and highest ids). Used to decide on a backup first.
pub async fn pending(db: &Database) -> Result<bool, AdoptionError> {
    let mut tx = LegacyTx::begin(db, false).await?;
    let schema = tx.legacy_schema().await?;
    let pending = if schema.is_empty() {
        false
    } else {
        let watermark = tx
            .previous_adoption()
            .await?
            .map(|previous| previous.watermark)
            .unwrap_or_default();
        tx.legacy_max_ids(&schema).await?.any_above(&watermark)
    };
    tx.rollback().await?;
    Ok(pending)
}

/// Adopts the Python rows not adopted yet, in one transaction (or, in a dry
/// run, reads them and reports, changing nothing). `backup` is recorded
/// with the adoption.
pub async fn adopt(
    db: &Database,
    mode: Mode,
    backup: Option<String>,
) -> Result<Outcome, AdoptionError> {
    let started = Instant::now();
    let mut tx = LegacyTx::begin(db, mode == Mode::Apply).await?;
    let result = adopt_in(&mut tx, mode, backup).await;
    match (&result, mode) {
        (Ok(Outcome::Adopted(_)), Mode::Apply) => tx.commit().await?,
        _ => tx.rollback().await?,
    }
    result.map(|outcome| match outcome {
        Outcome::Adopted(mut adopted) => {
            adopted.elapsed = started.elapsed();
            Outcome::Adopted(adopted)
        }
        other => other,
    })
}

async fn adopt_in(
    tx: &mut LegacyTx,
    mode: Mode,
    backup: Option<String>,
) -> Result<Outcome, AdoptionError> {
    let schema = tx.legacy_schema().await?;
    if schema.is_empty() {
        return Ok(Outcome::NoLegacyTables);
    }
    check_columns(&schema)?;
    let previous = tx.previous_adoption().await?;
    let watermark = previous
        .as_ref()
        .map(|previous| previous.watermark)
        .unwrap_or_default();
    let max_ids = tx.legacy_max_ids(&schema).await?;
    if !max_ids.any_above(&watermark) {
        return Ok(match previous {
            Some(previous) => Outcome::NothingNew(previous),
            None => Outcome::EmptyLegacyTables,
        });
    }
    // A dry run before the first migration: this server has no rows yet.
    let own_tables = tx.own_tables_exist().await?;
    if own_tables {
        let collisions = tx.collisions(&schema, &watermark).await?;
        if !collisions.is_empty() {
            return Err(AdoptionError::Conflict(describe(&collisions)));
        }
    }
    let write = mode == Mode::Apply;
    let mut adopted = Adopted::default();

    // Owners and conversations adopted by earlier runs still count as present.
    let mut known_users: HashSet<i64> = HashSet::new();
    let mut known_conversations: HashSet<i64> = HashSet::new();
    if own_tables && watermark.user > 0 {
        known_users.extend(tx.own_user_ids(watermark.user).await?);
    }
    if own_tables && watermark.conversation > 0 {
        known_conversations.extend(tx.own_conversation_ids(watermark.conversation).await?);
    }

    if let Some(columns) = &schema.user {
        let rows = tx.legacy_users(columns, watermark.user).await?;
        let users = adopt_users(rows, &mut adopted)?;
        known_users.extend(users.iter().map(|user| user.id));
        adopted.users = users.len() as u64;
        if write {
            tx.insert_users(&users).await?;
        }
    }

    // Conversations still to be named: id → title from the first user message.
    let mut untitled: HashMap<i64, Option<String>> = HashMap::new();
    if let Some(columns) = &schema.conversation {
        let rows = tx
            .legacy_conversations(columns, watermark.conversation)
            .await?;
        let mut conversations = Vec::with_capacity(rows.len());
        for row in rows {
            if row
                .user_id
                .is_some_and(|owner| !known_users.contains(&owner))
            {
                // Adopting it anonymous would show a customer's history to anyone.
                count(&mut adopted, "conversations whose user is missing");
                continue;
            }
            let created_at = timestamp("conversation", row.id, row.created_at.as_deref())?;
            let short_name = row.short_name.filter(|name| !name.trim().is_empty());
            if short_name.is_none() {
                untitled.insert(row.id, None);
            }
            conversations.push(AdoptedConversation {
                id: row.id,
                user_id: row.user_id,
                short_name,
                created_at,
                is_deleted: row.is_deleted != 0,
            });
        }
        known_conversations.extend(conversations.iter().map(|conversation| conversation.id));
        adopted.conversations = conversations.len() as u64;
        if write {
            tx.insert_conversations(&conversations).await?;
        }
    }

    if let Some(columns) = &schema.message {
        let mut after = watermark.message;
        loop {
            let rows = tx.legacy_messages(columns, after, MESSAGE_PAGE).await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let mut page = Vec::with_capacity(rows.len());
            for row in rows {
                let Some(conversation_id) = row
                    .conversation_id
                    .filter(|id| known_conversations.contains(id))
                else {
                    count(&mut adopted, "messages whose conversation is missing");
                    continue;
                };
                let Some(role) = row.role.as_deref().and_then(known_role) else {
                    count(&mut adopted, "messages with an unknown role");
                    continue;
                };
                let created_at = timestamp("message", row.id, row.created_at.as_deref())?;
                if matches!(role, "user" | "guardrails")
                    && let Some(slot @ None) = untitled.get_mut(&conversation_id)
                    && let Some(text) = row.user_message.as_deref()
                    && !text.trim().is_empty()
                {
                    *slot = Some(prompt::short_name(text));
                }
                page.push(AdoptedMessage {
                    id: row.id,
                    conversation_id,
                    role,
                    content: row.content.unwrap_or_default(),
                    user_message: row.user_message,
                    created_at,
                });
            }
            adopted.messages += page.len() as u64;
            if write {
                tx.insert_messages(&page).await?;
            }
        }
    }

    let names: Vec<(i64, String)> = untitled
        .into_iter()
        .filter_map(|(id, name)| Some((id, name?)))
        .collect();
    adopted.titled = names.len() as u64;
    if write {
        tx.name_conversations(&names).await?;
        tx.advance_id_generators(&max_ids).await?;
        tx.record(&AdoptionRecord {
            users: adopted.users as i64,
            conversations: adopted.conversations as i64,
            messages: adopted.messages as i64,
            skipped: serde_json::to_string(&adopted.skipped).unwrap_or_else(|_| "{}".into()),
            watermark: max_ids.max(watermark),
            backup,
        })
        .await?;
    }
    Ok(Outcome::Adopted(adopted))
}

/// The columns adoption cannot do without (SQLModel always created them).
fn check_columns(schema: &LegacySchema) -> Result<(), AdoptionError> {
    let required: [(&'static str, Option<&_>, &[&'static str]); 3] = [
        (
            "user",
            schema.user.as_ref(),
            &["id", "email", "password", "created_at"],
        ),
        (
            "conversation",
            schema.conversation.as_ref(),
            &["id", "created_at"],
        ),
        (
            "message",
            schema.message.as_ref(),
            &["id", "conversation_id", "role", "content", "created_at"],
        ),
    ];
    for (table, columns, names) in required {
        let Some(columns) = columns else { continue };
        if let Some(column) = names.iter().find(|name| !columns.has(name)) {
            return Err(AdoptionError::MissingColumn { table, column });
        }
    }
    Ok(())
}

/// Users to insert: addresses lower-cased and trimmed, except where an older
/// account already has that address (see the module comment).
fn adopt_users(
    rows: Vec<crate::storage::legacy::LegacyUser>,
    adopted: &mut Adopted,
) -> Result<Vec<AdoptedUser>, AdoptionError> {
    let mut taken: HashSet<String> = HashSet::new();
    let mut users = Vec::with_capacity(rows.len());
    // Rows come in id order, so the first holder of an address is the oldest.
    for row in rows {
        let (Some(email), Some(password)) = (row.email, row.password) else {
            count(adopted, "users without an email or password");
            continue;
        };
        let created_at = timestamp("user", row.id, row.created_at.as_deref())?;
        let stored = email.trim().to_string();
        let normalized = stored.to_lowercase();
        let email = if taken.insert(normalized.clone()) {
            normalized
        } else if taken.insert(stored.clone()) {
            adopted.shared_addresses.push((row.id, stored.clone()));
            stored
        } else {
            // The very same address twice (Python's index on email was not
            // unique): this one gets a tagged address, unique and readable.
            let tagged = match stored.rsplit_once('@') {
                Some((local, domain)) => format!("{local}+dup{}@{domain}", row.id),
                None => format!("{stored}+dup{}", row.id),
            };
            taken.insert(tagged.clone());
            adopted.shared_addresses.push((row.id, tagged.clone()));
            tagged
        };
        users.push(AdoptedUser {
            id: row.id,
            email,
            name: row.name.unwrap_or_default(),
            password_hash: password,
            created_at,
        });
    }
    Ok(users)
}

fn count(adopted: &mut Adopted, reason: &'static str) {
    *adopted.skipped.entry(reason).or_default() += 1;
}

fn known_role(role: &str) -> Option<&'static str> {
    ["system", "user", "assistant", "guardrails"]
        .into_iter()
        .find(|known| *known == role)
}

fn describe(collisions: &Collisions) -> String {
    let mut parts = Vec::new();
    let ids = |ids: &[i64]| {
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !collisions.user_ids.is_empty() {
        parts.push(format!("user ids {}", ids(&collisions.user_ids)));
    }
    if !collisions.emails.is_empty() {
        parts.push(format!("addresses {}", collisions.emails.join(", ")));
    }
    if !collisions.conversation_ids.is_empty() {
        parts.push(format!(
            "conversation ids {}",
            ids(&collisions.conversation_ids)
        ));
    }
    if !collisions.message_ids.is_empty() {
        parts.push(format!("message ids {}", ids(&collisions.message_ids)));
    }
    parts.join("; ")
}

/// A stored timestamp as UTC: SQLAlchemy's naive `2026-12-03 23:35:14.622464`
/// (naive = UTC, as the Python service wrote them), with or without
/// fractional seconds, `T` or space, `Z` or a numeric offset, a bare date,
/// or Unix seconds.
pub fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let text = raw.trim();
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
        return Some(with_offset.with_timezone(&Utc));
    }
    for format in ["%F %T%.f%#z", "%FT%T%.f%#z", "%F %R%#z", "%FT%R%#z"] {
        if let Ok(with_offset) = DateTime::parse_from_str(text, format) {
            return Some(with_offset.with_timezone(&Utc));
        }
    }
    let naive = text.strip_suffix('Z').unwrap_or(text);
    for format in ["%F %T%.f", "%FT%T%.f", "%F %R", "%FT%R"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(naive, format) {
            return Some(naive.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%F") {
        return date.and_hms_opt(0, 0, 0).map(|naive| naive.and_utc());
    }
    let seconds: f64 = text.parse().ok()?;
    if !seconds.is_finite() {
        return None;
    }
    DateTime::from_timestamp_micros((seconds * 1_000_000.0).round() as i64)
}

fn timestamp(
    table: &'static str,
    id: i64,
    raw: Option<&str>,
) -> Result<DateTime<Utc>, AdoptionError> {
    raw.and_then(parse_timestamp)
        .ok_or_else(|| AdoptionError::Timestamp {
            table,
            id,
            value: raw.unwrap_or("NULL").to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn timestamps_in_every_stored_form_read_as_utc() {
        let cases = [
            ("2026-12-03 23:35:14.622464", "2026-12-03T23:35:14.622464Z"),
            ("2026-12-03 23:35:14", "2026-12-03T23:35:14Z"),
            ("2026-12-03T23:35:14.5", "2026-12-03T23:35:14.5Z"),
            ("2026-12-03 23:35", "2026-12-03T23:35:00Z"),
            ("2026-12-03T23:35:14Z", "2026-12-03T23:35:14Z"),
            ("2026-12-03 23:35:14.622464Z", "2026-12-03T23:35:14.622464Z"),
            ("2026-12-04 01:35:14.1+02:00", "2026-12-03T23:35:14.1Z"),
            ("2026-12-03 18:35:14-05", "2026-12-03T23:35:14Z"),
            (
                "2026-12-03T23:35:14.622464+00:00",
                "2026-12-03T23:35:14.622464Z",
            ),
            ("2026-12-03", "2026-12-03T00:00:00Z"),
            ("1764804914.5", "2025-12-03T23:35:14.5Z"),
        ];
        for (stored, expected) in cases {
            assert_eq!(parse_timestamp(stored), Some(utc(expected)), "{stored}");
        }
        for garbage in ["", "yesterday", "2026-13-01 00:00:00", "NaN", "inf"] {
            assert_eq!(parse_timestamp(garbage), None, "{garbage}");
        }
    }

    fn user(id: i64, email: &str) -> crate::storage::legacy::LegacyUser {
        crate::storage::legacy::LegacyUser {
            id,
            email: Some(email.to_string()),
            name: Some("N".into()),
            password: Some("$2b$12$hash".into()),
            created_at: Some("2026-01-01 00:00:00".into()),
        }
    }

    #[test]
    fn the_oldest_account_gets_a_shared_address_and_the_others_keep_theirs() {
        let mut adopted = Adopted::default();
        let rows = vec![
            user(1, " Bob@Example.com "),
            user(2, "bob@example.com"),
            user(3, "BOB@example.com"),
            user(4, "BOB@example.com"),
            user(5, "carol@example.com"),
        ];
        let users = adopt_users(rows, &mut adopted).expect("adopted");
        let emails: Vec<&str> = users.iter().map(|user| user.email.as_str()).collect();
        assert_eq!(
            emails,
            [
                "bob@example.com",
                "bob+dup2@example.com",
                "BOB@example.com",
                "BOB+dup4@example.com",
                "carol@example.com"
            ]
        );
        assert_eq!(adopted.shared_addresses.len(), 3);
    }
}
