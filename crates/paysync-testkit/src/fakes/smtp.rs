//! An SMTP server that speaks the real dialogue (RFC 5321): greeting, EHLO/HELO, AUTH (any
//! credentials, the user recorded), MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT;
//! out-of-order commands get 503. It records every message it accepted and can be told to
//! answer 4xx/5xx at a stage, or to stall after the final dot (an ambiguous send).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::wait;

/// Where a scripted reply replaces the normal one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// The reply to the final `.` of DATA.
    Data,
}

/// A message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The envelope sender.
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed, CRLF line ends).
    pub data: String,
}

impl Mail {
    /// The first header named `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line.trim_start());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    /// The `Message-ID` header.
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID")
    }

    /// The message's text: every part's body decoded (quoted-printable and base64 parts are
    /// decoded; others taken as they are), joined.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Parts are separated by MIME boundaries; decoding each chunk after a blank line is
        // enough for the messages a test looks into.
        for chunk in self.data.split("\r\n--") {
            let Some((head, body)) = chunk.split_once("\r\n\r\n") else {
                continue;
            };
            let head_l = head.to_ascii_lowercase();
            let decoded = if head_l.contains("content-transfer-encoding: quoted-printable") {
                decode_qp(body)
            } else if head_l.contains("content-transfer-encoding: base64") {
                decode_b64(body)
            } else {
                body.to_owned()
            };
            out.push_str(&decoded);
            out.push('\n');
        }
        out
    }
}

fn decode_qp(s: &str) -> String {
    let mut bytes = Vec::with_capacity(s.len());
    let raw = s.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'=' if raw.get(i + 1) == Some(&b'\r') && raw.get(i + 2) == Some(&b'\n') => i += 3,
            b'=' if i + 2 < raw.len() => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        bytes.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        bytes.push(b'=');
                        i += 1;
                    }
                }
            }
            b => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn decode_b64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Default)]
struct Shared {
    mails: Vec<Mail>,
    replies: VecDeque<(Stage, u16, String)>,
    stalls: usize,
    connections: usize,
    users: Vec<String>,
}

/// A fake SMTP server.
pub struct FakeSmtp {
    addr: std::net::SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSmtp {
    /// Starts one.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMTP fake");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .connections += 1;
                tokio::spawn(session(stream, s.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// `smtp://127.0.0.1:<port>` (plain: local use only).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Answers `code text` at `stage` for the next `times` transactions that reach it.
    pub fn reply_next(&self, stage: Stage, code: u16, text: &str, times: usize) {
        let mut s = self.lock();
        for _ in 0..times {
            s.replies.push_back((stage, code, text.to_owned()));
        }
    }

    /// For the next `n` messages: accept (record) the message, then never answer the final
    /// dot; the connection stays open until the client gives up.
    pub fn stall_after_data(&self, n: usize) {
        self.lock().stalls += n;
    }

    /// The messages accepted (stalled ones included: the server got them).
    pub fn messages(&self) -> Vec<Mail> {
        self.lock().mails.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// The users that authenticated.
    pub fn users(&self) -> Vec<String> {
        self.lock().users.clone()
    }

    /// Waits until at least `n` messages arrived; panics after `deadline`.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Mail> {
        wait(deadline, &format!("{n} emails"), || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn scripted(shared: &Mutex<Shared>, stage: Stage) -> Option<(u16, String)> {
    let mut s = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = s.replies.iter().position(|(st, _, _)| *st == stage)?;
    s.replies.remove(i).map(|(_, c, t)| (c, t))
}

fn path_of(arg: &str) -> Option<String> {
    let start = arg.find('<')?;
    let end = arg[start..].find('>')? + start;
    Some(arg[start + 1..end].to_owned())
}

async fn session(stream: TcpStream, shared: Arc<Mutex<Shared>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    macro_rules! reply {
        ($($t:tt)*) => {
            if write.write_all(format!("{}\r\n", format!($($t)*)).as_bytes()).await.is_err() {
                return;
            }
        };
    }
    reply!("220 fake-smtp.paysync.test ESMTP ready");
    let (mut greeted, mut from, mut to): (bool, Option<String>, Vec<String>) =
        (false, None, Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                greeted = true;
                reply!("250-fake-smtp.paysync.test greets {arg}");
                reply!("250-8BITMIME");
                reply!("250-SMTPUTF8");
                reply!("250-AUTH PLAIN LOGIN");
                reply!("250 SIZE 10485760");
            }
            "HELO" => {
                greeted = true;
                reply!("250 fake-smtp.paysync.test");
            }
            "AUTH" => {
                let mut parts = arg.split_whitespace();
                let user = match (
                    parts.next().map(str::to_ascii_uppercase).as_deref(),
                    parts.next(),
                ) {
                    (Some("PLAIN"), Some(b64)) => decode_b64(b64)
                        .split('\0')
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned(),
                    (Some("LOGIN"), _) => {
                        reply!("334 VXNlcm5hbWU6");
                        line.clear();
                        if lines.read_line(&mut line).await.is_err() {
                            return;
                        }
                        let user = decode_b64(line.trim());
                        reply!("334 UGFzc3dvcmQ6");
                        line.clear();
                        if lines.read_line(&mut line).await.is_err() {
                            return;
                        }
                        user
                    }
                    _ => {
                        reply!("504 5.5.4 Unrecognized authentication type");
                        continue;
                    }
                };
                shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .users
                    .push(user);
                reply!("235 2.7.0 Authentication successful");
            }
            "MAIL" if !greeted => reply!("503 5.5.1 Error: send HELO/EHLO first"),
            "MAIL" => match (path_of(arg), scripted(&shared, Stage::Mail)) {
                (_, Some((code, text))) => reply!("{code} {text}"),
                (Some(p), None) => {
                    from = Some(p);
                    to.clear();
                    reply!("250 2.1.0 Ok");
                }
                (None, None) => reply!("501 5.5.4 Syntax: MAIL FROM:<address>"),
            },
            "RCPT" if from.is_none() => reply!("503 5.5.1 Error: need MAIL command"),
            "RCPT" => match (path_of(arg), scripted(&shared, Stage::Rcpt)) {
                (_, Some((code, text))) => reply!("{code} {text}"),
                (Some(p), None) => {
                    to.push(p);
                    reply!("250 2.1.5 Ok");
                }
                (None, None) => reply!("501 5.5.4 Syntax: RCPT TO:<address>"),
            },
            "DATA" if to.is_empty() => reply!("503 5.5.1 Error: need RCPT command"),
            "DATA" => {
                reply!("354 End data with <CR><LF>.<CR><LF>");
                let mut data = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let l = line.trim_end_matches(['\r', '\n']);
                    if l == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(l));
                    data.push_str("\r\n");
                }
                let mail = Mail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                };
                let (stall, scripted_reply) = {
                    let mut s = shared
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let stall = s.stalls > 0;
                    if stall {
                        s.stalls -= 1;
                    }
                    let i = s.replies.iter().position(|(st, _, _)| *st == Stage::Data);
                    let r = i.and_then(|i| s.replies.remove(i)).map(|(_, c, t)| (c, t));
                    if stall || r.as_ref().is_none_or(|(c, _)| *c < 400) {
                        s.mails.push(mail);
                    }
                    (stall, r)
                };
                if stall {
                    // Hold the connection open and never answer, until the client hangs up.
                    let mut sink = String::new();
                    while matches!(lines.read_line(&mut sink).await, Ok(n) if n > 0) {
                        sink.clear();
                    }
                    return;
                }
                match scripted_reply {
                    Some((code, text)) => reply!("{code} {text}"),
                    None => {
                        let n = shared
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .mails
                            .len();
                        reply!("250 2.0.0 Ok: queued as FAKE{n:06}");
                    }
                }
            }
            "RSET" => {
                from = None;
                to.clear();
                reply!("250 2.0.0 Ok");
            }
            "NOOP" => reply!("250 2.0.0 Ok"),
            "QUIT" => {
                reply!("221 2.0.0 Bye");
                return;
            }
            _ => reply!("502 5.5.2 Error: command not recognized"),
        }
    }
}
