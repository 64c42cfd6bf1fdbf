//! The demo page in a real browser: headless Chromium opens two pages on
//! the gateway, and they chat with each other through it.
//!
//! # Why the DevTools protocol by hand
//!
//! The test needs six DevTools commands (`Target.createTarget`,
//! `Target.attachToTarget`, `Runtime.evaluate`,
//! `Emulation.setDeviceMetricsOverride`, `Page.captureScreenshot`,
//! `Browser.close`): JSON objects over one WebSocket, sent with the
//! tokio-tungstenite and serde_json the tests already build. The crates
//! that wrap the protocol cost more than they would save here:
//! chromiumoxide compiles Rust bindings generated for the whole protocol
//! (minutes of build on a 2-core CI machine that must finish in 25),
//! headless_chrome brings its own blocking WebSocket and HTTP stack, and
//! fantoccini speaks WebDriver, which needs chromedriver as a second
//! program to install and start.
//!
//! # Chromium
//!
//! `/usr/bin/chromium` (Debian's `chromium`; `.ci/run` installs it when it
//! is missing). Without it the test fails, saying so, unless
//! `WSPROXY_SKIP_BROWSER=1` is set: then it prints that it skipped. It
//! starts with a fresh profile, no proxy and a host resolver that resolves
//! nothing, so the browser only talks to 127.0.0.1.
//!
//! `WSPROXY_SCREENSHOT=FILE` saves page A as a PNG once both pages have
//! chatted: that is how `examples/gateway/demo.png` was made.

use serde_json::{json, Value};

use super::support::within;
use super::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Bound on each browser step: a first Chromium start on a loaded machine
/// takes seconds, and a page load waits for a renderer process.
const BROWSER_WAIT: Duration = Duration::from_secs(30);

/// The screenshot's viewport: small enough for a README, large enough for
/// the presence list beside the messages.
const VIEWPORT: (u32, u32) = (720, 340);

/// Chromium's path, or `None` (after saying so) when it is missing and the
/// caller asked to skip.
fn chromium_or_skip() -> Option<PathBuf> {
    let path = PathBuf::from(CHROMIUM);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("WSPROXY_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {CHROMIUM} is missing and WSPROXY_SKIP_BROWSER=1: the demo page was not tested in a browser");
        return None;
    }
    panic!(
        "{CHROMIUM} is missing: install Chromium (`apt-get update && apt-get install -y chromium`, \
         as .ci/run does), or set WSPROXY_SKIP_BROWSER=1 to skip the browser test"
    );
}

/// A running Chromium and its profile directory; killed and removed on
/// drop, so a failing test leaves neither behind.
struct Process {
    child: Child,
    dir: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's helper processes outlive the browser by a moment and
        // may still write to the profile: retry, a bounded number of times.
        for _ in 0..40 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Process {
    /// Chromium's own log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }
}

/// One headless Chromium, driven over its DevTools WebSocket.
struct Browser {
    cdp: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    process: Process,
}

/// An attached page: the DevTools session its commands go to.
struct Page(String);

/// Why a command failed: the protocol's error object, or the page's
/// exception.
type Failure = Value;

impl Browser {
    async fn launch(chromium: &Path) -> Self {
        Self::launch_with(chromium, &[]).await
    }

    /// [`launch`](Self::launch) with `extra` flags.
    async fn launch_with(chromium: &Path, extra: &[&str]) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("wsproxy-chromium-{}-{nanos}", std::process::id()));
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).expect("create the profile directory");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("create chromium.log");
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.display()),
                // Only loopback: no proxy, no name resolves, DevTools on
                // 127.0.0.1 and a port of the system's choosing, which
                // Chromium writes to DevToolsActivePort in the profile.
                "--no-proxy-server",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start chromium");
        let mut process = Process { child, dir };
        let active_port = profile.join("DevToolsActivePort");
        let url = within(BROWSER_WAIT, "Chromium's DevTools port", async {
            loop {
                // Written whole once DevTools listens: the port, then the path.
                if let Ok(text) = std::fs::read_to_string(&active_port) {
                    if let Some((port, path)) = text.trim().split_once('\n') {
                        return format!("ws://127.0.0.1:{port}{path}");
                    }
                }
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!("chromium exited with {status}: {}", process.log());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let (cdp, _) = within(
            BROWSER_WAIT,
            "the DevTools connection",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connect to DevTools");
        Self {
            cdp,
            next_id: 0,
            process,
        }
    }

    /// Sends one command (to `page`'s session, or to the browser) and waits
    /// for its answer; events that come first are dropped.
    async fn call(
        &mut self,
        page: Option<&Page>,
        method: &str,
        params: Value,
    ) -> Result<Value, Failure> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(Page(session)) = page {
            command["sessionId"] = json!(session);
        }
        self.cdp
            .send(Message::text(command.to_string()))
            .await
            .expect("send a DevTools command");
        let cdp = &mut self.cdp;
        let log = &self.process;
        within(BROWSER_WAIT, method, async {
            loop {
                let msg = match cdp.next().await {
                    Some(Ok(msg)) => msg,
                    other => panic!("DevTools connection ended: {other:?}; {}", log.log()),
                };
                let Message::Text(text) = msg else { continue };
                let answer: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
                if answer["id"] != id {
                    continue;
                }
                return match answer.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(answer["result"].clone()),
                };
            }
        })
        .await
    }

    /// Opens `url` in a new page and attaches to it.
    async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await
            .expect("create a page");
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await
            .expect("attach to the page");
        Page(
            attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        )
    }

    /// Evaluates `expression` in `page`, awaiting a promise, and returns its
    /// value as JSON.
    async fn eval(&mut self, page: &Page, expression: &str) -> Result<Value, Failure> {
        let params = json!({
            "expression": expression,
            "returnByValue": true,
            "awaitPromise": true,
        });
        let result = self.call(Some(page), "Runtime.evaluate", params).await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until `accept` takes its value (bounded). A
    /// page still loading may have no document or context yet: that is a
    /// value not yet accepted, not a failure.
    async fn wait_until(
        &mut self,
        page: &Page,
        what: &str,
        expression: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Err(Value::Null);
        let waited = tokio::time::timeout(BROWSER_WAIT, async {
            loop {
                last = self.eval(page, expression).await;
                if let Ok(value) = &last {
                    if accept(value) {
                        return value.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match waited {
            Ok(value) => value,
            Err(_) => {
                let seen = self
                    .eval(page, "location.href + ': ' + document.body?.innerText")
                    .await;
                panic!("timed out waiting for {what}; last value: {last:?}; the page: {seen:?}")
            }
        }
    }

    /// Types `text` into the page's message box and submits its form, as
    /// pressing Enter does.
    async fn say(&mut self, page: &Page, text: &str) {
        let script = format!(
            "(() => {{ document.querySelector('#text').value = {text}; \
             document.querySelector('#say').requestSubmit(); return true; }})()",
            text = json!(text)
        );
        self.eval(page, &script).await.expect("submit a message");
    }

    /// Page `page` as a PNG, at [`VIEWPORT`] size.
    async fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        let (width, height) = VIEWPORT;
        let metrics = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false,
        });
        self.call(Some(page), "Emulation.setDeviceMetricsOverride", metrics)
            .await
            .expect("set the viewport");
        let shot = self
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await
            .expect("capture a screenshot");
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot")
    }

    /// Asks Chromium to quit; the drop kills it if it does not.
    async fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({})).await;
        let _ = within(BROWSER_WAIT, "Chromium to exit", async {
            while let Ok(None) = self.process.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
}

/// The page's own name, once its WebSocket has been welcomed.
const MY_NAME: &str = "document.querySelector('#status')?.dataset.me ?? null";

/// The presence list's names, in order.
const MEMBERS: &str = "[...document.querySelectorAll('#who li')].map((li) => li.dataset.name)";

/// The message list, as `[from, text]` pairs.
const MESSAGES: &str = "[...document.querySelectorAll('#log li')].map((li) => \
     [li.querySelector('.from').textContent, li.querySelector('.text').textContent])";

#[tokio::test]
async fn two_browser_pages_chat_through_the_gateway() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let gw = Gateway::start(&[]).await;
    let url = format!("http://{}/", gw.addr);
    let mut browser = Browser::launch(&chromium).await;
    let a = browser.open(&url).await;
    let b = browser.open(&url).await;

    let is_name = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("guest-"));
    let name_a = browser
        .wait_until(&a, "page A's name", MY_NAME, is_name)
        .await;
    let name_b = browser
        .wait_until(&b, "page B's name", MY_NAME, is_name)
        .await;
    assert_ne!(name_a, name_b);

    // Who is connected: both, on both pages (in join order, which the two
    // pages' loads do not fix).
    for (page, which) in [(&a, "A"), (&b, "B")] {
        let members = browser
            .wait_until(
                page,
                &format!("two users in page {which}'s presence list"),
                MEMBERS,
                |v| v.as_array().is_some_and(|m| m.len() == 2),
            )
            .await;
        let members = members.as_array().expect("an array");
        assert!(
            members.contains(&name_a) && members.contains(&name_b),
            "page {which}: {members:?}"
        );
    }

    let said = |from: &Value, text: &str| json!([from, text]);
    let heard =
        |message: Value| move |v: &Value| v.as_array().is_some_and(|m| m.contains(&message));
    browser.say(&a, "hi, anyone here?").await;
    browser
        .wait_until(
            &b,
            "A's message on page B",
            MESSAGES,
            heard(said(&name_a, "hi, anyone here?")),
        )
        .await;
    browser.say(&b, "yes: two tabs, one gateway").await;
    browser
        .wait_until(
            &a,
            "B's message on page A",
            MESSAGES,
            heard(said(&name_b, "yes: two tabs, one gateway")),
        )
        .await;
    browser
        .say(&a, "and every frame went through wsproxy")
        .await;
    let on_a = browser
        .wait_until(
            &a,
            "A's own message on page A",
            MESSAGES,
            heard(said(&name_a, "and every frame went through wsproxy")),
        )
        .await;
    // The room keeps order: A sees the whole conversation as it went.
    assert_eq!(
        on_a,
        json!([
            said(&name_a, "hi, anyone here?"),
            said(&name_b, "yes: two tabs, one gateway"),
            said(&name_a, "and every frame went through wsproxy"),
        ])
    );

    let png = browser.screenshot(&a).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if let Some(path) = std::env::var_os("WSPROXY_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
        eprintln!("screenshot: {} bytes in {path:?}", png.len());
    }
    browser.close().await;
}

/// Chromium opens its WebSocket over HTTP/2 (RFC 8441) on the connection
/// that loaded the page, once the gateway offers `h2` in ALPN and sends
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
#[cfg(feature = "h2")]
#[tokio::test]
async fn chromium_opens_its_websocket_over_h2_on_the_page_s_connection() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let (cert, key, dir) = super::h2::certificate_files("browser");
    let mut gw = Gateway::start(&["--tls-cert", &cert, "--tls-key", &key, "--access-log"]).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(gw.banner.contains("(h2, http/1.1)"), "{}", gw.banner);
    let url = format!("https://{}/", gw.addr);
    // The certificate is self-signed; the test trusts it this way.
    let mut browser = Browser::launch_with(&chromium, &["--ignore-certificate-errors"]).await;
    let page = browser.open(&url).await;
    let is_name = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("guest-"));
    browser
        .wait_until(&page, "the page's name", MY_NAME, is_name)
        .await;
    let protocol = browser
        .eval(
            &page,
            "performance.getEntriesByType('navigation')[0].nextHopProtocol",
        )
        .await
        .expect("the page's protocol");
    assert_eq!(protocol, json!("h2"), "the page did not load over h2");
    browser.close().await;

    // One line per stream once it ends: the page's GET, then the tunnel,
    // answered 200 (an HTTP/1.1 upgrade would log 101) from the same
    // client connection.
    let mut lines = Vec::new();
    let tunnel = within(BROWSER_WAIT, "the tunnel's access log line", async {
        loop {
            let line = gw.next_line().await.expect("an access log line");
            if line.contains("outcome=tunneled") {
                return line;
            }
            lines.push(line);
        }
    })
    .await;
    assert!(tunnel.contains("status=200"), "{tunnel}");
    let page_line = lines
        .iter()
        .find(|l| l.contains("outcome=proxied"))
        .unwrap_or_else(|| panic!("no line for the page: {lines:?}"));
    assert_eq!(field(page_line, "client"), field(&tunnel, "client"));
}
