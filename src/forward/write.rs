//! The forwarding rewrite written straight into the outgoing bytes.
//!
//! [`ForwardPolicy::rewrite_request`] edits a `HeaderMap` (hashing each
//! removal and insertion) that is then serialised once and dropped. On the
//! proxy's hot path the rewritten head is only ever bytes, so these writers
//! skip the edits: each field the policy keeps is copied from the borrowed
//! head, and the policy's own fields are formatted in place, the client
//! address on the stack. The result is the same head, field for field, as
//! the `HeaderMap` path; only the order between fields of different names
//! may differ (RFC 9110 §5.3 gives it no meaning), each name's values keep
//! theirs. A differential test holds the two paths together.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::Request;

use super::hop::{self, Keep};
use super::{forwarded, origin_form, underscore, Client, ForwardContext, ForwardPolicy, IpText};
use super::{XForwardedFor, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REAL_IP};
use crate::handshake::{write_response_head, SwitchingHead};

impl ForwardPolicy {
    /// Writes the head [`rewrite_request`](Self::rewrite_request) followed
    /// by [`write_request_head`](crate::handshake::write_request_head)
    /// would write, without changing `req` and without building or editing
    /// a `HeaderMap`.
    ///
    /// The same fields with the same values; the client's fields keep their
    /// order, the proxy's own (`Host`, `X-Real-IP`, `X-Forwarded-*`, the
    /// configured ones) follow them.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
    ///
    /// let policy = ForwardPolicy::nginx();
    /// let peer = "192.0.2.7:50000".parse()?;
    /// let req = http::Request::get("/chat")
    ///     .header("host", "chat.example")
    ///     .header("upgrade", "websocket")
    ///     .header("connection", "Upgrade")
    ///     .body(())?;
    /// let client = policy.resolve_client(peer, req.headers(), Scheme::Http);
    /// let ctx = ForwardContext::new(peer, Scheme::Http, 80, "127.0.0.1:9000".parse()?)
    ///     .with_websocket(true);
    /// let mut out = BytesMut::new();
    /// policy.write_request_head(&req, &client, &ctx, &mut out);
    /// assert_eq!(
    ///     &out[..],
    ///     &b"GET /chat HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
    ///        host: chat.example\r\nx-real-ip: 192.0.2.7\r\nx-forwarded-for: 192.0.2.7\r\n\
    ///        x-forwarded-proto: http\r\n\r\n"[..]
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_request_head<B>(
        &self,
        req: &Request<B>,
        client: &Client,
        ctx: &ForwardContext,
        dst: &mut BytesMut,
    ) {
        let headers = req.headers();
        // The client's fields plus the proxy's eight or so: one reserve.
        let fields: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        dst.reserve(fields + 512);

        dst.put_slice(req.method().as_str().as_bytes());
        dst.put_u8(b' ');
        let absolute = req.uri().authority().and_then(|_| origin_form(req.uri()));
        let uri = absolute.as_ref().unwrap_or(req.uri());
        if let Some((scheme, authority)) = uri.scheme().zip(uri.authority()) {
            dst.put_slice(scheme.as_str().as_bytes());
            dst.put_slice(b"://");
            dst.put_slice(authority.as_str().as_bytes());
        }
        dst.put_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        dst.put_slice(if ctx.http10() {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });

        let drop_forwarded = self.forwarded || !client.is_peer_trusted();
        let connection = headers.get_all(header::CONNECTION);
        let listed = hop::Listed::new(connection.iter().map(HeaderValue::as_bytes));
        let edited = !self.request_edits.is_empty();
        for (name, value) in headers {
            let set_here = name == header::HOST
                || name == X_REAL_IP
                || name == X_FORWARDED_FOR
                || name == X_FORWARDED_PROTO
                || (name == header::FORWARDED && drop_forwarded)
                || (name == header::EXPECT && ctx.drops_expect());
            if set_here
                || listed.strips_name(name)
                || underscore::is_dropped(name, self.underscores, &self.request_edits)
                || (edited && self.request_edits.last_for(name).is_some())
            {
                continue;
            }
            put_field(dst, name.as_str().as_bytes(), value.as_bytes());
        }

        // nginx `map $http_upgrade $connection_upgrade { '' close; }`: one
        // request per upstream connection unless it upgrades.
        if ctx.is_websocket() {
            self.put_own(dst, &header::UPGRADE, b"websocket");
            self.put_own(dst, &header::CONNECTION, b"upgrade");
        } else {
            self.put_own(dst, &header::CONNECTION, b"close");
        }
        if self.sets(&header::HOST) {
            let host = self.host.value(req, ctx);
            put_field(dst, b"host", host.as_bytes());
        }
        let real_ip = IpText::of(client.ip());
        self.put_own(dst, &X_REAL_IP, real_ip.as_bytes());
        if self.sets(&X_FORWARDED_FOR) {
            dst.put_slice(b"x-forwarded-for: ");
            if self.xff == XForwardedFor::Replace {
                dst.put_slice(real_ip.as_bytes());
            } else {
                // nginx `$proxy_add_x_forwarded_for`: the incoming list,
                // read before any field is skipped, then the peer.
                for value in headers.get_all(X_FORWARDED_FOR) {
                    let v = value.as_bytes().trim_ascii();
                    if !v.is_empty() {
                        dst.put_slice(v);
                        dst.put_slice(b", ");
                    }
                }
                let peer = ctx.peer().ip().to_canonical();
                if peer == client.ip() {
                    dst.put_slice(real_ip.as_bytes());
                } else {
                    dst.put_slice(IpText::of(peer).as_bytes());
                }
            }
            dst.put_slice(b"\r\n");
        }
        self.put_own(dst, &X_FORWARDED_PROTO, client.proto().as_str().as_bytes());
        if self.forwarded && self.sets(&header::FORWARDED) {
            let element = forwarded::element(client.ip(), client.proto(), client.host());
            put_field(dst, b"forwarded", element.as_bytes());
        }
        for (name, value) in self.request_edits.final_sets() {
            if !(name == header::EXPECT && ctx.drops_expect()) {
                put_field(dst, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        dst.put_slice(b"\r\n");
    }

    /// Writes the client's 101 for `head`, the upstream's checked 101: what
    /// [`rewrite_response`](Self::rewrite_response) followed by
    /// [`write_response_head`] would write, without a `HeaderMap`.
    ///
    /// Hop-by-hop fields go (but `Upgrade` and `Connection`), and those the
    /// upstream named in `Connection`; the rest keep their order and
    /// values. A 101 carrying `Location` or `Refresh` under
    /// `proxy_redirect default` (unheard of, but allowed) takes the
    /// `HeaderMap` path, which rewrites them.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wsproxy::forward::{ForwardContext, ForwardPolicy, Scheme};
    /// use wsproxy::handshake::{parse_request, parse_upgrade_answer, Limits, Status, UpgradeAnswer};
    ///
    /// let limits = Limits::default();
    /// let mut buf = BytesMut::from(concat!(
    ///     "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n",
    ///     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ///     "Sec-WebSocket-Version: 13\r\n\r\n",
    /// ));
    /// let Status::Complete(request) = parse_request(&mut buf, &limits)? else { unreachable!() };
    /// let mut buf = BytesMut::from(concat!(
    ///     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    ///     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nKeep-Alive: timeout=5\r\n\r\n",
    /// ));
    /// let upgrade = request.websocket().ok_or("not an upgrade")?;
    /// let Status::Complete(UpgradeAnswer::Switched(head)) = parse_upgrade_answer(&mut buf, &limits, upgrade)?
    /// else { unreachable!() };
    ///
    /// let policy = ForwardPolicy::nginx();
    /// let peer = "192.0.2.7:50000".parse()?;
    /// let client = policy.resolve_client(peer, request.request().headers(), Scheme::Http);
    /// let ctx = ForwardContext::new(peer, Scheme::Http, 80, "127.0.0.1:9000".parse()?);
    /// let mut out = BytesMut::new();
    /// policy.write_switching_head(&head, &client, &ctx, &mut out);
    /// assert_eq!(
    ///     &out[..],
    ///     &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
    ///        sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"[..]
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_switching_head(
        &self,
        head: &SwitchingHead,
        client: &Client,
        ctx: &ForwardContext,
        dst: &mut BytesMut,
    ) {
        let redirects = self.redirect
            && head.fields().any(|(name, _)| {
                name.eq_ignore_ascii_case(b"location") || name.eq_ignore_ascii_case(b"refresh")
            });
        if redirects {
            let mut response = head.to_response();
            self.rewrite_response(&mut response, client, ctx);
            write_response_head(&response, dst);
            return;
        }
        dst.reserve(head.as_bytes().len() + 2);
        dst.put_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        let listed = hop::Listed::new(
            head.fields()
                .filter(|(name, _)| name.eq_ignore_ascii_case(b"connection"))
                .map(|(_, value)| value),
        );
        for (name, value) in head.fields() {
            if listed.strips(name, Keep::Upgrade) {
                continue;
            }
            // `HeaderName` lowercases names; so does this, to send what
            // the `HeaderMap` path sent.
            let start = dst.len();
            dst.put_slice(name);
            if let Some(written) = dst.get_mut(start..) {
                written.make_ascii_lowercase();
            }
            dst.put_slice(b": ");
            dst.put_slice(value);
            dst.put_slice(b"\r\n");
        }
        dst.put_slice(b"\r\n");
    }

    /// Whether the built-in field `name` goes out: no configured edit
    /// replaces or removes it.
    fn sets(&self, name: &HeaderName) -> bool {
        self.request_edits.is_empty() || self.request_edits.last_for(name).is_none()
    }

    /// Writes a built-in field unless a configured edit decides it.
    fn put_own(&self, dst: &mut BytesMut, name: &HeaderName, value: &[u8]) {
        if self.sets(name) {
            put_field(dst, name.as_str().as_bytes(), value);
        }
    }
}

fn put_field(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod ip_text_tests {
    use super::IpText;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn ipv4_by_hand_matches_display_for_every_octet() {
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 9, 255),
                Ipv4Addr::new(10, octet, 100, 1),
                Ipv4Addr::new(255, 99, octet, octet),
            ] {
                let text = IpText::of(IpAddr::V4(ip));
                assert_eq!(text.as_bytes(), ip.to_string().as_bytes());
            }
        }
        let v6: IpAddr = "2001:db8::ffff:1"
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(IpText::of(v6).as_bytes(), b"2001:db8::ffff:1");
    }
}
