//! The chat pipeline shared by one-shot, SSE and WebSocket turns, and the
//! conversation operations (read, list, delete, summarize).
//!
//! A turn is: resolve the conversation → guardrails → retrieval → store the
//! user turn → stream the model → store the answer → final history. The
//! transports only frame the [`ReplyEvent`]s of a [`ReplyStream`]. How a
//! streaming turn runs, is followed, resumed, stopped and repeated is in
//! [`turns`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::model::{ModelClient, ModelError, TokenStream};
use crate::clients::redis::Redis;
use crate::clients::retrieval::Passage;
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::services::guardrails::{self, RefusalReason, Verdict};
use crate::services::handoff::{self, Handoff, Status, Trigger};
use crate::services::judge::{Judge, Ruling};
use crate::services::knowledge::retrieve::Retrieval;
use crate::services::live::{LiveEvent, LiveTurn, TurnHub};
use crate::services::prompt::{self, EchoGuard};
use crate::services::rate_limits::RateLimit;
use crate::services::sends::{self, SendClaims};
use crate::services::shared_turns::{self, SharedTurn};
use crate::services::stream_limits::{StreamLimits, StreamSlot};
use crate::services::turn_log::{TurnEntry, TurnLog, TurnTally};
use crate::services::webhooks::{self, Event, EventType};
use crate::storage::Database;
use crate::storage::conversations::{self, ConversationRecord};
use crate::storage::messages::SendKey;
use crate::storage::messages::{self, MessageRecord, NewMessage, Role};
use crate::storage::users;
use tokio_util::task::AbortOnDropHandle;

mod turns;
use turns::send_claim_key;

/// One message as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientMessage {
    pub id: i64,
    /// `user` or `assistant`.
    pub role: &'static str,
    pub content: String,
    pub created_at: DateTime<Utc>,
    /// Assistant items: the knowledge-base records the answer was given
    /// (empty for refusals and for answers older than sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Source>>)]
    pub sources: Option<Box<RawValue>>,
    /// Assistant items: whether any record cleared `RETRIEVAL_MIN_SCORE`;
    /// null for refusals and answers older than grounding.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>, nullable)]
    pub grounded: Option<Option<bool>>,
    /// Assistant items: the feedback given on the answer, or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Feedback>, nullable)]
    pub feedback: Option<Option<Feedback>>,
    /// Assistant items: true when a stop request cut the answer short.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub stopped: Option<bool>,
    /// Assistant items: `bot` (the model or a fixed reply) or `agent` (a
    /// person, section 17).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "bot")]
    pub author: Option<&'static str>,
}

/// A rating of an answer (contract section 16).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Feedback {
    /// `up` or `down`.
    #[schema(example = "down")]
    pub rating: String,
    pub reason: Option<String>,
}

impl Feedback {
    fn of(record: &MessageRecord) -> Option<Self> {
        record.feedback_rating.as_ref().map(|rating| Self {
            rating: rating.clone(),
            reason: record.feedback_reason.clone(),
        })
    }
}

/// A knowledge-base record an answer was given.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Source {
    pub id: String,
    pub title: Option<String>,
    pub category: Option<String>,
    pub url: Option<String>,
    /// Higher is better (local: 0..1; Pinecone: its own score).
    pub score: f64,
}

impl From<&Passage> for Source {
    fn from(passage: &Passage) -> Self {
        Self {
            id: passage.id.clone(),
            title: passage.title.clone(),
            category: passage.category.clone(),
            url: passage.url.clone(),
            score: passage.score,
        }
    }
}

/// Stored sources as they go out; `[]` when none were stored.
pub(crate) fn sources_json(stored: Option<&str>) -> Option<Box<RawValue>> {
    let empty = || RawValue::from_string("[]".to_string()).ok();
    match stored {
        Some(text) => RawValue::from_string(text.to_string()).ok().or_else(empty),
        None => empty(),
    }
}

/// A conversation's client-visible history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    pub messages: Vec<ClientMessage>,
    pub conversation_id: i64,
    /// `bot`, `pending_human`, `human` or `closed` (section 17).
    #[schema(example = "bot")]
    pub status: String,
}

/// A conversation as listed in the sidebar.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationSummary {
    pub id: i64,
    pub user_id: Option<i64>,
    pub short_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub is_deleted: bool,
    /// `bot`, `pending_human`, `human` or `closed` (section 17).
    #[schema(example = "bot")]
    pub status: String,
}

impl From<ConversationRecord> for ConversationSummary {
    fn from(record: ConversationRecord) -> Self {
        Self {
            id: record.id,
            user_id: record.user_id,
            short_name: record.short_name,
            created_at: record.created_at,
            updated_at: record.updated_at,
            is_deleted: record.is_deleted,
            status: record.status,
        }
    }
}

/// Filters stored messages into the client view (section 4 of the contract).
pub fn client_view(records: &[MessageRecord]) -> Vec<ClientMessage> {
    // A question as typed (a user row, or the question of a refusal).
    let question = |record: &MessageRecord| ClientMessage {
        id: record.id,
        role: "user",
        content: record.user_message.clone().unwrap_or_default(),
        created_at: record.created_at,
        sources: None,
        grounded: None,
        feedback: None,
        stopped: None,
        author: None,
    };
    let mut view = Vec::with_capacity(records.len());
    for record in records {
        match record.role {
            Role::System => {}
            Role::User => view.push(question(record)),
            Role::Assistant => view.push(ClientMessage {
                id: record.id,
                role: "assistant",
                content: record.content.clone(),
                created_at: record.created_at,
                sources: sources_json(record.sources.as_deref()),
                grounded: Some(record.grounded),
                feedback: Some(Feedback::of(record)),
                stopped: Some(record.stopped),
                author: Some(record.author.as_str()),
            }),
            Role::Guardrails => {
                view.push(question(record));
                view.push(ClientMessage {
                    id: record.id,
                    role: "assistant",
                    content: record.content.clone(),
                    created_at: record.created_at,
                    sources: sources_json(None),
                    grounded: Some(None),
                    feedback: Some(Feedback::of(record)),
                    stopped: Some(false),
                    author: Some("bot"),
                });
            }
        }
    }
    view
}

/// Who is asking for a turn, where, and what.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub caller: Option<i64>,
    /// `None` or `0` starts a new conversation.
    pub conversation_id: Option<i64>,
    pub message: String,
    pub transport: Transport,
    /// The client's id for this send: a repeat reattaches to the first turn.
    pub client_message_id: Option<String>,
    /// The sender's address (for an anonymous send's `client_message_id`).
    pub client_ip: Option<std::net::IpAddr>,
}

/// Which of the three transports a turn came over (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `POST /api/chat/create`.
    Create,
    /// `POST /api/chat/stream`.
    Sse,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Sse => "sse",
            Self::WebSocket => "websocket",
        }
    }
}

/// How a turn began.
pub enum TurnOutcome {
    /// The guardrails refused the message; the refusal is stored.
    Refused(ConversationView),
    /// The model is answering.
    Streaming(ReplyStream),
}

/// What a streaming turn produces, in order: deltas, then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum ReplyEvent {
    Delta(String),
    Done(ConversationView),
    Failed(Failure),
}

/// Why a streaming turn ended without `Done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The model stream broke, stalled or timed out.
    Upstream,
    /// The answer could not be stored or the history not read back.
    Storage,
    /// The server is shutting down.
    Shutdown,
}

impl Failure {
    /// The safe sentence shown to clients.
    pub fn message(self) -> &'static str {
        match self {
            Self::Upstream => "The assistant's answer was interrupted. Please try again.",
            Self::Storage => "The answer could not be saved. Please try again.",
            Self::Shutdown => "The server is restarting. Please try again in a moment.",
        }
    }
}

/// A follower of one turn's events, each with its number (from 1, deltas
/// and the final event alike). Dropping it detaches the follower; the turn
/// goes on (see [`crate::services::live`]).
pub struct ReplyStream {
    pub conversation_id: i64,
    pub turn: Arc<LiveTurn>,
    events: Pin<Box<dyn Stream<Item = (u64, ReplyEvent)> + Send>>,
}

impl Stream for ReplyStream {
    type Item = (u64, ReplyEvent);

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(u64, ReplyEvent)>> {
        self.events.as_mut().poll_next(cx)
    }
}

/// Chat orchestration over storage, guardrails, retrieval and the model.
#[derive(Clone)]
pub struct ChatService {
    db: Database,
    model: Option<ModelClient>,
    retrieval: Retrieval,
    /// Answered without calling the model when no record cleared the minimum score.
    ungrounded_reply: Option<Arc<str>>,
    settings: ChatSettings,
    limits: StreamLimits,
    metrics: Arc<Metrics>,
    /// Stores of partial answers outlive their stream; shutdown waits for them.
    tasks: TaskTracker,
    /// One row per ended turn, for the admin analytics.
    turn_log: TurnLog,
    /// Histories recently read, checked against the stored message count.
    histories: Arc<HistoryCache>,
    /// The turns streaming now and recently ended, for resume and stop.
    live: Arc<TurnHub>,
    /// Fires at shutdown: running turns store their partial answers and end.
    shutdown: CancellationToken,
    /// Sends with a `client_message_id` that are starting now.
    sends: Arc<SendClaims>,
    /// The chat-turn rate limit.
    turn_limits: RateLimit,
    /// Shared with the other servers (turns, limits), when configured.
    redis: Option<Redis>,
    /// Who answers each conversation: the model or a person.
    handoff: Handoff,
    /// The guardrail judge, when `GUARDRAIL_JUDGE=model`.
    judge: Option<Judge>,
}

/// The models a turn may call: the one that answers, and the guardrail judge.
#[derive(Clone, Default)]
pub struct Models {
    pub answer: Option<ModelClient>,
    pub judge: Option<Judge>,
}

/// Limits of the chat pipeline, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ChatSettings {
    pub history_max_messages: usize,
    pub max_message_chars: usize,
    pub max_streams_total: usize,
    pub max_streams_per_user: usize,
    /// How long a turn nobody follows keeps streaming (`STREAM_RESUME_GRACE_SECS`).
    pub resume_grace: Duration,
    /// How long an ended turn's events stay (`STREAM_REPLAY_TTL_SECS`).
    pub replay_ttl: Duration,
    /// Turns per minute per sender (`RATE_LIMIT_CHAT_PER_MINUTE`; 0: off).
    pub turns_per_minute: u32,
}

/// What the pipeline's work outside requests answers to: the tracker that
/// shutdown waits on, the metrics, and the shutdown signal itself.
#[derive(Clone)]
pub struct Lifecycle {
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Shared with the other servers, when `REDIS_URL` is set.
    pub redis: Option<Redis>,
}

impl ChatService {
    pub fn new(
        db: Database,
        models: Models,
        handoff: Handoff,
        retrieval: Retrieval,
        ungrounded_reply: Option<String>,
        settings: ChatSettings,
        lifecycle: Lifecycle,
    ) -> Self {
        let Lifecycle {
            tasks,
            metrics,
            shutdown,
            redis,
        } = lifecycle;
        let live = Arc::new(TurnHub::new(settings.replay_ttl, redis.clone()));
        {
            // Ended turns are forgotten on the next open; this frees them
            // when no new turn comes.
            let (live, shutdown) = (live.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = every.tick() => live.sweep(),
                    }
                }
            });
        }
        if let Some(redis) = &redis {
            // Stop requests made on other servers for turns running here.
            let live = live.clone();
            redis.listen_for_stops(shutdown.clone(), move |turn_id| {
                if let Some(turn) = live.get(turn_id) {
                    turn.request_stop();
                }
            });
        }
        let Models {
            answer: model,
            judge,
        } = models;
        Self {
            judge,
            handoff,
            live,
            redis: redis.clone(),
            sends: Arc::new(SendClaims::default()),
            turn_limits: RateLimit::new(
                "chat",
                settings.turns_per_minute,
                redis.clone(),
                &shutdown,
            ),
            shutdown,
            turn_log: TurnLog::new(db.clone(), tasks.clone()),
            metrics,
            db,
            model,
            retrieval,
            ungrounded_reply: ungrounded_reply.map(Arc::from),
            limits: StreamLimits::new(
                settings.max_streams_total,
                settings.max_streams_per_user,
                redis.clone(),
            ),
            settings,
            tasks,
            histories: Arc::new(HistoryCache::with_weighter(
                10_000,
                HISTORY_CACHE_BYTES,
                HistoryWeight,
            )),
        }
    }

    /// Checks a typed message: not blank, not over the length limit.
    pub fn validate_message<'a>(&self, message: &'a str) -> Result<&'a str, AppError> {
        if message.trim().is_empty() {
            return Err(AppError::invalid(
                &["body", "message"],
                "message must not be empty",
            ));
        }
        if message.contains('\0') {
            return Err(AppError::invalid(
                &["body", "message"],
                "message must not contain NUL characters",
            ));
        }
        if message.chars().count() > self.settings.max_message_chars {
            return Err(AppError::invalid(
                &["body", "message"],
                format!(
                    "message must be at most {} characters",
                    self.settings.max_message_chars
                ),
            ));
        }
        Ok(message)
    }

    /// Runs a turn up to the first model token.
    pub async fn start_turn(&self, request: TurnRequest) -> Result<TurnOutcome, AppError> {
        let started = Instant::now();
        let entry = TurnEntry::begin(request.caller, request.transport);
        let transport = request.transport.as_str();
        let model = self.model.as_ref().ok_or(AppError::ModelNotConfigured)?;
        let message = self.validate_message(&request.message)?;
        // A send with a client message id: one turn per id. A repeat waits
        // while the first is starting, then reattaches to it.
        let sender = sends::sender_key(request.caller, request.client_ip);
        let _claim = match &request.client_message_id {
            Some(id) => {
                sends::validate(id)?;
                let key = match request.conversation_id.filter(|id| *id > 0) {
                    Some(conversation) => SendKey::Conversation(conversation),
                    None => SendKey::Sender(&sender),
                };
                let claim_key = send_claim_key(key, id);
                let claim = self.sends.claim(claim_key.clone()).await;
                if let Some(repeat) = self.repeat(&request, message, key, id).await? {
                    return Ok(repeat);
                }
                // Across servers: the first to claim the send in Redis starts
                // it; a repeat elsewhere waits for its question to be stored.
                if let Some(redis) = &self.redis
                    && !sends::claim_shared(redis, &claim_key).await
                {
                    let deadline = tokio::time::Instant::now() + sends::SHARED_CLAIM_TTL;
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Some(repeat) = self.repeat(&request, message, key, id).await? {
                            return Ok(repeat);
                        }
                    }
                }
                Some(claim)
            }
            None => None,
        };
        let client_message_id = request.client_message_id.as_deref();
        // Held until the answer ends (or the turn fails before streaming).
        let slot = self.limits.acquire(request.caller).await.inspect_err(|_| {
            self.metrics.rate_limited("streams");
        })?;
        // A new turn (a repeat returned above, a refusal by the stream caps
        // does not start one): counted against the rate limit.
        self.turn_limits.check(&sender).await.inspect_err(|_| {
            self.metrics.rate_limited("chat");
        })?;
        let redacted = match guardrails::check(message) {
            Verdict::Refuse { reason, redacted } => {
                let (conversation, created) = self
                    .resolve_for_turn(request.caller, request.conversation_id, &redacted)
                    .await?;
                let conversation_id = conversation.id;
                tracing::info!(conversation_id, ?reason, "guardrails refused a message");
                let refusal = NewMessage {
                    conversation_id,
                    role: Role::Guardrails,
                    content: reason.message(),
                    user_message: Some(&redacted),
                    sources: None,
                    grounded: None,
                    stopped: false,
                    turn_id: None,
                    client_message_id,
                    client_key: created.then_some(sender.as_str()),
                    agent: None,
                };
                messages::insert(&self.db, refusal).await?;
                self.metrics.turn_ended(transport, "refused");
                self.turn_log.record(
                    entry.in_conversation(conversation_id),
                    "refused",
                    Some(reason.code()),
                    None,
                );
                return Ok(TurnOutcome::Refused(self.view(conversation_id).await?.view));
            }
            Verdict::Allow { redacted } => redacted,
        };
        // The judge reads the message while the context is retrieved and the
        // answer opened; dropping the handle (a turn that needs no model, a
        // failed one) cancels it.
        let judging = self.judge.clone().map(|judge| {
            let message = redacted.clone();
            AbortOnDropHandle::new(tokio::spawn(async move { judge.rule(&message).await }))
        });
        let asked_for_person = handoff::asks_for_human(&redacted);
        // The search needs only the (allowed) message: it runs while the
        // conversation is resolved and its history read. When resolving fails
        // (403, 404, storage) the search is dropped, i.e. cancelled.
        let search = async {
            let searching = Instant::now();
            let (passages, failed) = self.retrieval.search_reporting(&redacted).await;
            if let Some(backend) = self.retrieval.metered_backend() {
                self.metrics
                    .retrieval(backend, searching.elapsed(), passages.len(), failed);
            }
            Ok((passages, failed))
        };
        let conversation_and_history = async {
            let (conversation, created) = self
                .resolve_for_turn(request.caller, request.conversation_id, &redacted)
                .await?;
            // A conversation created just now holds only the system prompt,
            // which `prompt::assemble` uses by default: no read needed.
            let history = if created {
                Vec::new()
            } else {
                messages::list(&self.db, conversation.id).await?
            };
            Ok::<_, AppError>((conversation, created, history))
        };
        let ((conversation, created, history), (passages, search_failed)) =
            tokio::try_join!(conversation_and_history, search)?;
        let conversation_id = conversation.id;
        let status = Status::of(&conversation);
        if status == Status::Closed {
            // The user writes again after a person closed the conversation.
            self.handoff.reopen(conversation_id).await?;
        }
        let grounding = Grounding::of(&passages);
        let trigger = if status.with_a_person() {
            None
        } else if asked_for_person {
            Some(Trigger::UserRequest)
        } else if !grounding.grounded
            && !search_failed
            && self.handoff.ungrounded_limit_reached(&history)
            && self.retrieval.has_knowledge().await
        {
            Some(Trigger::Ungrounded)
        } else {
            None
        };
        let entry = entry.in_conversation(conversation_id);
        // The turn's id goes with its question, so a later send with the same
        // client message id finds it.
        let live = self.live.open(conversation_id, conversation.user_id);
        // No model call when a person has the conversation or gets it now:
        // the message is stored as typed, and the handoff reply or the
        // acknowledgement is the answer, streamed like one.
        let no_model = status.with_a_person() || trigger.is_some();
        let turn = if no_model {
            String::new()
        } else {
            prompt::user_turn(&redacted, &prompt::context_block(&passages))
        };
        let user_message = NewMessage {
            conversation_id,
            role: Role::User,
            content: if no_model { &redacted } else { &turn },
            user_message: Some(&redacted),
            sources: None,
            grounded: None,
            stopped: false,
            turn_id: Some(&live.id),
            client_message_id,
            client_key: created.then_some(sender.as_str()),
            agent: None,
        };
        if no_model {
            let handed_over = async {
                messages::insert(&self.db, user_message).await?;
                if let Some(trigger) = trigger {
                    let reason = match trigger {
                        Trigger::UserRequest => Some(redacted.as_str()),
                        Trigger::Ungrounded | Trigger::Api => None,
                    };
                    self.handoff.request(&conversation, trigger, reason).await?;
                }
                Ok::<_, AppError>(())
            };
            if let Err(err) = handed_over.await {
                live.push(LiveEvent::Failed(Failure::Storage));
                return Err(err);
            }
            let (reply, entry, grounded) = match trigger {
                // An ungrounded turn stays one in the analytics and metrics.
                Some(Trigger::Ungrounded) => (
                    self.handoff.reply(),
                    entry.retrieved(false, &redacted),
                    false,
                ),
                Some(_) => (self.handoff.reply(), entry, true),
                None => (self.handoff.ack_reply(), entry, true),
            };
            let tally = self.tally(transport, started, grounded, entry);
            let tokens = fixed_reply(reply);
            return Ok(TurnOutcome::Streaming(self.start_driver(
                live,
                tokens,
                slot,
                Grounding::fixed(),
                tally,
                None,
            )));
        }
        let entry = entry.retrieved(grounding.grounded, &redacted);
        // Nothing in the knowledge base and a fixed reply configured: that
        // reply is the answer, streamed like one, and the model is not called.
        if !grounding.grounded
            && let Some(reply) = &self.ungrounded_reply
        {
            if let Err(err) = messages::insert(&self.db, user_message).await {
                live.push(LiveEvent::Failed(Failure::Storage));
                return Err(err.into());
            }
            let tally = self.tally(transport, started, false, entry);
            let tokens = fixed_reply(reply);
            return Ok(TurnOutcome::Streaming(
                self.start_driver(live, tokens, slot, grounding, tally, None),
            ));
        }
        let prompt_messages =
            prompt::assemble(&history, turn.clone(), self.settings.history_max_messages);
        // The instructions this answer was given, to catch it copying them.
        let echo = EchoGuard::new(
            prompt_messages
                .iter()
                .find(|message| message.role == "system")
                .map_or(prompt::SYSTEM_PROMPT, |message| message.content.as_str()),
        );
        // Store the question while the model request goes out (neither needs
        // the other); both are awaited, so a failed model call still leaves the
        // question stored, and a failed store drops (cancels) the model stream.
        // With the judge on, its verdict comes first: an attack is stored as
        // a refusal instead (as the rules' are) and the answer never starts.
        let judged_and_stored = async {
            let ruling = match judging {
                Some(judging) => match judging.await {
                    Ok(ruling) => ruling,
                    Err(err) => self.judge.as_ref().map_or(Ruling::Allow, |judge| {
                        judge.failed(&format!("the judge's task failed: {err}"))
                    }),
                },
                None => Ruling::Allow,
            };
            if ruling == Ruling::Allow {
                return messages::insert(&self.db, user_message).await.map(|_| None);
            }
            let refusal = NewMessage {
                role: Role::Guardrails,
                content: ruling.message(),
                turn_id: None,
                ..user_message
            };
            messages::insert(&self.db, refusal)
                .await
                .map(|_| Some(ruling))
        };
        let (stored, tokens) = tokio::join!(judged_and_stored, model.stream_chat(&prompt_messages));
        if let Ok(Some(ruling)) = stored {
            // Refused by the judge: the answer is dropped unread (cancelled).
            drop(tokens);
            live.push(LiveEvent::Done);
            tracing::info!(conversation_id, reason = ?ruling.code(), "the guardrail judge refused a message");
            self.metrics.turn_ended(transport, "refused");
            self.turn_log.record(entry, "refused", ruling.code(), None);
            return Ok(TurnOutcome::Refused(self.view(conversation_id).await?.view));
        }
        if let Err(err) = stored {
            live.push(LiveEvent::Failed(Failure::Storage));
            // Another server stored the same client message id first (the
            // in-process claim does not reach it): this send is its repeat.
            if let (sqlx::Error::Database(db), Some(id)) = (&err, client_message_id)
                && db.is_unique_violation()
            {
                let key = SendKey::Conversation(conversation_id);
                if let Some(repeat) = self.repeat(&request, message, key, id).await? {
                    return Ok(repeat);
                }
            }
            return Err(err.into());
        }
        let tokens = match tokens {
            Ok(tokens) => tokens,
            Err(err) => {
                live.push(LiveEvent::Failed(Failure::Upstream));
                self.metrics.upstream_error(error_kind(&err));
                self.metrics.turn_ended(transport, turn_outcome(&err));
                self.turn_log.record(entry, turn_outcome(&err), None, None);
                return Err(upstream_error(conversation_id, err));
            }
        };
        let tally = self.tally(transport, started, grounding.grounded, entry);
        Ok(TurnOutcome::Streaming(self.start_driver(
            live,
            tokens,
            slot,
            grounding,
            tally,
            Some(echo),
        )))
    }

    /// The metrics and turn-log entry of a turn whose answer starts streaming.
    fn tally(
        &self,
        transport: &'static str,
        started: Instant,
        grounded: bool,
        entry: TurnEntry,
    ) -> TurnTally {
        TurnTally::new(
            self.metrics.stream_started(transport, started, grounded),
            entry,
            self.turn_log.clone(),
        )
    }

    /// A one-shot turn: the whole answer, then the history (contract: POST /api/chat/create).
    pub async fn complete_turn(&self, request: TurnRequest) -> Result<ConversationView, AppError> {
        match self.start_turn(request).await? {
            TurnOutcome::Refused(view) => Ok(view),
            TurnOutcome::Streaming(mut stream) => {
                let conversation_id = stream.conversation_id;
                while let Some((_, event)) = stream.next().await {
                    match event {
                        ReplyEvent::Delta(_) => {}
                        ReplyEvent::Done(view) => return Ok(view),
                        ReplyEvent::Failed(Failure::Upstream) => {
                            return Err(AppError::UpstreamModel(format!(
                                "conversation {conversation_id}: answer interrupted"
                            )));
                        }
                        ReplyEvent::Failed(failure) => {
                            return Err(AppError::Unavailable {
                                message: failure.message(),
                                retry_after: None,
                            });
                        }
                    }
                }
                Err(AppError::Internal(
                    "reply stream ended without a result".into(),
                ))
            }
        }
    }

    /// The client view of a conversation the caller may read, rendered as
    /// JSON. The access check reads the conversation's message count along
    /// with it; when the history cache holds a rendering of exactly that many
    /// messages, it is the current history: the rows are not read again and
    /// not serialized again.
    pub async fn messages(&self, caller: Option<i64>, id: i64) -> Result<HistoryJson, AppError> {
        let found = conversations::find_versioned(&self.db, id)
            .await?
            .ok_or(AppError::NotFound("Conversation not found"))?;
        check_usable(&found.record, caller, "Conversation already deleted")?;
        if let Some(cached) = self.histories.get(&id)
            && cached.message_count == found.message_count
            && cached.feedback_version == found.feedback_version
            && cached.json.status == found.record.status
        {
            return Ok(cached.json);
        }
        let history = self.view_with_status(id, found.record.status).await?;
        let messages = serde_json::value::to_raw_value(&history.view.messages)
            .map_err(|err| AppError::Internal(format!("rendering a history: {err}")))?;
        let json = HistoryJson {
            messages: Arc::from(messages),
            conversation_id: id,
            status: history.view.status,
        };
        // Only what is read here is kept: the histories that end streamed
        // turns go out in their `done` event and are rarely asked for again.
        let cached = CachedHistory {
            message_count: history.message_count,
            feedback_version: found.feedback_version,
            json: json.clone(),
        };
        self.histories.insert(id, cached);
        Ok(json)
    }

    /// The caller's non-deleted conversations, newest first.
    pub async fn list(
        &self,
        user_id: i64,
        limit: Option<i64>,
        offset: i64,
    ) -> Result<Vec<ConversationSummary>, AppError> {
        let records = conversations::list_for_user(&self.db, user_id, limit, offset).await?;
        Ok(records.into_iter().map(ConversationSummary::from).collect())
    }

    /// Soft-deletes a conversation the caller owns (or an anonymous one).
    pub async fn delete(&self, caller: Option<i64>, id: i64) -> Result<(), AppError> {
        self.usable(caller, id, "Conversation already deleted")
            .await?;
        if conversations::soft_delete(&self.db, id).await? {
            Ok(())
        } else {
            // Lost a race with another delete.
            Err(AppError::BadRequest("Conversation already deleted"))
        }
    }

    /// A short summary with key points and next steps.
    pub async fn summarize(&self, caller: Option<i64>, id: i64) -> Result<String, AppError> {
        self.usable(caller, id, "Conversation already deleted")
            .await?;
        let view = self.view(id).await?.view;
        if view.messages.is_empty() {
            return Ok(prompt::EMPTY_SUMMARY.to_string());
        }
        let model = self.model.as_ref().ok_or(AppError::ModelNotConfigured)?;
        model
            .complete(&prompt::summary_request(&view.messages))
            .await
            .map_err(|err| upstream_error(id, err))
    }

    /// Loads a conversation the caller may use: 404, 403, then 400 when deleted.
    /// Sets (or with `None`, removes) the feedback on an assistant answer,
    /// by whoever may read its conversation; the answer's item as clients
    /// now see it.
    pub async fn feedback(
        &self,
        caller: Option<i64>,
        message_id: i64,
        feedback: Option<Feedback>,
    ) -> Result<Option<Feedback>, AppError> {
        let (conversation_id, role, answer) = messages::locate(&self.db, message_id)
            .await?
            .ok_or(AppError::NotFound("Message not found"))?;
        let conversation = conversations::find(&self.db, conversation_id)
            .await?
            .ok_or(AppError::NotFound("Message not found"))?;
        check_usable(&conversation, caller, "Conversation already deleted")?;
        if !matches!(role, Role::Assistant | Role::Guardrails) {
            return Err(AppError::invalid(
                &["path", "message_id"],
                "feedback is for the assistant's answers",
            ));
        }
        let stored = feedback
            .clone()
            .map(|feedback| (feedback.rating, feedback.reason));
        // A rating given (not one removed) is a `feedback.created` event.
        let event = match &feedback {
            Some(given) if self.handoff.webhooks().enabled() => {
                let event = Event::new(EventType::FeedbackCreated);
                let user = match caller {
                    Some(id) => users::find_by_id(&self.db, id).await?,
                    None => None,
                };
                let data = serde_json::json!({
                    "message": {"id": message_id, "content": answer},
                    "conversation": {"id": conversation_id, "short_name": conversation.short_name},
                    "rating": given.rating,
                    "reason": given.reason,
                    "user": user.map(|u| serde_json::json!({"id": u.id, "email": u.email, "name": u.name})),
                });
                let body = event.render(&data);
                Some((event, body))
            }
            _ => None,
        };
        let row = event
            .as_ref()
            .map(|(event, body)| webhooks::outbox_row(event, body, event.created_at));
        messages::set_feedback(
            &self.db,
            message_id,
            conversation_id,
            stored,
            Utc::now(),
            row,
        )
        .await?;
        if event.is_some() {
            self.handoff.webhooks().wake();
        }
        Ok(feedback)
    }

    async fn usable(
        &self,
        caller: Option<i64>,
        id: i64,
        deleted_message: &'static str,
    ) -> Result<ConversationRecord, AppError> {
        let conversation = conversations::find(&self.db, id)
            .await?
            .ok_or(AppError::NotFound("Conversation not found"))?;
        check_usable(&conversation, caller, deleted_message)?;
        Ok(conversation)
    }

    /// `None`, `0` or an unknown id start a new conversation owned by the
    /// caller and named after `message` (the turn's, redacted), as is a found
    /// conversation that has no name yet; the flag says whether it was created.
    async fn resolve_for_turn(
        &self,
        caller: Option<i64>,
        requested: Option<i64>,
        message: &str,
    ) -> Result<(ConversationRecord, bool), AppError> {
        if let Some(id) = requested.filter(|id| *id > 0)
            && let Some(conversation) = conversations::find(&self.db, id).await?
        {
            authorize(&conversation, caller)?;
            if conversation.is_deleted {
                return Err(AppError::BadRequest("Conversation is deleted"));
            }
            if conversation.short_name.is_none() {
                let short_name = prompt::short_name(message);
                conversations::name_if_unnamed(&self.db, conversation.id, &short_name).await?;
            }
            return Ok((conversation, false));
        }
        let short_name = prompt::short_name(message);
        let created = conversations::create(&self.db, caller, &short_name, prompt::SYSTEM_PROMPT)
            .await
            .map_err(|err| match err {
                // The caller's account went away after its token was checked.
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    AppError::Unauthorized("User not found")
                }
                other => other.into(),
            })?;
        Ok((created, true))
    }

    /// Reads a conversation's history and status.
    async fn view(&self, conversation_id: i64) -> Result<ReadHistory, AppError> {
        let (records, conversation) = tokio::try_join!(
            messages::list(&self.db, conversation_id),
            conversations::find(&self.db, conversation_id)
        )?;
        let status = conversation.map_or_else(|| Status::Bot.as_str().to_owned(), |c| c.status);
        Ok(read_history(conversation_id, &records, status))
    }

    /// A history read for a conversation whose status is known.
    async fn view_with_status(
        &self,
        conversation_id: i64,
        status: String,
    ) -> Result<ReadHistory, AppError> {
        let records = messages::list(&self.db, conversation_id).await?;
        Ok(read_history(conversation_id, &records, status))
    }

    /// Any conversation's history, for agents (no ownership check; deleted
    /// ones are 400 as for their owners).
    pub async fn agent_view(&self, id: i64) -> Result<ConversationView, AppError> {
        let conversation = self.handoff.find(id).await?;
        Ok(self.view_with_status(id, conversation.status).await?.view)
    }

    /// `POST /api/chat/handoff/{id}`: the owner hands the conversation to a
    /// person; the handoff reply is stored as the bot's answer. 409 when a
    /// person already has it.
    pub async fn request_handoff(
        &self,
        caller: Option<i64>,
        id: i64,
        reason: Option<&str>,
    ) -> Result<ConversationView, AppError> {
        let conversation = self
            .usable(caller, id, "Conversation already deleted")
            .await?;
        if !self
            .handoff
            .request(&conversation, Trigger::Api, reason)
            .await?
        {
            return Err(AppError::Conflict(
                "Conversation is already with a person or waiting for one",
            ));
        }
        messages::insert(&self.db, NewMessage::answer(id, self.handoff.reply())).await?;
        Ok(self.view(id).await?.view)
    }
}

/// A history as read from its rows and status.
fn read_history(conversation_id: i64, records: &[MessageRecord], status: String) -> ReadHistory {
    ReadHistory {
        message_count: i64::try_from(records.len()).unwrap_or(i64::MAX),
        view: ConversationView {
            messages: client_view(records),
            conversation_id,
            status,
        },
    }
}

/// 403 for someone else's conversation, then 400 (`deleted_message`) when deleted.
fn check_usable(
    conversation: &ConversationRecord,
    caller: Option<i64>,
    deleted_message: &'static str,
) -> Result<(), AppError> {
    authorize(conversation, caller)?;
    if conversation.is_deleted {
        return Err(AppError::BadRequest(deleted_message));
    }
    Ok(())
}

/// A history as read, with the number of stored rows it was built from
/// (system rows included): the version [`ChatService::messages`] checks.
struct ReadHistory {
    message_count: i64,
    view: ConversationView,
}

/// A [`ConversationView`] already rendered: serializes to the same JSON.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryJson {
    messages: Arc<serde_json::value::RawValue>,
    conversation_id: i64,
    status: String,
}

impl HistoryJson {
    /// Bytes of the rendered messages.
    pub fn rendered_len(&self) -> usize {
        self.messages.get().len()
    }
}

/// A cached rendering and the message count it was read at.
#[derive(Clone)]
struct CachedHistory {
    message_count: i64,
    feedback_version: i64,
    json: HistoryJson,
}

/// Bytes of rendered histories the history cache may hold.
const HISTORY_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Weighs a cached history by its rendered size.
#[derive(Clone)]
struct HistoryWeight;

impl quick_cache::Weighter<i64, CachedHistory> for HistoryWeight {
    fn weight(&self, _: &i64, history: &CachedHistory) -> u64 {
        let bytes = history.json.messages.get().len() + 64;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

type HistoryCache = quick_cache::sync::Cache<i64, CachedHistory, HistoryWeight>;

/// The ownership rule: owned conversations only for their owner; anonymous ones for anyone.
fn authorize(conversation: &ConversationRecord, caller: Option<i64>) -> Result<(), AppError> {
    match conversation.user_id {
        Some(owner) if caller != Some(owner) => Err(AppError::Forbidden),
        _ => Ok(()),
    }
}

/// The turn-log reason of an answer cut for copying its instructions.
const SYSTEM_PROMPT_COPY: &str = "system_prompt_copy";

/// A fixed text as the model's tokens: streamed in one delta.
fn fixed_reply(text: &str) -> TokenStream {
    Box::pin(futures::stream::iter([Ok(text.to_string())]))
}

/// A model error's class, for the metrics.
fn error_kind(err: &ModelError) -> &'static str {
    match err {
        ModelError::Credentials { .. } => "credentials",
        ModelError::RateLimited => "rate_limited",
        ModelError::Status { .. } => "status",
        ModelError::Transport(_) => "transport",
        ModelError::IdleTimeout(_) => "idle_timeout",
        ModelError::TotalTimeout(_) => "total_timeout",
    }
}

/// The turn outcome a model error means.
fn turn_outcome(err: &ModelError) -> &'static str {
    match err {
        ModelError::IdleTimeout(_) | ModelError::TotalTimeout(_) => "timeout",
        _ => "upstream_error",
    }
}

fn upstream_error(conversation_id: i64, err: ModelError) -> AppError {
    match err {
        ModelError::Credentials { .. } => {
            tracing::error!(conversation_id, error = %err, "model call failed: credentials rejected");
            AppError::UpstreamModel(err.to_string())
        }
        ModelError::RateLimited => {
            tracing::warn!(conversation_id, error = %err, "model call rate-limited");
            AppError::Unavailable {
                message: "The assistant is busy right now. Please try again shortly.",
                retry_after: Some(std::time::Duration::from_secs(10)),
            }
        }
        other => {
            tracing::warn!(conversation_id, error = %other, "model call failed");
            AppError::UpstreamModel(other.to_string())
        }
    }
}

/// The answer text of a running stream; stored exactly once, also when the
/// stream is dropped early (client gone, shutdown).
struct PartialAnswer {
    db: Database,
    tasks: TaskTracker,
    conversation_id: i64,
    text: String,
    grounding: Grounding,
    /// Cut short by a stop request.
    stopped: bool,
    settled: bool,
}

/// What an answer was given: its sources (as stored, a JSON array) and
/// whether any of them cleared the minimum score.
/// A fixed reply (the handoff reply, the acknowledgement while a person
/// answers) is given nothing: it is stored with neither, as refusals are.
#[derive(Debug, Clone)]
struct Grounding {
    sources: String,
    grounded: bool,
    fixed: bool,
}

impl Grounding {
    fn of(passages: &[Passage]) -> Self {
        let sources: Vec<Source> = passages.iter().map(Source::from).collect();
        Self {
            sources: serde_json::to_string(&sources).unwrap_or_else(|_| "[]".to_string()),
            grounded: !passages.is_empty(),
            fixed: false,
        }
    }

    /// What a fixed reply is stored with.
    fn fixed() -> Self {
        Self {
            sources: String::new(),
            grounded: false,
            fixed: true,
        }
    }

    fn stored_sources(&self) -> Option<&str> {
        (!self.fixed).then_some(self.sources.as_str())
    }

    fn stored_grounded(&self) -> Option<bool> {
        (!self.fixed).then_some(self.grounded)
    }
}

impl PartialAnswer {
    /// Stores the text (when not blank) in a tracked task, so cancelling the
    /// stream while this runs cannot lose or duplicate the write.
    async fn store(&mut self) -> Result<(), AppError> {
        self.settled = true;
        if self.text.trim().is_empty() {
            return Ok(());
        }
        let write = store_answer(
            self.db.clone(),
            self.conversation_id,
            std::mem::take(&mut self.text),
            self.grounding.clone(),
            self.stopped,
        );
        self.tasks
            .spawn(write)
            .await
            .map_err(|err| AppError::Internal(format!("store task failed: {err}")))?
    }
}

impl Drop for PartialAnswer {
    fn drop(&mut self) {
        if self.settled || self.text.trim().is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                conversation_id = self.conversation_id,
                "partial answer lost: no runtime"
            );
            return;
        };
        let write = store_answer(
            self.db.clone(),
            self.conversation_id,
            std::mem::take(&mut self.text),
            self.grounding.clone(),
            self.stopped,
        );
        let conversation_id = self.conversation_id;
        self.tasks.spawn_on(
            async move {
                if let Err(err) = write.await {
                    tracing::error!(conversation_id, error = %err, "storing a partial answer failed");
                }
            },
            &runtime,
        );
    }
}

async fn store_answer(
    db: Database,
    conversation_id: i64,
    text: String,
    grounding: Grounding,
    stopped: bool,
) -> Result<(), AppError> {
    let message = NewMessage {
        sources: grounding.stored_sources(),
        grounded: grounding.stored_grounded(),
        stopped,
        ..NewMessage::answer(conversation_id, &text)
    };
    messages::insert(&db, message).await?;
    Ok(())
}
