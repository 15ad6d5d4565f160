//! Turns shared through Redis (contract section 15): each turn's events are
//! copied into a Redis Stream so that another server can replay and follow
//! it, and stop requests travel on a channel every server listens to.
//!
//! Keys, per turn: `eloquent:turn:<id>` (a hash: `conversation_id`,
//! `owner`, `ended`) and `eloquent:turn:<id>:events` (a stream whose entry
//! ids are `<seq>-1`, fields `k` = `d` (delta, `v` its text), `done` (`v`
//! the conversation id, whose history the reader reads itself) or `error` (`v` `upstream`/`storage`/`shutdown`)).
//! Both live an hour while the turn runs and `STREAM_REPLAY_TTL_SECS`
//! after its end; the stream is capped at [`MAX_EVENTS`] entries.
//!
//! The server running a turn serves its own followers from memory
//! (`services::live`); the copy is written by one task per turn, batched in
//! pipelines, so the turn never waits on Redis. A follower on another server
//! reads the stream every [`POLL`] (a blocking `XREAD` would hold the shared
//! connection). When Redis is down the copy is skipped: such turns can be
//! resumed only on their own server.

use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

use crate::clients::redis::{Redis, STOP_CHANNEL};
use crate::services::chat::Failure;
use crate::services::live::LiveEvent;

/// Longest stream kept per turn (an answer is far shorter).
const MAX_EVENTS: usize = 100_000;
/// How long a running turn's keys live (refreshed at its end).
const RUNNING_TTL: Duration = Duration::from_secs(3600);
/// How often a follower on another server reads new events.
pub const POLL: Duration = Duration::from_millis(50);

/// What another server knows of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTurn {
    pub conversation_id: i64,
    pub owner: Option<i64>,
    pub ended: bool,
}

/// One stream entry as `XRANGE` answers it: its id and its fields.
type StreamEntry = (String, Vec<(String, String)>);

fn meta_key(turn_id: &str) -> String {
    format!("eloquent:turn:{turn_id}")
}

fn events_key(turn_id: &str) -> String {
    format!("eloquent:turn:{turn_id}:events")
}

/// Set (for [`WATCH_TTL`]) while a follower on another server reads the
/// turn, and refreshed every second: the running server's grace period
/// does not end while it exists.
fn watch_key(turn_id: &str) -> String {
    format!("eloquent:turn:{turn_id}:watched")
}

const WATCH_TTL: Duration = Duration::from_secs(5);

/// Whether a follower on another server is reading the turn.
pub async fn watched(redis: &Redis, turn_id: &str) -> bool {
    let key = watch_key(turn_id);
    redis
        .run("turn watched", |mut connection| async move {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<i64>(&mut connection)
                .await
        })
        .await
        .is_some_and(|exists| exists > 0)
}

/// Starts copying a turn's events to Redis; returns where to send them.
pub fn mirror(
    redis: Redis,
    turn_id: &str,
    conversation_id: i64,
    owner: Option<i64>,
    replay_ttl: Duration,
) -> mpsc::UnboundedSender<(u64, LiveEvent)> {
    let (sender, mut events) = mpsc::unbounded_channel::<(u64, LiveEvent)>();
    let (meta, stream) = (meta_key(turn_id), events_key(turn_id));
    tokio::spawn(async move {
        let owner = owner.map_or_else(String::new, |owner| owner.to_string());
        let opened = {
            let (meta, stream) = (meta.clone(), stream.clone());
            redis
                .run("turn open", |mut connection| async move {
                    redis::pipe()
                        .hset_multiple(
                            &meta,
                            &[
                                ("conversation_id", conversation_id.to_string()),
                                ("owner", owner),
                                ("ended", "0".to_string()),
                            ],
                        )
                        .ignore()
                        .expire(&meta, RUNNING_TTL.as_secs() as i64)
                        .ignore()
                        .del(&stream)
                        .ignore()
                        .query_async::<()>(&mut connection)
                        .await
                })
                .await
        };
        let mut batch = Vec::new();
        let mut ended = false;
        while !ended && events.recv_many(&mut batch, 256).await > 0 {
            if opened.is_none() {
                batch.clear();
                continue; // Redis was down when the turn opened: no copy.
            }
            let mut pipe = redis::pipe();
            for (seq, event) in batch.drain(..) {
                let (kind, value) = match event {
                    LiveEvent::Delta(text) => ("d", text),
                    LiveEvent::Done => ("done", conversation_id.to_string()),
                    LiveEvent::Failed(failure) => ("error", failure_code(failure).to_string()),
                };
                ended |= kind != "d";
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAX_EVENTS)
                    .arg(format!("{seq}-1"))
                    .arg("k")
                    .arg(kind)
                    .arg("v")
                    .arg(value)
                    .ignore();
            }
            if ended {
                let ttl = replay_ttl.as_secs().max(1) as i64;
                pipe.hset(&meta, "ended", "1")
                    .ignore()
                    .expire(&meta, ttl)
                    .ignore()
                    .expire(&stream, ttl)
                    .ignore();
            } else {
                pipe.expire(&stream, RUNNING_TTL.as_secs() as i64).ignore();
            }
            redis
                .run("turn events", |mut connection| async move {
                    pipe.query_async::<()>(&mut connection).await
                })
                .await;
        }
    });
    sender
}

fn failure_code(failure: Failure) -> &'static str {
    match failure {
        Failure::Upstream => "upstream",
        Failure::Storage => "storage",
        Failure::Shutdown => "shutdown",
    }
}

fn failure_of(code: &str) -> Failure {
    match code {
        "storage" => Failure::Storage,
        "shutdown" => Failure::Shutdown,
        _ => Failure::Upstream,
    }
}

/// A turn another server runs (or ran), when Redis knows it.
pub async fn find(redis: &Redis, turn_id: &str) -> Option<SharedTurn> {
    let meta = meta_key(turn_id);
    let fields: Vec<Option<String>> = redis
        .run("turn lookup", |mut connection| async move {
            redis::cmd("HMGET")
                .arg(&meta)
                .arg("conversation_id")
                .arg("owner")
                .arg("ended")
                .query_async(&mut connection)
                .await
        })
        .await?;
    let mut fields = fields.into_iter();
    let conversation_id = fields.next()??.parse().ok()?;
    let owner = fields.next().flatten().and_then(|owner| owner.parse().ok());
    let ended = fields.next().flatten().is_some_and(|ended| ended == "1");
    Some(SharedTurn {
        conversation_id,
        owner,
        ended,
    })
}

/// The number of a shared turn's last event (0 when none yet).
pub async fn last_seq(redis: &Redis, turn_id: &str) -> u64 {
    let stream = events_key(turn_id);
    let last: Option<Vec<StreamEntry>> = redis
        .run("turn last event", |mut connection| async move {
            redis::cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut connection)
                .await
        })
        .await;
    last.and_then(|entries| entries.into_iter().next())
        .and_then(|(id, _)| id.split('-').next().and_then(|seq| seq.parse().ok()))
        .unwrap_or(0)
}

/// Asks whichever server runs the turn to stop it.
pub async fn request_stop(redis: &Redis, turn_id: &str) -> bool {
    let turn_id = turn_id.to_owned();
    redis
        .run("turn stop", |mut connection| async move {
            redis::cmd("PUBLISH")
                .arg(STOP_CHANNEL)
                .arg(&turn_id)
                .query_async::<i64>(&mut connection)
                .await
        })
        .await
        .is_some()
}

/// A shared turn's events after number `after`, to its end: read every
/// [`POLL`] while new ones come; ends when the turn ends or its keys are
/// gone (expired, or Redis lost them).
pub fn follow(
    redis: Redis,
    turn_id: &str,
    after: u64,
) -> impl Stream<Item = (u64, LiveEvent)> + Send + 'static {
    let stream = events_key(turn_id);
    let meta = meta_key(turn_id);
    let watch = watch_key(turn_id);
    async_stream::stream! {
        let mut next = after;
        let mut missing = 0;
        let mut watched_at: Option<tokio::time::Instant> = None;
        loop {
            if watched_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                let watch = watch.clone();
                redis
                    .run("turn watch", |mut connection| async move {
                        redis::cmd("SET")
                            .arg(&watch)
                            .arg(1)
                            .arg("PX")
                            .arg(WATCH_TTL.as_millis() as u64)
                            .query_async::<()>(&mut connection)
                            .await
                    })
                    .await;
                watched_at = Some(tokio::time::Instant::now());
            }
            let (key, from) = (stream.clone(), format!("({next}-1"));
            let entries: Option<Vec<StreamEntry>> = redis
                .run("turn follow", |mut connection| async move {
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(&from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut connection)
                        .await
                })
                .await;
            let entries = entries.unwrap_or_default();
            let got = !entries.is_empty();
            for (id, fields) in entries {
                let Some(seq) = id.split('-').next().and_then(|seq| seq.parse::<u64>().ok()) else {
                    continue;
                };
                next = seq;
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                        .unwrap_or_default()
                };
                let value = field("v");
                let event = match field("k").as_str() {
                    "d" => LiveEvent::Delta(value),
                    "done" => LiveEvent::Done,
                    _ => LiveEvent::Failed(failure_of(&value)),
                };
                let ends = !matches!(event, LiveEvent::Delta(_));
                yield (seq, event);
                if ends {
                    return;
                }
            }
            if !got {
                // Still there? A turn whose keys are gone will not go on.
                let meta = meta.clone();
                let exists: Option<i64> = redis
                    .run("turn follow", |mut connection| async move {
                        redis::cmd("EXISTS").arg(&meta).query_async(&mut connection).await
                    })
                    .await;
                missing = if exists == Some(0) { missing + 1 } else { 0 };
                if missing >= 3 {
                    yield (next + 1, LiveEvent::Failed(Failure::Upstream));
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
