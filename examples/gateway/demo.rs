//! The demo backend the gateway starts when it is given no upstream:
//!
//! - `GET /` answers a small chat page (`demo.html`, inline CSS and script,
//!   nothing external) that joins the room on `/chat` through the gateway;
//! - a WebSocket upgrade on `/` is an echo;
//! - a WebSocket upgrade on `/chat` joins a chat room. Each member gets a
//!   name (`guest-1`, `guest-2`, ...), and every member hears, as one JSON
//!   text frame each: `{"type":"welcome","you":NAME}` first (to itself),
//!   `{"type":"presence","members":[NAMES]}` whenever someone joins or
//!   leaves, and `{"type":"message","from":NAME,"text":TEXT}` for each text
//!   frame a member sends, the sender's own included.
//!
//! The request head is read with the crate's own sans-IO handshake
//! (`parse_request`, `expected_accept`, `write_response_head`): one parser
//! decides between the page and the upgrade, and tungstenite takes over
//! the socket only after the 101.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, UPGRADE,
};
use http::{Method, Response, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use wsproxy::handshake::{
    error_response, parse_request, write_response_head, Limits, RequestHead, RequestKind, Status,
    WebSocketUpgrade,
};

/// The chat page, served for a plain `GET /`.
const PAGE: &str = include_str!("demo.html");

/// Events a slow chat member may fall behind by before it misses some.
const ROOM_BACKLOG: usize = 256;

/// The longest chat message: a room for people typing, not for files.
const MAX_CHAT_MESSAGE: usize = 64 << 10;

/// A client that has not sent its whole request head by then is dropped
/// (the gateway in front has its own, longer, handshake timeout).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the demo on `listener` (an ephemeral loopback port).
pub fn start(listener: TcpListener) {
    let room = Arc::new(Room::new());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of fds: let connections end instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, room.clone()));
        }
    });
}

async fn serve(mut stream: TcpStream, room: Arc<Room>) {
    let mut buf = BytesMut::with_capacity(1024);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Ok(Ok(head)) => head,
        Ok(Err(Some(answer))) => return answer_and_close(stream, answer, true).await,
        Ok(Err(None)) | Err(_) => return,
    };
    let (request, kind) = head.into_parts();
    let with_body = request.method() != Method::HEAD;
    let answer = match (request.uri().path(), kind, request.method()) {
        ("/", RequestKind::WebSocket(upgrade), _) => {
            if let Some(ws) = accept(stream, &upgrade, buf, WebSocketConfig::default()).await {
                echo(ws).await;
            }
            return;
        }
        ("/chat", RequestKind::WebSocket(upgrade), _) => {
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_CHAT_MESSAGE))
                .max_frame_size(Some(MAX_CHAT_MESSAGE));
            if let Some(ws) = accept(stream, &upgrade, buf, config).await {
                chat(ws, room).await;
            }
            return;
        }
        ("/", _, method) if method == Method::GET || method == Method::HEAD => page(),
        ("/", _, _) => {
            let mut answer = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "the page takes GET or HEAD; the echo, a WebSocket upgrade",
            );
            // RFC 9110 §15.5.6: a 405 lists the methods that work.
            let allow = http::HeaderValue::from_static("GET, HEAD");
            answer.headers_mut().insert(http::header::ALLOW, allow);
            answer
        }
        ("/chat", _, _) => error_response(
            StatusCode::UPGRADE_REQUIRED,
            "the chat room is a WebSocket: open / in a browser",
        ),
        _ => error_response(StatusCode::NOT_FOUND, "no such page: try / or /chat"),
    };
    answer_and_close(stream, answer, with_body).await;
}

/// Reads one request head; `Err` carries the answer to a bad one, or
/// `None` when the client went away first.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<RequestHead, Option<Response<Bytes>>> {
    let limits = Limits::default();
    // Bounded: every round reads at least one byte, and the limits turn a
    // head that keeps growing into a 431.
    loop {
        match parse_request(buf, &limits) {
            Ok(Status::Complete(head)) => return Ok(head),
            Ok(_) => {}
            Err(e) => return Err(Some(e.to_response())),
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// The chat page, never cached so that a rebuilt gateway serves its own.
/// The policy only lets the page talk to the gateway it came from.
fn page() -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(PAGE.as_bytes()));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, http::HeaderValue::from(PAGE.len()));
    headers.insert(CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    headers.insert(
        "content-security-policy",
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:",
        ),
    );
    headers.insert(CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// Writes a complete answer (`Connection: close`) and closes.
async fn answer_and_close(mut stream: TcpStream, answer: Response<Bytes>, with_body: bool) {
    let mut out = BytesMut::new();
    write_response_head(&answer, &mut out);
    if with_body {
        out.extend_from_slice(answer.body());
    }
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Completes the upgrade with a 101; the bytes read past the head (a client
/// may send its first frame right behind it) go to tungstenite first.
async fn accept(
    mut stream: TcpStream,
    upgrade: &WebSocketUpgrade,
    rest: BytesMut,
    config: WebSocketConfig,
) -> Option<Ws> {
    let switch = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, upgrade.expected_accept())
        .body(())
        .ok()?;
    let mut out = BytesMut::new();
    write_response_head(&switch, &mut out);
    stream.write_all(&out).await.ok()?;
    Some(
        WebSocketStream::from_partially_read(stream, rest.to_vec(), Role::Server, Some(config))
            .await,
    )
}

async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// The chat room: who is in it, and the events every member hears.
struct Room {
    /// JSON events; each member's task forwards them to its socket.
    events: broadcast::Sender<Utf8Bytes>,
    /// Members by join order, for the presence list.
    members: Mutex<BTreeMap<u64, String>>,
    next_guest: AtomicU64,
}

impl Room {
    fn new() -> Self {
        Self {
            events: broadcast::channel(ROOM_BACKLOG).0,
            members: Mutex::new(BTreeMap::new()),
            next_guest: AtomicU64::new(1),
        }
    }

    /// The presence event for the members now in the room.
    fn presence(members: &BTreeMap<u64, String>) -> Utf8Bytes {
        let names: Vec<&str> = members.values().map(String::as_str).collect();
        json!({ "type": "presence", "members": names })
            .to_string()
            .into()
    }

    /// Adds or removes a member and tells everyone, under one lock so that
    /// presence events go out in the order the changes happened.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<u64, String>)) {
        let Ok(mut members) = self.members.lock() else {
            return;
        };
        change(&mut members);
        // No receiver only means the room is empty for a moment.
        let _ = self.events.send(Self::presence(&members));
    }

    fn current_presence(&self) -> Option<Utf8Bytes> {
        self.members.lock().ok().map(|m| Self::presence(&m))
    }

    fn say(&self, from: &str, text: &str) {
        let event = json!({ "type": "message", "from": from, "text": text });
        let _ = self.events.send(event.to_string().into());
    }
}

/// A member's place in the room, given up when its task ends however it
/// ends.
struct Membership<'a> {
    room: &'a Room,
    id: u64,
}

impl<'a> Membership<'a> {
    fn join(room: &'a Room, id: u64, name: String) -> Self {
        room.update(|members| {
            members.insert(id, name);
        });
        Self { room, id }
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.room.update(|members| {
            members.remove(&self.id);
        });
    }
}

async fn chat(ws: Ws, room: Arc<Room>) {
    // Subscribed before joining: the member's first presence event is the
    // one that lists it.
    let mut heard = room.events.subscribe();
    let id = room.next_guest.fetch_add(1, Ordering::Relaxed);
    let name = format!("guest-{id}");
    let (mut to_member, mut from_member) = ws.split();
    let welcome = json!({ "type": "welcome", "you": name }).to_string();
    if to_member.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let _membership = Membership::join(&room, id, name.clone());
    loop {
        tokio::select! {
            said = from_member.next() => match said {
                Some(Ok(Message::Text(text))) => room.say(&name, text.as_str()),
                // Binary frames have no place on the page; pings are
                // answered by tungstenite.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            event = heard.recv() => {
                let event = match event {
                    Ok(event) => event,
                    // A member too slow to keep up skips what it missed,
                    // but gets the room's members right again.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        match room.current_presence() {
                            Some(presence) => presence,
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if to_member.send(Message::Text(event)).await.is_err() {
                    return;
                }
            }
        }
    }
}
