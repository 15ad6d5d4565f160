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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hyper_util::client::legacy::connect::Connection;
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::sync::Notify;

use crate::clients::ClientSetupError;

/// How long the connection of a lane other than the first may stay idle.
const PEAK_LANE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The first lane is kept for steady load; the others serve peaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LaneKind {
    First,
    /// Its connection closes soon after the peak.
    Peak,
}

/// Configures one more client (its own connection pool), alike.
type ConfigureClient = dyn Fn() -> reqwest::ClientBuilder + Send + Sync;

/// TLS settings for every lane of an upstream: the system's root
/// certificates read once, and one session cache, so that a lane opened for a
/// peak resumes a session instead of making a full handshake. Left to itself,
/// reqwest reads and parses the system's CA bundle for every client it
/// builds (4–9 ms each, measured), here on a runtime thread while the lane
/// list is locked.
fn upstream_tls() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The lanes to one upstream.
pub struct Connections {
    configure: Box<ConfigureClient>,
    /// Cloned into each lane's client: clones share the verifier and the session cache.
    tls: rustls::ClientConfig,
    per_connection: usize,
    lanes: RwLock<Vec<Arc<Lane>>>,
    /// Told when a lane has connected or its first request gave up.
    lane_news: Arc<Notify>,
    /// Learned from the first connection's ALPN: the upstream speaks HTTP/2,
    /// so lanes opened later say so from the start, and hyper then makes one
    /// connection per lane even when a burst arrives as it reconnects. The
    /// first lane, built before anyone knew, is then replaced by one that does.
    speaks_h2: Arc<AtomicBool>,
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
    /// Built knowing that the upstream speaks HTTP/2.
    prior_knowledge: bool,
    in_flight: AtomicUsize,
    /// Set when the lane's client has established a connection. Until then
    /// the lane carries one request: hyper learns that a TLS connection
    /// speaks HTTP/2 only once it is up (ALPN), so requests sent meanwhile
    /// would each open a connection of their own (measured: 804 connections
    /// for about 200 lanes in a bench run).
    connected: Arc<AtomicBool>,
    lane_news: Arc<Notify>,
}

impl Lane {
    /// Takes a slot when fewer than `limit` are taken (one while connecting).
    fn try_take(self: &Arc<Self>, limit: usize) -> Option<LaneSlot> {
        let limit = if self.connected.load(Ordering::Acquire) {
            limit
        } else {
            1
        };
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
        if !self.0.connected.load(Ordering::Acquire) {
            // The first request failed: a waiting one may try to connect.
            self.0.lane_news.notify_waiters();
        }
    }
}

impl Connections {
    /// `per_connection` requests at most on each lane, trusting the system's
    /// root certificates; builds the first lane now so that a bad client
    /// configuration stops startup.
    pub fn new(
        per_connection: usize,
        configure: impl Fn() -> reqwest::ClientBuilder + Send + Sync + 'static,
    ) -> Result<Self, ClientSetupError> {
        Ok(Self::with_tls(per_connection, upstream_tls()?, configure)?)
    }

    /// As [`Connections::new`], over the TLS settings `tls`.
    fn with_tls(
        per_connection: usize,
        tls: rustls::ClientConfig,
        configure: impl Fn() -> reqwest::ClientBuilder + Send + Sync + 'static,
    ) -> Result<Self, reqwest::Error> {
        let mut connections = Self {
            configure: Box::new(configure),
            tls,
            per_connection: per_connection.max(1),
            lanes: RwLock::new(Vec::new()),
            lane_news: Arc::new(Notify::new()),
            speaks_h2: Arc::new(AtomicBool::new(false)),
        };
        let first = connections.new_lane(LaneKind::First, 0)?;
        connections
            .lanes
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::new(first));
        Ok(connections)
    }

    /// The first client, for uses that need one outside a request.
    pub fn first_client(&self) -> reqwest::Client {
        self.read_lanes()[0].client.clone()
    }

    /// A slot on the first lane with room; when all are full, on a new lane,
    /// unless one is still connecting: then this waits for it, as its
    /// connection will have room. Lanes are kept once opened (an idle one's
    /// connection closes after the client's pool idle timeout); filling the
    /// first ones first lets the others go idle when the load drops.
    pub async fn acquire(&self) -> Result<LaneSlot, reqwest::Error> {
        loop {
            // Registered before looking, so that news arriving in between is not missed.
            let news = self.lane_news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let connecting = {
                let lanes = self.read_lanes();
                if self.first_lane_lacks_prior_knowledge(&lanes) {
                    drop(lanes);
                    self.renew_first_lane()?;
                    continue;
                }
                if let Some(slot) = self.take_existing(&lanes) {
                    return Ok(slot);
                }
                any_connecting(&lanes)
            };
            if connecting {
                news.await;
                continue;
            }
            let mut lanes = self
                .lanes
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Another request may have opened a lane while this one waited for the lock.
            if any_connecting(&lanes) {
                continue;
            }
            if let Some(slot) = self.take_existing(&lanes) {
                return Ok(slot);
            }
            // Born holding this request's slot.
            let lane = Arc::new(self.new_lane(LaneKind::Peak, 1)?);
            lanes.push(Arc::clone(&lane));
            tracing::debug!(
                lanes = lanes.len(),
                "opened another upstream connection lane"
            );
            return Ok(LaneSlot(lane));
        }
    }

    /// Whether the first lane was built before the upstream was known to
    /// speak HTTP/2 and carries nothing now. Its connection closes when idle
    /// for long; a burst on its next one would then open a connection per
    /// request, as at startup.
    fn first_lane_lacks_prior_knowledge(&self, lanes: &[Arc<Lane>]) -> bool {
        lanes.first().is_some_and(|first| {
            !first.prior_knowledge && first.in_flight.load(Ordering::Acquire) == 0
        }) && self.speaks_h2.load(Ordering::Acquire)
    }

    /// Replaces the idle first lane by one that knows the upstream speaks
    /// HTTP/2 (once, at the cost of one more connection).
    fn renew_first_lane(&self) -> Result<(), reqwest::Error> {
        let mut lanes = self
            .lanes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.first_lane_lacks_prior_knowledge(&lanes) {
            lanes[0] = Arc::new(self.new_lane(LaneKind::First, 0)?);
        }
        Ok(())
    }

    /// A lane whose client reports its first connection to `lane_news`.
    fn new_lane(&self, kind: LaneKind, in_flight: usize) -> Result<Lane, reqwest::Error> {
        let mut configured = (self.configure)().tls_backend_preconfigured(self.tls.clone());
        if kind == LaneKind::Peak {
            configured = configured.pool_idle_timeout(PEAK_LANE_IDLE_TIMEOUT);
        }
        let prior_knowledge = self.speaks_h2.load(Ordering::Acquire);
        if prior_knowledge {
            configured = configured.http2_prior_knowledge();
        }
        let connected = Arc::new(AtomicBool::new(false));
        let report = {
            let connected = Arc::clone(&connected);
            let lane_news = Arc::clone(&self.lane_news);
            let speaks_h2 = Arc::clone(&self.speaks_h2);
            // Runs when a connection (TCP and TLS) is up, before hyper puts it in the pool.
            move |connection| {
                if negotiated_h2(&connection) {
                    speaks_h2.store(true, Ordering::Release);
                }
                if !connected.swap(true, Ordering::AcqRel) {
                    lane_news.notify_waiters();
                }
                connection
            }
        };
        let client = configured
            .connector_layer(tower::util::MapResponseLayer::new(report))
            .build()?;
        Ok(Lane {
            client,
            prior_knowledge,
            in_flight: AtomicUsize::new(in_flight),
            connected,
            lane_news: Arc::clone(&self.lane_news),
        })
    }

    fn take_existing(&self, lanes: &[Arc<Lane>]) -> Option<LaneSlot> {
        lanes
            .iter()
            .find_map(|lane| lane.try_take(self.per_connection))
    }

    fn read_lanes(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Lane>>> {
        self.lanes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many lanes (clients) are open.
    pub fn lane_count(&self) -> usize {
        self.read_lanes().len()
    }
}

/// Whether a lane's first connection is still being made.
fn any_connecting(lanes: &[Arc<Lane>]) -> bool {
    lanes
        .iter()
        .any(|lane| !lane.connected.load(Ordering::Acquire))
}

/// Whether TLS negotiated HTTP/2 (ALPN) on a new connection.
fn negotiated_h2(connection: &impl Connection) -> bool {
    connection.connected().is_negotiated_h2()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;
    use tokio::sync::watch;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// Connections a test server accepted, how many of them resumed a TLS
    /// session, and how many have closed.
    #[derive(Default)]
    struct Accepted {
        connections: AtomicUsize,
        resumed: AtomicUsize,
        closed: AtomicUsize,
        closing: Notify,
    }

    impl Accepted {
        async fn closed(&self, count: usize) {
            loop {
                let closing = self.closing.notified();
                tokio::pin!(closing);
                closing.as_mut().enable();
                if self.closed.load(Ordering::SeqCst) >= count {
                    return;
                }
                closing.await;
            }
        }
    }

    /// An HTTP/2 server allowing `max_streams` per connection whose answers
    /// all wait until `total` requests have arrived: it answers only if they
    /// were all in flight at once. Over TLS (ALPN h2 or http/1.1, as real
    /// upstreams) when `tls` is given, else cleartext HTTP/2. Returns its
    /// URL and what it accepted.
    async fn server_holding_answers(
        max_streams: u32,
        total: usize,
        tls: Option<TlsAcceptor>,
    ) -> (String, Arc<Accepted>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/", listener.local_addr().expect("address"));
        let accepted = Arc::new(Accepted::default());
        let counts = Arc::clone(&accepted);
        let (arrived, _) = watch::channel(0_usize);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counts.connections.fetch_add(1, Ordering::SeqCst);
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
                let tls = tls.clone();
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(max_streams);
                    if let Some(acceptor) = tls {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            if stream.get_ref().1.handshake_kind()
                                == Some(rustls::HandshakeKind::Resumed)
                            {
                                counts.resumed.fetch_add(1, Ordering::SeqCst);
                            }
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    } else {
                        let cleartext = builder.http2_only();
                        let _ = cleartext.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                    counts.closing.notify_waiters();
                });
            }
        });
        (url, accepted)
    }

    /// A TLS acceptor offering h2 and http/1.1 with a self-signed certificate
    /// for 127.0.0.1, and client settings that trust it.
    fn tls() -> (TlsAcceptor, rustls::ClientConfig) {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (TlsAcceptor::from(Arc::new(config)), client)
    }

    /// Sends `total` requests at once through `connections`; all must be answered.
    async fn send_all_at_once(connections: &Arc<Connections>, url: &str, total: usize) {
        let requests = (0..total).map(|_| {
            let connections = Arc::clone(connections);
            let url = url.to_string();
            tokio::spawn(async move {
                let slot = connections.acquire().await?;
                slot.client().get(&url).send().await?.text().await
            })
        });
        // Requests that cannot all be in flight at once are never answered.
        let answers =
            tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(requests))
                .await
                .expect("all requests in flight at once");
        for answer in answers {
            assert_eq!(answer.expect("task").expect("request"), "ok");
        }
    }

    #[tokio::test]
    async fn requests_beyond_the_per_connection_limit_go_out_on_new_connections() {
        const TOTAL: usize = 5;
        let (url, accepted) = server_holding_answers(2, TOTAL, None).await;
        let connections = Arc::new(
            Connections::new(2, || reqwest::Client::builder().http2_prior_knowledge())
                .expect("client"),
        );
        // With every request on one connection the server would see two of
        // them and hold both forever.
        send_all_at_once(&connections, &url, TOTAL).await;
        assert_eq!(connections.lane_count(), 3);
        assert_eq!(accepted.connections.load(Ordering::SeqCst), 3);

        // Slots came back: the next request fits on the first lane again.
        let slot = connections.acquire().await.expect("slot");
        assert!(Arc::ptr_eq(&slot.0, &connections.read_lanes()[0]));
        assert_eq!(connections.lane_count(), 3);
    }

    #[tokio::test]
    async fn a_burst_on_a_cold_tls_lane_opens_one_connection() {
        const TOTAL: usize = 30;
        let (acceptor, trusting) = tls();
        let (url, accepted) = server_holding_answers(100, TOTAL, Some(acceptor)).await;
        let connections = Arc::new(
            Connections::with_tls(100, trusting, reqwest::Client::builder).expect("client"),
        );
        // hyper alone would open one connection per request here: it learns
        // from ALPN that the connection is HTTP/2 only once it is up.
        send_all_at_once(&connections, &url, TOTAL).await;
        assert_eq!(accepted.connections.load(Ordering::SeqCst), 1);
        assert_eq!(connections.lane_count(), 1);
    }

    #[tokio::test]
    async fn a_new_lane_resumes_the_tls_session_of_an_earlier_one() {
        let (acceptor, trusting) = tls();
        let (url, accepted) = server_holding_answers(100, 1, Some(acceptor)).await;
        let connections =
            Connections::with_tls(1, trusting, reqwest::Client::builder).expect("client");
        // Held, so that the next request needs a lane of its own.
        let first = connections.acquire().await.expect("slot");
        let answer = first.client().get(&url).send().await.expect("request");
        assert_eq!(answer.text().await.expect("body"), "ok");
        let second = connections.acquire().await.expect("slot");
        let answer = second.client().get(&url).send().await.expect("request");
        assert_eq!(answer.text().await.expect("body"), "ok");

        assert_eq!(connections.lane_count(), 2);
        assert_eq!(accepted.connections.load(Ordering::SeqCst), 2);
        assert_eq!(accepted.resumed.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_burst_after_the_first_lane_went_idle_opens_one_connection() {
        const TOTAL: usize = 30;
        let (acceptor, trusting) = tls();
        let (url, accepted) = server_holding_answers(100, 1, Some(acceptor)).await;
        let connections = Arc::new(
            Connections::with_tls(100, trusting, || {
                reqwest::Client::builder().pool_idle_timeout(Duration::from_millis(50))
            })
            .expect("client"),
        );
        send_all_at_once(&connections, &url, 1).await;
        // The first lane's connection is closed for idleness.
        tokio::time::timeout(Duration::from_secs(10), accepted.closed(1))
            .await
            .expect("the idle connection closes");

        // Without knowing that the upstream speaks HTTP/2, hyper would open a
        // connection per request of the burst.
        send_all_at_once(&connections, &url, TOTAL).await;
        assert_eq!(accepted.connections.load(Ordering::SeqCst), 2);
        assert_eq!(connections.lane_count(), 1);
    }

    #[tokio::test]
    async fn a_slot_is_given_back_when_dropped() {
        let connections = Connections::new(1, reqwest::Client::builder).expect("client");
        let first = connections.acquire().await.expect("slot");
        // No connection was made: mark the first lane as connected.
        connections.read_lanes()[0]
            .connected
            .store(true, Ordering::Release);
        let second = connections.acquire().await.expect("slot");
        assert_eq!(connections.lane_count(), 2);
        connections.read_lanes()[1]
            .connected
            .store(true, Ordering::Release);
        drop(first);
        drop(second);
        let again = connections.acquire().await.expect("slot");
        assert!(Arc::ptr_eq(&again.0, &connections.read_lanes()[0]));
        assert_eq!(connections.lane_count(), 2);
    }

    #[tokio::test]
    async fn a_request_waiting_for_a_connecting_lane_takes_it_over_when_the_first_gives_up() {
        let connections = Arc::new(Connections::new(5, reqwest::Client::builder).expect("client"));
        let first = connections.acquire().await.expect("slot");
        let waiting = tokio::spawn({
            let connections = Arc::clone(&connections);
            async move { connections.acquire().await.map(|slot| Arc::clone(&slot.0)) }
        });
        // On this one-thread runtime the waiting request runs until it waits.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The first request fails before connecting: its slot goes back.
        drop(first);
        let lane = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting request goes on")
            .expect("task")
            .expect("slot");
        assert!(Arc::ptr_eq(&lane, &connections.read_lanes()[0]));
        assert_eq!(connections.lane_count(), 1);
    }
}
