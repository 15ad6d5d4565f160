//! Streaming turns (contract section 14): the driver task that reads the
//! model into a turn's live log, following it (here or, through Redis, on
//! another server), resuming, stopping, and repeated sends.

use super::*;

/// How a turn's driver stopped reading the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The model finished (or failed: see the error).
    Finished,
    /// `POST /api/chat/stop/{turn_id}` or the WebSocket's stop.
    Stopped,
    /// Nobody was attached for the whole grace period.
    Abandoned,
    /// The server is shutting down.
    Shutdown,
    /// The answer started reproducing the system prompt.
    Copied,
}

impl ChatService {
    /// Attaches the caller to the turn, then runs the turn in a task of its
    /// own (tracked: shutdown waits for it to store its answer).
    pub(super) fn start_driver(
        &self,
        live: Arc<LiveTurn>,
        tokens: TokenStream,
        slot: StreamSlot,
        grounding: Grounding,
        tally: TurnTally,
        echo: Option<EchoGuard>,
    ) -> ReplyStream {
        // Attached before the driver runs: it never sees an empty turn at first.
        let follower = self.follow_live(live.clone(), 0);
        self.tasks.spawn(
            self.clone()
                .drive(live, tokens, slot, grounding, tally, echo),
        );
        follower
    }

    /// Reads the model into the turn's log until it ends, is stopped, the
    /// server shuts down, or nobody has been attached for the grace period;
    /// then stores the answer (what the model produced so far) and ends the
    /// log with `done` (or `error`).
    async fn drive(
        self,
        live: Arc<LiveTurn>,
        mut tokens: TokenStream,
        slot: StreamSlot,
        grounding: Grounding,
        mut tally: TurnTally,
        mut echo: Option<EchoGuard>,
    ) {
        let _slot = slot;
        let conversation_id = live.conversation_id;
        let mut answer = PartialAnswer {
            db: self.db.clone(),
            tasks: self.tasks.clone(),
            conversation_id,
            text: String::new(),
            grounding,
            stopped: false,
            settled: false,
        };
        let mut attached = live.attached();
        let stop = live.stop_requested();
        let grace = self.settings.resume_grace;
        let alone_since = |count: usize| (count == 0).then(|| tokio::time::Instant::now() + grace);
        let mut give_up_at = alone_since(*attached.borrow_and_update());
        let mut failure = None;
        let ending = loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ending::Stopped,
                () = self.shutdown.cancelled() => break Ending::Shutdown,
                changed = attached.changed() => {
                    if changed.is_ok() {
                        give_up_at = alone_since(*attached.borrow_and_update());
                    }
                }
                () = sleep_until_some(give_up_at) => {
                    // Followers on other servers (through Redis) count too.
                    match &self.redis {
                        Some(redis) if shared_turns::watched(redis, &live.id).await => {
                            give_up_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        }
                        _ => break Ending::Abandoned,
                    }
                }
                item = tokens.next() => match item {
                    Some(Ok(delta)) => {
                        // Checked before it is sent: the delta that completes
                        // a copied run of the instructions never goes out.
                        if echo.as_mut().is_some_and(|echo| echo.copied(&delta)) {
                            break Ending::Copied;
                        }
                        // Recorded before it is sent: the stored partial holds
                        // at least what any follower saw.
                        answer.text.push_str(&delta);
                        tally.token();
                        live.push(LiveEvent::Delta(delta));
                    }
                    Some(Err(err)) => {
                        failure = Some(err);
                        break Ending::Finished;
                    }
                    None => break Ending::Finished,
                },
            }
        };
        // Release the upstream connection before the database work.
        drop(tokens);
        answer.stopped = ending == Ending::Stopped;
        if ending == Ending::Copied {
            // The refusal is the answer; what was streamed of the copy is
            // never stored, and `done` carries the refusal for clients to show.
            tracing::warn!(
                conversation_id,
                "an answer reproducing the system prompt was cut"
            );
            answer.text = RefusalReason::PromptInjection.message().to_string();
            answer.grounding = Grounding::fixed();
        }
        let stored = answer.store().await;
        if ending == Ending::Shutdown {
            tally.ended("client_gone");
            live.push(LiveEvent::Failed(Failure::Shutdown));
            return;
        }
        if let Some(err) = failure {
            tracing::warn!(conversation_id, error = %err, "model stream failed mid-answer");
            self.metrics.upstream_error(error_kind(&err));
            tally.ended(turn_outcome(&err));
            live.push(LiveEvent::Failed(Failure::Upstream));
            return;
        }
        if let Err(err) = stored {
            tracing::error!(conversation_id, error = %err, "storing the answer failed");
            tally.ended("storage_error");
            live.push(LiveEvent::Failed(Failure::Storage));
            return;
        }
        match ending {
            Ending::Copied => tally.refused(SYSTEM_PROMPT_COPY),
            Ending::Stopped => tally.ended("stopped"),
            Ending::Abandoned => tally.ended("client_gone"),
            Ending::Finished | Ending::Shutdown => tally.ended("completed"),
        }
        // Each follower reads the history with the answer when it gets here.
        live.push(LiveEvent::Done);
    }

    /// The first turn of a repeated send (same `client_message_id` under the
    /// same key), when there was one: its stream (live, or replayed from the
    /// stored messages once its events have expired), or its refusal. 409
    /// when the id came with a different message.
    pub(super) async fn repeat(
        &self,
        request: &TurnRequest,
        message: &str,
        key: SendKey<'_>,
        client_message_id: &str,
    ) -> Result<Option<TurnOutcome>, AppError> {
        let Some(earlier) = messages::earlier_send(&self.db, key, client_message_id).await? else {
            return Ok(None);
        };
        let conversation = conversations::find(&self.db, earlier.conversation_id)
            .await?
            .ok_or(AppError::NotFound("Conversation not found"))?;
        authorize(&conversation, request.caller)?;
        let redacted = match guardrails::check(message) {
            Verdict::Allow { redacted } | Verdict::Refuse { redacted, .. } => redacted,
        };
        if earlier.user_message.as_deref() != Some(redacted.as_str()) {
            return Err(AppError::Conflict(
                "This client_message_id was already used for a different message",
            ));
        }
        let conversation_id = conversation.id;
        if earlier.role == Role::Guardrails.as_str() {
            return Ok(Some(TurnOutcome::Refused(
                self.view(conversation_id).await?.view,
            )));
        }
        if let Some(turn_id) = earlier.turn_id.as_deref() {
            if let Some(turn) = self.live.get(turn_id) {
                return Ok(Some(TurnOutcome::Streaming(self.follow_live(turn, 0))));
            }
            if let Some((redis, shared)) = self.shared_turn(request.caller, turn_id).await? {
                return Ok(Some(TurnOutcome::Streaming(
                    self.follow_shared(redis, turn_id, &shared, 0),
                )));
            }
        }
        // The turn's events have expired: replay it from what was stored.
        let events = match messages::answer_after(&self.db, conversation_id, earlier.id).await? {
            Some(answer) => vec![LiveEvent::Delta(answer), LiveEvent::Done],
            None => vec![LiveEvent::Failed(Failure::Upstream)],
        };
        let turn = self.live.replay(
            earlier.turn_id.as_deref(),
            conversation_id,
            conversation.user_id,
            events,
        );
        Ok(Some(TurnOutcome::Streaming(self.follow_live(turn, 0))))
    }

    /// A turn of this server, if the caller may follow or stop it (403
    /// when the conversation is someone else's).
    fn local_turn(
        &self,
        caller: Option<i64>,
        turn_id: &str,
    ) -> Result<Option<Arc<LiveTurn>>, AppError> {
        match self.live.get(turn_id) {
            Some(turn) => {
                authorize_owner(turn.owner, caller)?;
                Ok(Some(turn))
            }
            None => Ok(None),
        }
    }

    /// A turn another server runs or ran, if Redis knows it and the caller
    /// may follow or stop it.
    async fn shared_turn(
        &self,
        caller: Option<i64>,
        turn_id: &str,
    ) -> Result<Option<(Redis, SharedTurn)>, AppError> {
        let Some(redis) = &self.redis else {
            return Ok(None);
        };
        match shared_turns::find(redis, turn_id).await {
            Some(shared) => {
                authorize_owner(shared.owner, caller)?;
                Ok(Some((redis.clone(), shared)))
            }
            None => Ok(None),
        }
    }

    /// Follows another server's turn through Redis, from after event `after`.
    fn follow_shared(
        &self,
        redis: Redis,
        turn_id: &str,
        shared: &SharedTurn,
        after: u64,
    ) -> ReplyStream {
        let turn = self
            .live
            .detached(turn_id, shared.conversation_id, shared.owner);
        self.reply_stream(turn, shared_turns::follow(redis, turn_id, after))
    }

    /// Follows a turn of this server from after event `after`.
    fn follow_live(&self, turn: Arc<LiveTurn>, after: u64) -> ReplyStream {
        let events = turn.follow(after);
        self.reply_stream(turn, events)
    }

    /// A turn's events for a client: the final `done` with the history read
    /// now (the log keeps no history).
    fn reply_stream(
        &self,
        turn: Arc<LiveTurn>,
        events: impl Stream<Item = (u64, LiveEvent)> + Send + 'static,
    ) -> ReplyStream {
        let chat = self.clone();
        let conversation_id = turn.conversation_id;
        let events = events.then(move |(seq, event)| {
            // Only the final event needs the service (a clone is a dozen
            // reference counts: not per token).
            let chat = matches!(event, LiveEvent::Done).then(|| chat.clone());
            async move {
                let event = match (event, chat) {
                    (LiveEvent::Delta(text), _) => ReplyEvent::Delta(text),
                    (LiveEvent::Failed(failure), _) => ReplyEvent::Failed(failure),
                    (LiveEvent::Done, None) => ReplyEvent::Failed(Failure::Storage),
                    (LiveEvent::Done, Some(chat)) => match chat.view(conversation_id).await {
                        Ok(history) => ReplyEvent::Done(history.view),
                        Err(err) => {
                            tracing::error!(conversation_id, error = %err, "loading the history failed");
                            ReplyEvent::Failed(Failure::Storage)
                        }
                    },
                };
                (seq, event)
            }
        });
        ReplyStream {
            conversation_id,
            turn,
            events: Box::pin(events),
        }
    }

    /// Follows a turn (of this server, or through Redis of another) from
    /// after event `after`; `None` when the turn has ended and the caller
    /// has seen its last event; 404 when unknown or expired.
    pub async fn resume(
        &self,
        caller: Option<i64>,
        turn_id: &str,
        after: u64,
    ) -> Result<Option<ReplyStream>, AppError> {
        if let Some(turn) = self.local_turn(caller, turn_id)? {
            if turn.ended() && after >= turn.last_seq() {
                return Ok(None);
            }
            return Ok(Some(self.follow_live(turn, after)));
        }
        let (redis, shared) = self
            .shared_turn(caller, turn_id)
            .await?
            .ok_or(AppError::NotFound("Turn not found"))?;
        if shared.ended && after >= shared_turns::last_seq(&redis, turn_id).await {
            return Ok(None);
        }
        Ok(Some(self.follow_shared(redis, turn_id, &shared, after)))
    }

    /// Asks a turn (of this server, or through Redis of another) to stop;
    /// false when it had already ended.
    pub async fn stop(&self, caller: Option<i64>, turn_id: &str) -> Result<bool, AppError> {
        if let Some(turn) = self.local_turn(caller, turn_id)? {
            return Ok(turn.request_stop());
        }
        let (redis, shared) = self
            .shared_turn(caller, turn_id)
            .await?
            .ok_or(AppError::NotFound("Turn not found"))?;
        if shared.ended {
            return Ok(false);
        }
        Ok(shared_turns::request_stop(&redis, turn_id).await)
    }
}

/// The conversation's access rule, for a turn: its owner only, anyone for
/// an anonymous one.
fn authorize_owner(owner: Option<i64>, caller: Option<i64>) -> Result<(), AppError> {
    match owner {
        Some(owner) if caller != Some(owner) => Err(AppError::Forbidden),
        _ => Ok(()),
    }
}

/// The claim key of a send: its key and its client message id.
pub(super) fn send_claim_key(key: SendKey<'_>, client_message_id: &str) -> String {
    match key {
        SendKey::Conversation(id) => format!("conversation:{id}:{client_message_id}"),
        SendKey::Sender(sender) => format!("{sender}:{client_message_id}"),
    }
}

/// Sleeps until `at`; forever when there is no such moment.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
