//! Live turns (contract section 14): each streaming turn's events, numbered
//! from 1, kept in memory while the turn runs and for a while after, so
//! that any number of clients can follow it, leave, and come back.
//!
//! The turn itself runs in a task of its own (the driver, in
//! `services::chat`), not inside the response that started it: a dropped
//! connection detaches a follower, and the driver cancels the model only
//! when nobody has been attached for the grace period.
//!
//! In-process: one server's turns. (Across servers, contract section 15,
//! the log moves to Redis Streams.)

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clients::redis::Redis;
use crate::services::chat::Failure;

/// A new turn id: 256 random bits (two UUIDv4s, 244 of them random), hex.
/// Unguessable: for an anonymous conversation it is the only key to the turn.
pub fn new_turn_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// One running (or recently ended) turn.
pub struct LiveTurn {
    pub id: Arc<str>,
    pub conversation_id: i64,
    /// The conversation's owner; `None`: anonymous (the turn id is the key).
    pub owner: Option<i64>,
    log: Mutex<Log>,
    changed: Notify,
    /// How many followers are attached; the driver watches it.
    attached: watch::Sender<usize>,
    /// Cancelled by `POST /api/chat/stop/{turn_id}` (or the WebSocket's stop).
    stop: CancellationToken,
    /// The copy for other servers (`services::shared_turns`), with Redis.
    mirror: Option<mpsc::UnboundedSender<(u64, LiveEvent)>>,
}

/// One event of a turn as the log keeps it. The final `done` names no
/// history: a follower reads the conversation's history when it gets there
/// (a history is kilobytes, and ended turns are kept for the replay window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    Delta(String),
    Done,
    Failed(Failure),
}

/// A turn's events, compactly: the deltas' text end to end with where each
/// ends (4 bytes a delta instead of a `String` each), then the final event.
/// Measured: 10,000 ended turns of 100 deltas held 370 MiB as events with
/// their histories (bench section 3, RSS 12 s after the run).
#[derive(Default)]
struct Log {
    text: String,
    ends: Vec<u32>,
    last: Option<LiveEvent>,
    ended_at: Option<Instant>,
}

impl Log {
    fn len(&self) -> usize {
        self.ends.len() + usize::from(self.last.is_some())
    }

    /// Event number `index + 1`.
    fn get(&self, index: usize) -> Option<LiveEvent> {
        if let Some(&end) = self.ends.get(index) {
            let start = index
                .checked_sub(1)
                .and_then(|before| self.ends.get(before))
                .map_or(0, |&end| end as usize);
            return self
                .text
                .get(start..end as usize)
                .map(|text| LiveEvent::Delta(text.to_owned()));
        }
        (index == self.ends.len())
            .then(|| self.last.clone())
            .flatten()
    }
}

impl LiveTurn {
    fn new(
        id: Arc<str>,
        conversation_id: i64,
        owner: Option<i64>,
        mirror: Option<mpsc::UnboundedSender<(u64, LiveEvent)>>,
    ) -> Self {
        let (attached, _) = watch::channel(0);
        Self {
            id,
            conversation_id,
            owner,
            log: Mutex::new(Log::default()),
            changed: Notify::new(),
            attached,
            stop: CancellationToken::new(),
            mirror,
        }
    }

    /// How many followers are attached, as it changes.
    pub fn attached(&self) -> watch::Receiver<usize> {
        self.attached.subscribe()
    }

    /// Fires when someone asks the turn to stop.
    pub fn stop_requested(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Asks the turn to stop; false when it had already ended.
    pub fn request_stop(&self) -> bool {
        if self.ended() {
            return false;
        }
        self.stop.cancel();
        true
    }

    /// Appends an event (numbered with the next sequence number); nothing
    /// after the final one.
    pub fn push(&self, event: LiveEvent) {
        {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            if log.ended_at.is_some() {
                return;
            }
            if let Some(mirror) = &self.mirror {
                let _ = mirror.send((log.len() as u64 + 1, event.clone()));
            }
            match event {
                LiveEvent::Delta(text) => {
                    log.text.push_str(&text);
                    let end = u32::try_from(log.text.len()).unwrap_or(u32::MAX);
                    log.ends.push(end);
                }
                last => {
                    log.last = Some(last);
                    log.ended_at = Some(Instant::now());
                    log.text.shrink_to_fit();
                    log.ends.shrink_to_fit();
                }
            }
        }
        self.changed.notify_waiters();
    }

    pub fn ended(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended_at
            .is_some()
    }

    /// The number of the last event so far.
    pub fn last_seq(&self) -> u64 {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    fn expired(&self, ttl: Duration) -> bool {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended_at
            .is_some_and(|ended| ended.elapsed() >= ttl)
    }

    /// Attaches a follower: it counts as attached until dropped.
    pub fn attach(self: &Arc<Self>) -> Attached {
        self.attached.send_modify(|count| *count += 1);
        Attached(self.clone())
    }

    /// The events after number `after`, then the live ones to the end:
    /// `(seq, event)`. Attached while polled (until dropped).
    pub fn follow(
        self: &Arc<Self>,
        after: u64,
    ) -> impl Stream<Item = (u64, LiveEvent)> + Send + 'static {
        let attached = self.attach();
        async_stream::stream! {
            let turn = attached.0.clone();
            let mut next = after as usize;
            loop {
                // Registered before the log is read: a push in between wakes it.
                let changed = turn.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let (ready, ended) = {
                    let log = turn.log.lock().unwrap_or_else(PoisonError::into_inner);
                    let ready: Vec<LiveEvent> = (next..log.len()).filter_map(|index| log.get(index)).collect();
                    (ready, log.ended_at.is_some())
                };
                if ready.is_empty() {
                    if ended {
                        break;
                    }
                    changed.await;
                    continue;
                }
                for event in ready {
                    next += 1;
                    yield (next as u64, event);
                }
            }
            drop(attached);
        }
    }
}

/// A follower's hold on a turn (see [`LiveTurn::attach`]).
pub struct Attached(Arc<LiveTurn>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0
            .attached
            .send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// The live turns of this server, by id.
pub struct TurnHub {
    ttl: Duration,
    turns: Mutex<Turns>,
    /// Where turns are copied for other servers, when configured.
    redis: Option<Redis>,
}

#[derive(Default)]
struct Turns {
    by_id: HashMap<Arc<str>, Arc<LiveTurn>>,
    /// In the order they were opened: expired ones are dropped from the front.
    order: VecDeque<Arc<str>>,
}

impl TurnHub {
    /// Ended turns are forgotten `ttl` after their end.
    pub fn new(ttl: Duration, redis: Option<Redis>) -> Self {
        Self {
            ttl,
            turns: Mutex::new(Turns::default()),
            redis,
        }
    }

    /// A turn known only by id, followed from elsewhere (another server's
    /// turn read through Redis): not kept here, and stopping it does nothing.
    pub fn detached(&self, id: &str, conversation_id: i64, owner: Option<i64>) -> Arc<LiveTurn> {
        Arc::new(LiveTurn::new(Arc::from(id), conversation_id, owner, None))
    }

    /// Opens a turn.
    pub fn open(&self, conversation_id: i64, owner: Option<i64>) -> Arc<LiveTurn> {
        self.insert(None, conversation_id, owner, true)
    }

    fn insert(
        &self,
        id: Option<Arc<str>>,
        conversation_id: i64,
        owner: Option<i64>,
        shared: bool,
    ) -> Arc<LiveTurn> {
        let id: Arc<str> = id.unwrap_or_else(|| Arc::from(new_turn_id()));
        let mirror = self.redis.as_ref().filter(|_| shared).map(|redis| {
            crate::services::shared_turns::mirror(
                redis.clone(),
                &id,
                conversation_id,
                owner,
                self.ttl,
            )
        });
        let turn = Arc::new(LiveTurn::new(id.clone(), conversation_id, owner, mirror));
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget expired turns, oldest first, stopping at the first one
        // still kept (running, or ended within the TTL): cheap enough to do
        // on every open, and memory stays bounded by the turns of one TTL.
        while let Some(oldest) = turns.order.front().cloned() {
            let expired = turns
                .by_id
                .get(&oldest)
                .is_none_or(|turn| turn.expired(self.ttl));
            if !expired {
                break;
            }
            turns.order.pop_front();
            turns.by_id.remove(&oldest);
        }
        turns.order.push_back(id.clone());
        turns.by_id.insert(id, turn.clone());
        turn
    }

    /// An ended turn made of `events`, under `id` (a new one when `None`):
    /// a repeated send replayed from the stored messages.
    pub fn replay(
        &self,
        id: Option<&str>,
        conversation_id: i64,
        owner: Option<i64>,
        events: Vec<LiveEvent>,
    ) -> Arc<LiveTurn> {
        let turn = self.insert(id.map(Arc::from), conversation_id, owner, false);
        for event in events {
            turn.push(event);
        }
        turn
    }

    /// Forgets the expired turns (also done on every open; this is for when
    /// no new turn comes).
    pub fn sweep(&self) {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let ttl = self.ttl;
        turns.by_id.retain(|_, turn| !turn.expired(ttl));
        let Turns { by_id, order } = &mut *turns;
        order.retain(|id| by_id.contains_key(id));
    }

    /// A turn still kept.
    pub fn get(&self, id: &str) -> Option<Arc<LiveTurn>> {
        let turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        turns
            .by_id
            .get(id)
            .filter(|turn| !turn.expired(self.ttl))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn followers_get_every_event_once_in_order_from_where_they_ask() {
        let hub = TurnHub::new(Duration::from_secs(60), None);
        let turn = hub.open(1, None);
        let early = turn.follow(0);
        turn.push(LiveEvent::Delta("a".into()));
        turn.push(LiveEvent::Delta("b".into()));
        let late = turn.follow(1);
        let pusher = {
            let turn = turn.clone();
            tokio::spawn(async move {
                turn.push(LiveEvent::Delta("c".into()));
                turn.push(LiveEvent::Failed(Failure::Upstream));
                turn.push(LiveEvent::Delta("after the end".into()));
            })
        };
        let early: Vec<(u64, String)> = early
            .map(|(seq, event)| (seq, format!("{event:?}")))
            .collect()
            .await;
        let late: Vec<u64> = late.map(|(seq, _)| seq).collect().await;
        pusher.await.expect("pusher");
        assert_eq!(early.len(), 4, "{early:?}");
        assert_eq!(
            early.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(late, vec![2, 3, 4]);
        assert_eq!(turn.last_seq(), 4);
        assert!(!turn.request_stop(), "an ended turn cannot be stopped");
    }

    #[tokio::test]
    async fn followers_are_counted_while_attached() {
        let hub = TurnHub::new(Duration::from_secs(60), None);
        let turn = hub.open(1, Some(7));
        let attached = turn.attached();
        let first = turn.attach();
        let second = turn.follow(0);
        assert_eq!(*attached.borrow(), 2);
        drop(first);
        drop(second);
        assert_eq!(*attached.borrow(), 0);
        assert!(hub.get(&turn.id).is_some());
        assert!(hub.get("no-such-turn").is_none());
    }

    #[tokio::test]
    async fn ended_turns_are_forgotten_after_the_ttl() {
        let hub = TurnHub::new(Duration::ZERO, None);
        let turn = hub.open(1, None);
        assert!(hub.get(&turn.id).is_some(), "running turns are kept");
        turn.push(LiveEvent::Failed(Failure::Upstream));
        assert!(hub.get(&turn.id).is_none());
        let next = hub.open(2, None);
        assert!(hub.get(&next.id).is_some());
        let held = hub.turns.lock().expect("lock").by_id.len();
        assert_eq!(held, 1, "the expired turn was dropped on the next open");
    }
}
