//! A small driver for headless Chromium over the DevTools protocol, so that tests can
//! use a page as a person does: load it, type into its fields, click its buttons with
//! real mouse events, and read what it shows.
//!
//! Why this shape: one browser process per [`Browser`], started on a port of its own
//! choosing (`--remote-debugging-port=0`, read back from the `DevTools listening on`
//! line it prints), on loopback only, with a throw-away profile. One page target is
//! created and attached in flat mode, so every command goes over the browser's one
//! websocket with the page's session id; events the browser sends meanwhile are read
//! and dropped. Every wait has a deadline, and every read off the socket a timeout, so
//! a hung browser fails the test instead of blocking it. The process is killed by its
//! PID on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// How long the browser may take to start and print its DevTools address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one protocol command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Between checks of a [`Browser::wait_for`] condition. The page changes on its own
/// (it polls its API), and the protocol offers no event for "this expression is now
/// true", so a condition is re-evaluated: bounded by the caller's timeout.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Messages read while waiting for one command's answer (events in between are
/// dropped): a bound on a browser that floods events and never answers.
const MESSAGES_PER_COMMAND_MAX: usize = 100_000;

/// A headless Chromium with one page, driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    session_id: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` (a path) headless with a blank page, listening for the
    /// protocol on loopback only.
    pub fn start(chromium: &Path) -> Result<Browser> {
        let profile = tempfile::tempdir().context("create a profile directory for chromium")?;
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1600,1200",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", chromium.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        // The address comes on stderr; the rest of stderr is drained by the same
        // thread so that the browser never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::result::Result<String, String>>(1);
        std::thread::spawn(move || {
            let mut said = Vec::new();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split_once("DevTools listening on ").map(|(_, url)| url.trim().to_string()) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(url));
                    }
                } else if tx.is_some() && said.len() < 50 {
                    said.push(line);
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(said.join("\n")));
            }
        });
        let url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(url)) => url,
            Ok(Err(said)) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("chromium exited without a DevTools address; it said:\n{said}");
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("chromium printed no DevTools address within {START_TIMEOUT:?}");
            }
        };
        let addr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow!("unexpected DevTools address {url:?}"))?;
        let stream = TcpStream::connect(addr).with_context(|| format!("connect to chromium's DevTools at {addr}"))?;
        let loopback = stream.peer_addr().is_ok_and(|a| a.ip().is_loopback());
        assert!(loopback, "chromium's DevTools must listen on loopback only, not {addr}");
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).context("set a read timeout")?;
        let (ws, _) =
            tungstenite::client(url.as_str(), stream).map_err(|e| anyhow!("websocket handshake with {url}: {e}"))?;
        let mut browser = Browser { child, ws, session_id: String::new(), next_id: 0, _profile: profile };
        let target = browser.command(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().context("Target.createTarget gave no targetId")?.to_string();
        let attached =
            browser.command(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        browser.session_id = attached["sessionId"].as_str().context("Target.attachToTarget gave no sessionId")?.into();
        browser.send("Page.enable", json!({}))?;
        browser.send("Runtime.enable", json!({}))?;
        Ok(browser)
    }

    /// Sends one command (to the page's session, or to the browser when `session` is
    /// None) and returns its result.
    fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws
            .send(tungstenite::Message::text(message.to_string()))
            .with_context(|| format!("send {method} to chromium"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        for _ in 0..MESSAGES_PER_COMMAND_MAX {
            if Instant::now() > deadline {
                break;
            }
            let answer = self.ws.read().with_context(|| format!("read chromium's answer to {method}"))?;
            let tungstenite::Message::Text(text) = answer else { continue };
            let answer: Value =
                serde_json::from_str(text.as_str()).context("chromium sent a message that is not JSON")?;
            if answer["id"].as_u64() != Some(id) {
                continue; // an event, or an answer to nothing of ours
            }
            if let Some(e) = answer.get("error") {
                bail!("{method}: chromium answered {e}");
            }
            return Ok(answer["result"].clone());
        }
        bail!("{method}: no answer from chromium within {COMMAND_TIMEOUT:?}")
    }

    /// Sends one command to the page.
    fn send(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session_id.clone();
        self.command(Some(&session), method, params)
    }

    /// Loads `url` in the page and waits until its document has loaded.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        let r = self.send("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("navigate to {url}: {e}");
        }
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", COMMAND_TIMEOUT)
            .with_context(|| format!("load {url}"))
    }

    /// Evaluates `js` in the page (a promise is awaited) and returns its value as JSON
    /// (`null` for undefined); an exception thrown is an error naming it.
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        let r = self.send(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            let what = e["exception"]["description"].as_str().or(e["text"].as_str()).unwrap_or("an exception");
            bail!("evaluating {js:?} threw: {what}");
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Waits until `condition` (a JavaScript expression) is truthy in the page, checking
    /// it again and again until `timeout`; the error says what was awaited.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let js = format!("(() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()");
        loop {
            if self.eval(&js)? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the page never showed `{condition}` within {timeout:?}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Clicks the element `selector` names as a mouse would: scrolled into view, then
    /// pressed and released at the centre of its box. An element that is missing,
    /// hidden or covered by another is an error.
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let sel = json!(selector);
        let at = self.eval(&format!(
            "(() => {{
                const e = document.querySelector({sel});
                if (!e) return 'no element matches';
                e.scrollIntoView({{ block: 'center', inline: 'center' }});
                const r = e.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) return 'it is not shown';
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const top = document.elementFromPoint(x, y);
                if (!top || !(top === e || e.contains(top))) return 'it is covered by ' + (top ? top.outerHTML.slice(0, 80) : 'nothing');
                return {{ x, y }};
            }})()"
        ))?;
        if let Some(why) = at.as_str() {
            bail!("cannot click {selector}: {why}");
        }
        let (x, y) = (at["x"].as_f64().context("x")?, at["y"].as_f64().context("y")?);
        self.send("Input.dispatchMouseEvent", json!({ "type": "mouseMoved", "x": x, "y": y }))?;
        for kind in ["mousePressed", "mouseReleased"] {
            self.send(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1 }),
            )?;
        }
        Ok(())
    }

    /// Focuses the field `selector` names, empties it, and types `text` into it (as typed
    /// text, not keystrokes: an IME's commit).
    pub fn type_into(&mut self, selector: &str, text: &str) -> Result<()> {
        let sel = json!(selector);
        let found = self.eval(&format!(
            "(() => {{
                const e = document.querySelector({sel});
                if (!e) return false;
                e.scrollIntoView({{ block: 'center' }});
                e.focus();
                e.value = '';
                return document.activeElement === e;
            }})()"
        ))?;
        if found != Value::Bool(true) {
            bail!("cannot type into {selector}: no such field, or it cannot take the focus");
        }
        if !text.is_empty() {
            self.send("Input.insertText", json!({ "text": text }))?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
