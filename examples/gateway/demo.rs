//! The demo backend the gateway starts when it is given no upstream: a
//! WebSocket echo on `/` and a chat room on `/chat` that sends every
//! message to every member, sender included.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// Messages a slow chat member may fall behind by before it misses some.
const ROOM_BACKLOG: usize = 256;

/// Serves the demo on `listener` (an ephemeral loopback port).
pub fn start(listener: TcpListener) {
    let (room, _) = broadcast::channel::<Message>(ROOM_BACKLOG);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of fds: let connections end instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, room.clone()));
        }
    });
}

#[derive(Clone, Copy)]
enum Page {
    Echo,
    Chat,
}

async fn serve(stream: TcpStream, room: broadcast::Sender<Message>) {
    let mut page = Page::Echo;
    // tungstenite's callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    let pick = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        page = match req.uri().path() {
            "/" => Page::Echo,
            "/chat" => Page::Chat,
            _ => {
                let mut not_found =
                    ErrorResponse::new(Some("no such room: try / or /chat\n".into()));
                *not_found.status_mut() = StatusCode::NOT_FOUND;
                return Err(not_found);
            }
        };
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, pick).await else {
        return;
    };
    match page {
        Page::Echo => echo(ws).await,
        Page::Chat => chat(ws, room).await,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn chat(ws: Ws, room: broadcast::Sender<Message>) {
    let mut heard = room.subscribe();
    let (mut to_member, mut from_member) = ws.split();
    loop {
        tokio::select! {
            said = from_member.next() => match said {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
                    // No receiver only means the room is empty for a moment.
                    let _ = room.send(msg);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            heard_msg = heard.recv() => match heard_msg {
                Ok(msg) => {
                    if to_member.send(msg).await.is_err() {
                        return;
                    }
                }
                // A member too slow to keep up skips what it missed.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
