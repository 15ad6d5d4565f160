//! Human handoff (contract section 17): a conversation's status, what hands
//! it to a person, and what agents do with it.
//!
//! `bot` → `pending_human` (the user asks for a person, the bot failed to
//! ground `HANDOFF_AFTER_UNGROUNDED` answers in a row, or the owner asks
//! through the API) → `human` (an agent answered) → `closed` (an agent
//! closed it) → `bot` (the user wrote again). Every change is one
//! conditional UPDATE, so two servers or two requests never both make the
//! same change, and the webhook event it causes is written in the same
//! transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::model::ModelClient;
use crate::config::HandoffConfig;
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::services::chat::{ClientMessage, client_view};
use crate::services::prompt;
use crate::services::webhooks::{self, Event, EventType, Webhooks};
use crate::storage::Database;
use crate::storage::conversations::{self, ConversationRecord, QueuedConversation, StatusChange};
use crate::storage::messages::{self, Author, MessageRecord, NewMessage, Role};
use crate::storage::users::{self, UserRecord};

/// Who answers a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Bot,
    PendingHuman,
    Human,
    Closed,
}

impl Status {
    pub const ALL: [Status; 4] = [Self::Bot, Self::PendingHuman, Self::Human, Self::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bot => "bot",
            Self::PendingHuman => "pending_human",
            Self::Human => "human",
            Self::Closed => "closed",
        }
    }

    /// A stored or requested status; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }

    /// A stored status (an unknown value reads as `bot`, the default).
    pub fn of(conversation: &ConversationRecord) -> Self {
        Self::parse(&conversation.status).unwrap_or(Self::Bot)
    }

    /// A person owns the conversation: the model is not called.
    pub fn with_a_person(self) -> bool {
        matches!(self, Self::PendingHuman | Self::Human)
    }
}

/// What handed a conversation to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The user asked for a person in a message.
    UserRequest,
    /// `HANDOFF_AFTER_UNGROUNDED` answers in a row had nothing to stand on.
    Ungrounded,
    /// `POST /api/chat/handoff/{id}`.
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRequest => "user_request",
            Self::Ungrounded => "ungrounded",
            Self::Api => "api",
        }
    }
}

/// Longest `reason` kept (characters).
pub const MAX_REASON_CHARS: usize = 500;
/// How long a handoff event waits for its summary before it goes out without.
const SUMMARY_BUDGET: Duration = Duration::from_secs(20);

/// The handoff's settings and what it writes to.
#[derive(Clone)]
pub struct Handoff {
    db: Database,
    model: Option<ModelClient>,
    webhooks: Webhooks,
    config: Arc<HandoffConfig>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// An agent's queue entry: the conversation and its user, if any.
pub type QueueEntry = QueuedConversation;

impl Handoff {
    pub fn new(
        db: Database,
        model: Option<ModelClient>,
        webhooks: Webhooks,
        config: HandoffConfig,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            db,
            model,
            webhooks,
            config: Arc::new(config),
            metrics,
            tasks,
            shutdown,
        }
    }

    /// The answer to the turn that hands a conversation over.
    pub fn reply(&self) -> &str {
        &self.config.reply
    }

    /// The answer to a user message while a person owns the conversation.
    pub fn ack_reply(&self) -> &str {
        &self.config.ack_reply
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Whether this turn, ungrounded, makes `HANDOFF_AFTER_UNGROUNDED` in a
    /// row with the answers before it in `history`.
    pub fn ungrounded_limit_reached(&self, history: &[MessageRecord]) -> bool {
        let limit = self.config.after_ungrounded;
        limit > 0 && ungrounded_streak(history).saturating_add(1) >= limit
    }

    /// Hands a conversation in `bot` or `closed` to a person, with its
    /// webhook event; false when its status had already moved on.
    pub async fn request(
        &self,
        conversation: &ConversationRecord,
        trigger: Trigger,
        reason: Option<&str>,
    ) -> Result<bool, AppError> {
        let reason = reason.map(|reason| truncate_chars(reason.trim(), MAX_REASON_CHARS));
        let mut pending = None;
        if self.webhooks.enabled() {
            let event = Event::new(EventType::HandoffRequested);
            let (data, transcript) = self.handoff_data(conversation, trigger, reason).await?;
            pending = Some((event, data, transcript));
        }
        let body = pending
            .as_ref()
            .map(|(event, data, _)| event.render(data))
            .unwrap_or_default();
        // Held back while the summary is written (it is then made due at
        // once); without a model there is nothing to wait for.
        let due = match self.model {
            Some(_) => Utc::now() + SUMMARY_BUDGET,
            None => Utc::now(),
        };
        let change = StatusChange {
            id: conversation.id,
            from: &[Status::Bot.as_str(), Status::Closed.as_str()],
            to: Status::PendingHuman.as_str(),
            reason: Some(reason.unwrap_or(trigger.as_str())),
            event: pending
                .as_ref()
                .map(|(event, _, _)| webhooks::outbox_row(event, &body, due)),
        };
        if !conversations::change_status(&self.db, change).await? {
            return Ok(false);
        }
        self.metrics.handoff(trigger.as_str());
        tracing::info!(
            conversation_id = conversation.id,
            trigger = trigger.as_str(),
            "conversation handed to a person"
        );
        match (pending, &self.model) {
            (Some((event, data, transcript)), Some(model)) => {
                self.tasks.spawn(summarize_into(
                    self.clone(),
                    model.clone(),
                    event,
                    data,
                    transcript,
                ));
            }
            (Some(_), None) => self.webhooks.wake(),
            (None, _) => {}
        }
        Ok(true)
    }

    /// `closed` → `bot` (the user wrote again).
    pub async fn reopen(&self, conversation_id: i64) -> Result<(), AppError> {
        let change = StatusChange {
            id: conversation_id,
            from: &[Status::Closed.as_str()],
            to: Status::Bot.as_str(),
            reason: None,
            event: None,
        };
        conversations::change_status(&self.db, change).await?;
        Ok(())
    }

    /// The conversations whose status is one of `statuses`, longest waiting first.
    pub async fn queue(
        &self,
        statuses: &[Status],
        limit: i64,
        offset: i64,
    ) -> Result<Vec<QueueEntry>, AppError> {
        let statuses: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
        Ok(conversations::list_by_status(&self.db, &statuses, limit, offset).await?)
    }

    /// A conversation an agent may act on: 404 unknown, 400 deleted.
    pub async fn find(&self, id: i64) -> Result<ConversationRecord, AppError> {
        let conversation = conversations::find(&self.db, id)
            .await?
            .ok_or(AppError::NotFound("Conversation not found"))?;
        if conversation.is_deleted {
            return Err(AppError::BadRequest("Conversation is deleted"));
        }
        Ok(conversation)
    }

    /// An agent's answer: stored as an assistant message by `agent`; the
    /// conversation becomes `human`. 409 when it is closed.
    pub async fn agent_message(
        &self,
        agent: &UserRecord,
        id: i64,
        content: &str,
    ) -> Result<(), AppError> {
        self.find(id).await?;
        let change = StatusChange {
            id,
            from: &[
                Status::Bot.as_str(),
                Status::PendingHuman.as_str(),
                Status::Human.as_str(),
            ],
            to: Status::Human.as_str(),
            reason: None,
            event: None,
        };
        if !conversations::change_status(&self.db, change).await? {
            return Err(self.conflict(id, "an agent message").await);
        }
        let message = NewMessage {
            agent: Some(agent.id),
            ..NewMessage::answer(id, content)
        };
        messages::insert(&self.db, message).await?;
        tracing::info!(conversation_id = id, agent_id = agent.id, "agent answered");
        Ok(())
    }

    /// Closes a conversation a person owns, with its webhook event; 409
    /// when it is already closed or with the bot.
    pub async fn close(&self, agent: &UserRecord, id: i64) -> Result<(), AppError> {
        let conversation = self.find(id).await?;
        let event = self.webhooks.enabled().then(|| {
            let event = Event::new(EventType::ConversationClosed);
            let data = json!({
                "conversation": conversation_json(&conversation, Status::Closed),
                "closed_by": {"id": agent.id, "email": agent.email, "name": agent.name},
            });
            let body = event.render(&data);
            (event, body)
        });
        let change = StatusChange {
            id,
            from: &[Status::PendingHuman.as_str(), Status::Human.as_str()],
            to: Status::Closed.as_str(),
            reason: None,
            event: event
                .as_ref()
                .map(|(event, body)| webhooks::outbox_row(event, body, event.created_at)),
        };
        if !conversations::change_status(&self.db, change).await? {
            return Err(self.conflict(id, "closing").await);
        }
        self.webhooks.wake();
        tracing::info!(
            conversation_id = id,
            agent_id = agent.id,
            "conversation closed"
        );
        Ok(())
    }

    /// Why a change did not apply: the status it found (read again).
    async fn conflict(&self, id: i64, what: &str) -> AppError {
        let status = match self.find(id).await {
            Ok(conversation) => Status::of(&conversation),
            Err(err) => return err,
        };
        let message = match status {
            Status::Closed => "Conversation is already closed",
            Status::Bot => "Conversation is with the bot, not a person",
            Status::PendingHuman | Status::Human => "Conversation changed; try again",
        };
        tracing::debug!(
            conversation_id = id,
            what,
            status = status.as_str(),
            "refused"
        );
        AppError::Conflict(message)
    }

    /// The `handoff.requested` data, summary to come.
    async fn handoff_data(
        &self,
        conversation: &ConversationRecord,
        trigger: Trigger,
        reason: Option<&str>,
    ) -> Result<(Value, Vec<ClientMessage>), AppError> {
        let user = match conversation.user_id {
            Some(id) => users::find_by_id(&self.db, id).await?,
            None => None,
        };
        let transcript = client_view(&messages::list(&self.db, conversation.id).await?);
        let data = json!({
            "conversation": conversation_json(conversation, Status::PendingHuman),
            "user": user.map(|user| json!({"id": user.id, "email": user.email, "name": user.name})),
            "anonymous": conversation.user_id.is_none(),
            "trigger": trigger.as_str(),
            "reason": reason,
            "summary": Value::Null,
            "transcript": transcript,
        });
        Ok((data, transcript))
    }
}

/// Writes the model's summary into a handoff event not yet sent; the event
/// goes out with `summary: null` when the model fails or is slow (best
/// effort: never blocks the event).
async fn summarize_into(
    handoff: Handoff,
    model: ModelClient,
    event: Event,
    mut data: Value,
    transcript: Vec<ClientMessage>,
) {
    let request = prompt::summary_request(&transcript);
    let summary = tokio::select! {
        () = handoff.shutdown.cancelled() => None,
        answer = tokio::time::timeout(SUMMARY_BUDGET, model.complete(&request)) => match answer {
            Ok(Ok(summary)) => Some(summary),
            Ok(Err(err)) => {
                tracing::warn!(event_id = %event.id, error = %err, "handoff summary failed; the event goes without it");
                None
            }
            Err(_) => {
                tracing::warn!(event_id = %event.id, "handoff summary timed out; the event goes without it");
                None
            }
        },
    };
    if let Some(summary) = summary {
        data["summary"] = Value::String(summary);
    }
    let body = event.render(&data);
    if let Err(err) = webhooks::complete(&handoff.webhooks, &handoff.db, &event, &body).await {
        // The event is in the outbox without its summary and goes out when due.
        tracing::warn!(event_id = %event.id, error = %err, "storing a handoff summary failed");
    }
}

/// A conversation as events show it, with the status it has after the event.
fn conversation_json(conversation: &ConversationRecord, status: Status) -> Value {
    json!({
        "id": conversation.id,
        "short_name": conversation.short_name,
        "status": status.as_str(),
        "created_at": conversation.created_at,
        "user_id": conversation.user_id,
    })
}

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Ungrounded bot answers at the end of `history`, counting back to the
/// first answer that was grounded, had no grounding (a fixed reply, an
/// answer from before grounding) or came from a person.
pub fn ungrounded_streak(history: &[MessageRecord]) -> u32 {
    let mut streak = 0;
    for record in history.iter().rev() {
        match record.role {
            Role::Assistant => match (record.author, record.grounded) {
                (Author::Bot, Some(false)) => streak += 1,
                _ => break,
            },
            Role::User | Role::Guardrails | Role::System => {}
        }
    }
    streak
}

/// When a status changed, as a time.
pub fn changed_at(conversation: &ConversationRecord) -> Option<DateTime<Utc>> {
    conversation
        .status_changed_ms
        .and_then(DateTime::from_timestamp_millis)
}

// --- asking for a person -------------------------------------------------------

/// Words that name a person to talk to.
const PEOPLE: &[&str] = &[
    "human",
    "person",
    "agent",
    "representative",
    "rep",
    "operator",
    "advisor",
    "adviser",
    "staff",
    "someone",
    "somebody",
    "people",
    "service",
    "support",
];
/// Of those, the ones that need a verb of talking before them ("talk to
/// someone", "speak to customer service"), not just any ask.
const PEOPLE_NEEDING_TALK: &[&str] = &["someone", "somebody", "people", "service", "support"];
/// Asks that take a person as their object.
const ASKS: &[&str] = &[
    "talk", "speak", "chat", "connect", "transfer", "put", "get", "want", "need", "give",
    "escalate", "reach", "contact", "call", "have",
];
/// Asks of talking.
const TALKS: &[&str] = &[
    "talk", "speak", "chat", "connect", "transfer", "reach", "contact", "call",
];
/// What may stand between an ask and the person.
const BETWEEN: &[&str] = &[
    "this", "it", "to", "with", "a", "an", "the", "some", "your", "one", "of", "me", "through",
    "real", "live", "actual", "human", "customer", "support", "service", "care", "team", "member",
    "please", "pls", "now", "right", "away", "just", "directly", "proper", "bank", "in",
];
/// Words that make "real person", "live agent" an ask wherever they are.
const QUALIFIERS: &[&str] = &["real", "live", "actual", "human"];
/// Words that may fill a short message that is only an ask ("agent please").
const FILLERS: &[&str] = &[
    "please", "pls", "plz", "now", "a", "an", "i", "want", "need", "give", "me", "get", "the",
    "real", "live", "actual", "human", "talk", "speak", "to", "with", "can", "could", "may", "let",
    "just", "asap", "urgently", "id", "like", "customer", "service", "support",
];
/// Words after a person word that make it something else ("human
/// resources", "representative APR", "agent number").
const NOT_A_PERSON_AFTER: &[&str] = &[
    "resources",
    "resource",
    "apr",
    "example",
    "rate",
    "rates",
    "fee",
    "fees",
    "code",
    "id",
    "number",
    "error",
    "rights",
    "trafficking",
    "mode",
];
/// Negations before an ask.
const NEGATIONS: &[&str] = &[
    "not", "dont", "no", "never", "without", "doesnt", "didnt", "wont",
];
/// Words corrected when misspelt (by one edit at 5 letters or more, two at 10 or more).
const CORRECTED: &[&str] = &[
    "human",
    "person",
    "agent",
    "representative",
    "operator",
    "speak",
    "someone",
    "somebody",
];

/// Whether a message asks for a person: "talk to a human", "speak to an
/// agent", "real person", "representative", in any case and with small
/// typos; not "human resources", "representative APR", "I don't need an
/// agent" or "are you a real person?".
pub fn asks_for_human(text: &str) -> bool {
    let words = words(text);
    let is = |word: &str, list: &[&str]| list.contains(&word);
    // A short message that is only an ask: "Agent!", "human please".
    if words.len() <= 5
        && words
            .iter()
            .any(|word| is(word, PEOPLE) && !is(word, PEOPLE_NEEDING_TALK))
        && words
            .iter()
            .all(|word| is(word, FILLERS) || is(word, PEOPLE))
    {
        return true;
    }
    for (at, word) in words.iter().enumerate() {
        if !is(word, PEOPLE)
            || words
                .get(at + 1)
                .is_some_and(|next| is(next, NOT_A_PERSON_AFTER))
        {
            continue;
        }
        // Back over what may stand between the person and the ask.
        let mut start = at;
        while start > 0 && is(&words[start - 1], BETWEEN) {
            start -= 1;
        }
        let between = &words[start..at];
        let ask = start.checked_sub(1).map(|i| words[i].as_str());
        let asked = ask
            .is_some_and(|ask| is(ask, TALKS) || (is(ask, ASKS) && !is(word, PEOPLE_NEEDING_TALK)));
        // "real person", "live agent", "human agent" are asks by themselves.
        let qualified = !is(word, PEOPLE_NEEDING_TALK)
            && between
                .last()
                .is_some_and(|before| is(before, QUALIFIERS) && before != word);
        if !(asked || qualified) {
            continue;
        }
        let before = &words[start.saturating_sub(4)..start.saturating_sub(usize::from(asked))];
        let negated = before.iter().any(|word| is(word, NEGATIONS));
        // "are you a real person?", "is this a human?", "you are an agent".
        let about_the_bot = before.windows(2).any(|pair| {
            matches!(
                (pair[0].as_str(), pair[1].as_str()),
                ("are", "you") | ("is", "this") | ("is", "it") | ("you", "are") | ("am", "i")
            )
        }) || before.last().is_some_and(|word| word == "youre");
        if !negated && !about_the_bot {
            return true;
        }
    }
    false
}

/// Lower-cased words (apostrophes dropped: "don't" → "dont"), misspelt
/// person words corrected, plurals of person words made singular; the first
/// 200 words only (an ask is not buried in an essay).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|word| {
            word.chars()
                .filter(|c| *c != '\'' && *c != '’')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|word| !word.is_empty())
        .take(200)
        .map(correct)
        .collect()
}

/// Short misspellings of asks, too short to correct by distance.
const MISSPELT_ASKS: &[(&str, &str)] = &[
    ("tlak", "talk"),
    ("tak", "talk"),
    ("taik", "talk"),
    ("tolk", "talk"),
    ("spek", "speak"),
    ("spak", "speak"),
];

fn correct(word: String) -> String {
    if PEOPLE.contains(&word.as_str()) {
        return word;
    }
    if let Some((_, ask)) = MISSPELT_ASKS.iter().find(|(typo, _)| *typo == word) {
        return (*ask).to_owned();
    }
    if let Some(stem) = word.strip_suffix('s')
        && PEOPLE.contains(&stem)
    {
        return stem.to_owned();
    }
    let length = word.chars().count();
    let allowed = match length {
        0..=4 => return word,
        5..=9 => 1,
        _ => 2,
    };
    let first = word.chars().next();
    CORRECTED
        .iter()
        .find(|known| {
            known.chars().next() == first && strsim::osa_distance(&word, known) <= allowed
        })
        .map_or(word, |known| (*known).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_asks_for_a_person_are_heard() {
        for ask in [
            "talk to a human",
            "I want to speak to an agent",
            "Can I talk to a real person please?",
            "REPRESENTATIVE",
            "representative please",
            "Agent!",
            "human",
            "connect me with a live agent",
            "put me through to an operator",
            "I need to speak to someone about a fraud on my card",
            "let me talk to customer service",
            "is there a real person I can chat with",
            "I'd like to escalate this to a human",
            "get me a human now",
            "speak to a humna",
            "talk to a reprsentative",
            "i want to tlak to a persn",
            "speek to an agnet",
            "can i have an actual human",
            "This bot is useless, I want a person",
            "Transfer me to an advisor",
            "I need human help with this dispute",
        ] {
            assert!(asks_for_human(ask), "{ask:?} should ask for a person");
        }
    }

    #[test]
    fn look_alikes_are_not_asks() {
        for text in [
            "What is the representative APR on your loan?",
            "How do I contact human resources about my payslip?",
            "Is my letting agent allowed to take the deposit by card?",
            "Are you a real person?",
            "is this a human or a bot",
            "I don't need an agent, just tell me the fee",
            "How do I send money to another person?",
            "Can someone else use my card?",
            "My estate agent asked for proof of funds",
            "What's the agent number on my statement?",
            "Somebody charged my account twice",
            "How do I transfer money to a person abroad?",
            "I need some stuff for my account setup",
            "What do I need to open a joint account for two people?",
            "What support do you offer for small businesses?",
            "Do you have a customer service number?",
        ] {
            assert!(!asks_for_human(text), "{text:?} is not an ask for a person");
        }
    }

    #[test]
    fn the_streak_counts_ungrounded_bot_answers_back_to_anything_else() {
        let at = Utc::now();
        let answer = |grounded: Option<bool>, author: Author| MessageRecord {
            id: 0,
            conversation_id: 1,
            role: Role::Assistant,
            content: String::new(),
            user_message: None,
            created_at: at,
            sources: None,
            grounded,
            feedback_rating: None,
            feedback_reason: None,
            stopped: false,
            author,
        };
        let question = MessageRecord {
            role: Role::User,
            ..answer(None, Author::Bot)
        };
        let history = vec![
            question.clone(),
            answer(Some(false), Author::Agent(Some(3))),
            question.clone(),
            answer(Some(false), Author::Bot),
            question.clone(),
            answer(Some(false), Author::Bot),
        ];
        assert_eq!(ungrounded_streak(&history), 2);
        let mut grounded = history.clone();
        grounded.push(question.clone());
        grounded.push(answer(Some(true), Author::Bot));
        assert_eq!(ungrounded_streak(&grounded), 0);
        assert_eq!(ungrounded_streak(&history[..2]), 0);
        assert_eq!(ungrounded_streak(&[]), 0);
    }
}
