//! Hostile clients through `Proxy` on loopback, one family of attacks per
//! section, each checked against a raw TCP upstream that records exactly the
//! bytes it was sent.

// Family: chunked bodies
//
// Request smuggling through chunk framing (issue 13 §2): sizes a lax backend
// overflows or truncates, transfer codings proxies disagree on, extensions
// with control bytes. The proxy re-frames chunked bodies, refuses what it
// cannot re-frame and holds bodies to `client_max_body_size`.
mod chunked_bodies {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use wsproxy::balance::{RoundRobin, Upstream};
    use wsproxy::server::Server;
    use wsproxy::{Proxy, ProxyBuilder};

    /// Every wait here is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

    /// A raw upstream: answers 200 once it has read the end of a chunked
    /// body (or the peer closes), then records every byte it was sent until
    /// the proxy closes.
    struct Recorder {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Recorder {
        async fn start(until: &'static [u8]) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (count, record) = (accepted.clone(), seen.clone());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let record = record.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        let mut buf = [0u8; 4096];
                        let mut answered = false;
                        let _ = tokio::time::timeout(WAIT, async {
                            loop {
                                if !answered && got.windows(until.len()).any(|w| w == until) {
                                    answered = true;
                                    let _ = s.write_all(OK).await;
                                }
                                match s.read(&mut buf).await {
                                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                                    _ => break,
                                }
                            }
                        })
                        .await;
                        record.lock().unwrap().push(got);
                    });
                }
            });
            Self {
                addr,
                accepted,
                seen,
            }
        }

        /// What the upstream received on its only connection, once the
        /// proxy closed it.
        async fn only_request(&self) -> String {
            tokio::time::timeout(WAIT, async {
                while self.seen.lock().unwrap().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the upstream's connection ends");
            let seen = self.seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(self.accepted.load(Ordering::SeqCst), 1);
            String::from_utf8_lossy(&seen[0]).into_owned()
        }

        fn connections(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    fn proxy_to(upstream: &Recorder) -> ProxyBuilder {
        let set = [Upstream::new(upstream.addr)].into_iter().collect();
        Proxy::builder().upstream(RoundRobin::new(set))
    }

    /// Serves `builder` on a loopback listener; returns its address.
    async fn start(builder: ProxyBuilder) -> SocketAddr {
        let proxy = builder.build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Server::new(proxy).serve(listener, std::future::pending()));
        addr
    }

    /// Sends `request` and reads the answer until the proxy closes.
    async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
            .await
            .expect("the proxy answers and closes");
        String::from_utf8_lossy(&got).into_owned()
    }

    const HEAD: &str =
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

    #[tokio::test]
    async fn huge_chunk_sizes_are_400_and_the_smuggled_request_never_reaches_the_upstream() {
        for size in ["ffffffffffffffff", "8000000000000000"] {
            // With nginx's default limit and with none: the size bound holds
            // either way.
            for limit in [1024 * 1024, 0] {
                let upstream = Recorder::start(b"0\r\n\r\n").await;
                let proxy = start(proxy_to(&upstream).client_max_body_size(limit)).await;
                let request = format!("{HEAD}{size}\r\n{SMUGGLED}0\r\n\r\n{SMUGGLED}");
                let answer = exchange(proxy, request.as_bytes()).await;
                assert!(answer.starts_with("HTTP/1.1 400 "), "{size}: {answer}");
                assert!(answer.contains("chunk size too large"), "{answer}");
                let got = upstream.only_request().await;
                assert!(got.ends_with("\r\n\r\n"), "only the head went: {got}");
                assert!(!got.contains("smuggled"), "{size}: {got}");
                assert!(!got.contains(size), "{size}: {got}");
            }
        }
    }

    #[tokio::test]
    async fn a_chunk_of_2_pow_32_plus_5_is_413_before_any_of_it_is_forwarded() {
        let upstream = Recorder::start(b"0\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream)).await;
        let request = format!("{HEAD}100000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        let answer = exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer.contains("request body larger than 1048576 bytes"),
            "{answer}"
        );
        let got = upstream.only_request().await;
        assert!(got.ends_with("\r\n\r\n"), "only the head went: {got}");
        assert!(!got.contains("hello") && !got.contains("smuggled"), "{got}");
    }

    #[tokio::test]
    async fn chunk_sizes_add_up_against_the_limit() {
        let upstream = Recorder::start(b"0\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream).client_max_body_size(8)).await;
        let request = format!("{HEAD}5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n");
        let answer = exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        let got = upstream.only_request().await;
        // The first chunk fit and went; nothing of the second did (not
        // even the CRLF closing the first: it goes out with the next size).
        assert!(got.ends_with("\r\n\r\n5\r\nhello"), "{got}");
    }

    #[tokio::test]
    async fn transfer_encodings_other_than_one_chunked_are_refused_before_connecting() {
        let cases = [
            ("Transfer-Encoding: identity, chunked\r\n", "501"),
            ("Transfer-Encoding: gzip, chunked\r\n", "501"),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "400",
            ),
            (
                "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
                "400",
            ),
            ("Transfer-Encoding: chunked, identity\r\n", "400"),
        ];
        for (fields, status) in cases {
            let upstream = Recorder::start(b"0\r\n\r\n").await;
            let proxy = start(proxy_to(&upstream)).await;
            let request =
                format!("POST /up HTTP/1.1\r\nHost: a\r\n{fields}\r\n5\r\nhello\r\n0\r\n\r\n");
            let answer = exchange(proxy, request.as_bytes()).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{fields:?}: {answer}"
            );
            assert_eq!(upstream.connections(), 0, "{fields:?}");
        }
    }

    #[tokio::test]
    async fn control_bytes_in_chunk_extensions_are_400_and_not_forwarded() {
        for byte in ["\x00", "\x01", "\x1b", "\x7f"] {
            let upstream = Recorder::start(b"0\r\n\r\n").await;
            let proxy = start(proxy_to(&upstream)).await;
            let request = format!("{HEAD}5;a={byte}b\r\nhello\r\n0\r\n\r\n");
            let answer = exchange(proxy, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 400 "), "{byte:?}: {answer}");
            assert!(answer.contains("in chunk extension"), "{answer}");
            let got = upstream.only_request().await;
            assert!(got.ends_with("\r\n\r\n"), "{byte:?}: {got}");
        }
    }

    #[tokio::test]
    async fn a_valid_chunked_body_arrives_reframed_without_extensions_or_trailers() {
        let upstream = Recorder::start(b"0\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream)).await;
        let request = format!(
            "{HEAD}005;name=\"v\"\r\nhello\r\nB ; x\r\n world, 2nd\r\n0;last\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
        );
        let answer = exchange(proxy, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        let got = upstream.only_request().await;
        assert!(
            got.to_ascii_lowercase()
                .contains("\r\ntransfer-encoding: chunked\r\n"),
            "{got}"
        );
        assert!(
            got.ends_with("\r\n\r\n5\r\nhello\r\nb\r\n world, 2nd\r\n0\r\n\r\n"),
            "{got}"
        );
        assert!(!got.contains("6.6.6.6"), "trailers are dropped: {got}");
    }

    #[tokio::test]
    async fn a_content_length_over_the_limit_is_413_and_nothing_reaches_the_upstream() {
        let upstream = Recorder::start(b"\r\n\r\n").await;
        let proxy = start(proxy_to(&upstream)).await;
        let answer = exchange(
            proxy,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\nfirst bytes",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        // nginx answers 413 rather than 100 Continue, too.
        let answer = exchange(
            proxy,
            b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert_eq!(upstream.connections(), 0);

        // Exactly the limit goes through; one byte more does not.
        let upstream = Recorder::start(b"hello").await;
        let proxy = start(proxy_to(&upstream).client_max_body_size(5)).await;
        let over = exchange(
            proxy,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nhello!",
        )
        .await;
        assert!(over.starts_with("HTTP/1.1 413 "), "{over}");
        assert_eq!(upstream.connections(), 0);
        let fits = exchange(
            proxy,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(fits.starts_with("HTTP/1.1 200 "), "{fits}");
        assert!(upstream.only_request().await.ends_with("\r\n\r\nhello"));
    }
}
