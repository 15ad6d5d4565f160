//! Several connections to one upstream, each carrying a bounded number of
//! requests at once.
//!
//! reqwest (hyper) sends every request to a host over one HTTP/2 connection
//! and never opens a second one: once the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is reached (100–256 behind the usual
//! CDNs and load balancers), further requests wait inside h2 until a stream
//! ends (hyperium/hyper#2197, #3623). For answers streamed over seconds, the
//! 101st user would wait for someone else's answer to finish before theirs
//! even starts. Each `reqwest::Client` owns its own pool, so a lane is one
//! client (one HTTP/2 connection), and a request takes the first lane that
//! has room, opening a new one when none has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Builds one more client (its own connection pool), configured alike.
type BuildClient = dyn Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync;

/// The lanes to one upstream.
pub struct Connections {
    build: Box<BuildClient>,
    per_connection: usize,
    lanes: RwLock<Vec<Arc<Lane>>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("per_connection", &self.per_connection)
            .field("lanes", &self.lane_count())
            .finish_non_exhaustive()
    }
}

struct Lane {
    client: reqwest::Client,
    in_flight: AtomicUsize,
}

impl Lane {
    /// Takes a slot when fewer than `limit` are taken.
    fn try_take(self: &Arc<Self>, limit: usize) -> Option<LaneSlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < limit).then_some(taken + 1)
            })
            .ok()
            .map(|_| LaneSlot(Arc::clone(self)))
    }
}

/// One request's place on a lane, given back when dropped: keep it for as
/// long as the response (its body included) is being read.
pub struct LaneSlot(Arc<Lane>);

impl LaneSlot {
    pub fn client(&self) -> &reqwest::Client {
        &self.0.client
    }
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// `per_connection` requests at most on each lane; builds the first lane now
    /// so that a bad client configuration stops startup.
    pub fn new(
        per_connection: usize,
        build: impl Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync + 'static,
    ) -> Result<Self, reqwest::Error> {
        let first = build()?;
        Ok(Self {
            build: Box::new(build),
            per_connection: per_connection.max(1),
            lanes: RwLock::new(vec![Arc::new(Lane {
                client: first,
                in_flight: AtomicUsize::new(0),
            })]),
        })
    }

    /// The first client, for uses that need one outside a request.
    pub fn first_client(&self) -> reqwest::Client {
        let lanes = self
            .lanes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lanes[0].client.clone()
    }

    /// A slot on the first lane with room, on a new lane when all are full.
    /// Lanes are kept once opened (an idle one's connection closes after the
    /// client's pool idle timeout); filling the first ones first lets the
    /// others go idle when the load drops.
    pub fn acquire(&self) -> Result<LaneSlot, reqwest::Error> {
        if let Some(slot) = self.try_existing() {
            return Ok(slot);
        }
        let mut lanes = self
            .lanes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Another request may have opened a lane while this one waited for the lock.
        if let Some(slot) = lanes
            .iter()
            .find_map(|lane| lane.try_take(self.per_connection))
        {
            return Ok(slot);
        }
        // Born holding this request's slot.
        let lane = Arc::new(Lane {
            client: (self.build)()?,
            in_flight: AtomicUsize::new(1),
        });
        lanes.push(Arc::clone(&lane));
        tracing::debug!(
            lanes = lanes.len(),
            "opened another upstream connection lane"
        );
        Ok(LaneSlot(lane))
    }

    fn try_existing(&self) -> Option<LaneSlot> {
        let lanes = self
            .lanes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lanes
            .iter()
            .find_map(|lane| lane.try_take(self.per_connection))
    }

    /// How many lanes (clients) are open.
    pub fn lane_count(&self) -> usize {
        self.lanes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::*;

    /// An HTTP/2 (cleartext) server allowing `max_streams` per connection whose
    /// answers all wait until `total` requests have arrived: it answers only
    /// if they were all in flight at once. Returns its URL and a counter of
    /// accepted connections.
    async fn server_holding_answers(max_streams: u32, total: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let (arrived, _) = watch::channel(0_usize);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let arrived = arrived.clone();
                let service = service_fn(move |_request| {
                    let arrived = arrived.clone();
                    async move {
                        arrived.send_modify(|count| *count += 1);
                        let mut all = arrived.subscribe();
                        let _ = all.wait_for(|count| *count >= total).await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(max_streams)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (url, connections)
    }

    #[tokio::test]
    async fn requests_beyond_the_per_connection_limit_go_out_on_new_connections() {
        const TOTAL: usize = 5;
        let (url, accepted) = server_holding_answers(2, TOTAL).await;
        let connections = Arc::new(
            Connections::new(2, || {
                reqwest::Client::builder().http2_prior_knowledge().build()
            })
            .expect("client"),
        );
        let requests = (0..TOTAL).map(|_| {
            let connections = Arc::clone(&connections);
            let url = url.clone();
            tokio::spawn(async move {
                let slot = connections.acquire()?;
                slot.client().get(&url).send().await?.text().await
            })
        });
        // With every request on one connection the server would see two of
        // them and hold both forever.
        let answers =
            tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(requests))
                .await
                .expect("all requests in flight at once");
        for answer in answers {
            assert_eq!(answer.expect("task").expect("request"), "ok");
        }
        assert_eq!(connections.lane_count(), 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // Slots came back: the next request fits on the first lane again.
        let slot = connections.acquire().expect("slot");
        assert!(Arc::ptr_eq(
            &slot.0,
            &connections.lanes.read().expect("lanes")[0]
        ));
        assert_eq!(connections.lane_count(), 3);
    }

    #[test]
    fn a_slot_is_given_back_when_dropped() {
        let connections =
            Connections::new(1, || reqwest::Client::builder().build()).expect("client");
        let first = connections.acquire().expect("slot");
        let second = connections.acquire().expect("slot");
        assert_eq!(connections.lane_count(), 2);
        drop(first);
        drop(second);
        let again = connections.acquire().expect("slot");
        assert!(Arc::ptr_eq(
            &again.0,
            &connections.lanes.read().expect("lanes")[0]
        ));
        assert_eq!(connections.lane_count(), 2);
    }
}
