//! Load-generator clients: a minimal keep-alive HTTP/1.1 client for request
//! rates, an SSE client (hyper) and a WebSocket client (tokio-tungstenite)
//! for chat turns. Connections to the server are spread over source
//! addresses 127.0.0.2–127.0.0.254 so 10,000 of them never run out of
//! ephemeral ports.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A latency histogram in microseconds (1 µs to 10 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, 600_000_000);
    histogram.record(micros).expect("value within bounds");
}

static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Opens a TCP connection from the next loopback source address.
pub async fn connect(destination: SocketAddr) -> io::Result<TcpStream> {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
    let source = Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(destination).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A keep-alive HTTP/1.1 connection sending prepared request bytes and
/// reading `Content-Length` or chunked responses (what the server sends).
pub struct RawConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    pub async fn open(destination: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            stream: connect(destination).await?,
            buffer: Vec::with_capacity(32 * 1024),
        })
    }

    /// Sends one request; returns the response status (the body is read and dropped).
    pub async fn request(&mut self, request: &[u8]) -> io::Result<u16> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        loop {
            if let Some((status, length)) = parse_response(&self.buffer)?
                && self.buffer.len() >= length
            {
                if self.buffer.len() > length {
                    return Err(io::Error::other("unexpected bytes after the response"));
                }
                return Ok(status);
            }
            self.buffer.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// `Some((status, total length))` once the head and body length are known.
fn parse_response(buffer: &[u8]) -> io::Result<Option<(u16, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(io::Error::other(format!("bad response: {err}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut chunked = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length: usize = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .ok_or_else(|| io::Error::other("bad content-length"))?;
            return Ok(Some((status, head + length)));
        }
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    if !chunked {
        return Ok(Some((status, head)));
    }
    // Walk the chunks: "<hex>\r\n<data>\r\n" ... "0\r\n\r\n".
    let mut at = head;
    loop {
        let Some(line_end) = buffer[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&buffer[at..at + line_end])
            .map_err(|_| io::Error::other("bad chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::other("bad chunk size"))?;
        at += line_end + 2;
        if size == 0 {
            return Ok(Some((status, at + 2)));
        }
        at += size + 2;
        if at > buffer.len() {
            return Ok(None);
        }
    }
}

/// An HTTP/1.1 request as bytes.
pub fn raw_request(
    method: &str,
    path: &str,
    host: SocketAddr,
    token: Option<&str>,
    body: Option<&str>,
) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    request.into_bytes()
}

/// Requests per second and latency of a closed-loop request flood.
#[derive(Debug, Clone)]
pub struct RateResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl RateResult {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `connections` connections, each sending `request` back to back for
/// `warmup + duration`; only the last `duration` is counted.
pub async fn request_flood(
    destination: SocketAddr,
    connections: usize,
    request: Vec<u8>,
    expect: u16,
    warmup: Duration,
    duration: Duration,
) -> RateResult {
    let request = std::sync::Arc::new(request);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut connection = None;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                if connection.is_none() {
                    match RawConnection::open(destination).await {
                        Ok(opened) => connection = Some(opened),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(open) = connection.as_mut() else {
                    continue;
                };
                let result = open.request(&request).await;
                let done = Instant::now();
                let counted = sent >= measure_from && done <= end;
                match result {
                    Ok(status) if status == expect => {
                        if counted {
                            ok += 1;
                            record(&mut latency, done - sent);
                        }
                    }
                    Ok(_) => errors += u64::from(counted),
                    Err(_) => {
                        errors += u64::from(counted);
                        connection = None;
                    }
                }
            }
            (ok, errors, latency)
        }));
    }
    let mut total = RateResult {
        requests: 0,
        errors: 0,
        elapsed: duration,
        latency: histogram(),
    };
    for worker in workers {
        if let Ok((ok, errors, latency)) = worker.await {
            total.requests += ok;
            total.errors += errors;
            total.latency.add(&latency).expect("same bounds");
        }
    }
    total
}

/// How one streamed chat turn went.
#[derive(Debug, Clone)]
pub struct Turn {
    /// When the question left the client (after any handshake).
    pub sent: Instant,
    pub first_delta: Option<Instant>,
    pub done: Instant,
    pub text: String,
    pub conversation_id: Option<i64>,
}

impl Turn {
    fn started(sent: Instant) -> Self {
        Self {
            sent,
            first_delta: None,
            done: sent,
            text: String::new(),
            conversation_id: None,
        }
    }
}

#[derive(Deserialize)]
struct DeltaData {
    delta: String,
}

#[derive(Deserialize)]
struct DoneData {
    conversation_id: i64,
}

/// A keep-alive HTTP/1.1 connection for `POST /api/chat/stream` turns.
pub struct SseConnection {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl SseConnection {
    pub async fn open(destination: SocketAddr) -> Result<Self, String> {
        let stream = connect(destination)
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("handshake: {err}"))?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: destination.to_string(),
        })
    }

    /// One turn: question out, deltas in until `event: done`.
    pub async fn turn(
        &mut self,
        token: &str,
        conversation_id: Option<i64>,
        question: &str,
    ) -> Result<Turn, String> {
        let body = serde_json::json!({"conversation_id": conversation_id, "message": question});
        let request = hyper::Request::post("/api/chat/stream")
            .header("host", &self.host)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|err| err.to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|err| format!("connection: {err}"))?;
        let sent = Instant::now();
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|err| format!("request: {err}"))?;
        if response.status() != 200 {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let is_sse = response
            .headers()
            .get("content-type")
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        if !is_sse {
            return Err("answer is not an event stream".into());
        }
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        let mut turn = Turn::started(sent);
        let mut finished = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| format!("body: {err}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let event = std::str::from_utf8(&event).map_err(|_| "event is not UTF-8")?;
                // Each event starts with its `id: <turn_id>:<seq>` line.
                let event = match event.strip_prefix("id: ") {
                    Some(rest) => rest.split_once('\n').map_or("", |(_, event)| event),
                    None => event,
                };
                if let Some(data) = event.strip_prefix("data: ") {
                    let delta: DeltaData = serde_json::from_str(data.trim_end())
                        .map_err(|err| format!("bad delta: {err}"))?;
                    turn.first_delta.get_or_insert_with(Instant::now);
                    turn.text.push_str(&delta.delta);
                } else if let Some(data) = event.strip_prefix("event: done\ndata: ") {
                    let done: DoneData = serde_json::from_str(data.trim_end())
                        .map_err(|err| format!("bad done: {err}"))?;
                    turn.done = Instant::now();
                    turn.conversation_id = Some(done.conversation_id);
                    finished = true;
                } else if event.starts_with("event: error") {
                    return Err(format!("error event: {}", event.trim_end()));
                } else if !event.starts_with(':') {
                    return Err(format!("unexpected event: {event:?}"));
                }
            }
        }
        if finished {
            Ok(turn)
        } else {
            Err("stream ended without done".into())
        }
    }
}

/// One WebSocket turn on a fresh socket; `sent` is taken after the upgrade.
pub async fn ws_turn(
    destination: SocketAddr,
    token: &str,
    conversation_id: i64,
    question: &str,
) -> Result<Turn, String> {
    let stream = connect(destination)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let url = format!("ws://{destination}/api/chat/ws/{conversation_id}?token={token}");
    // A small read buffer: 10,000 sockets × the default 128 KiB is a lot for the bench process.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|err| format!("upgrade: {err}"))?;
    let frame = serde_json::json!({ "message": question }).to_string();
    let sent = Instant::now();
    socket
        .send(Message::Text(frame.into()))
        .await
        .map_err(|err| format!("send: {err}"))?;
    let mut turn = Turn::started(sent);
    let mut finished = false;
    while let Some(message) = socket.next().await {
        match message.map_err(|err| format!("frame: {err}"))? {
            Message::Text(text) => {
                let control = text
                    .starts_with('{')
                    .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
                    .flatten();
                match control {
                    Some(control) if control["event"] == "done" => {
                        turn.done = Instant::now();
                        turn.conversation_id = control["conversation_id"].as_i64();
                        finished = true;
                    }
                    // Sent before the first delta: the turn's id.
                    Some(control) if control["event"] == "turn" => {}
                    Some(control) => return Err(format!("control frame: {control}")),
                    None => {
                        turn.first_delta.get_or_insert_with(Instant::now);
                        turn.text.push_str(&text);
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    if finished {
        Ok(turn)
    } else {
        Err("socket closed without done".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).expect("ok"), Some((200, plain.len())));
        assert_eq!(parse_response(&plain[..20]).expect("ok"), None);
        let chunked =
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).expect("ok"),
            Some((201, chunked.len()))
        );
        assert_eq!(
            parse_response(&chunked[..chunked.len() - 3]).expect("ok"),
            None
        );
    }
}
