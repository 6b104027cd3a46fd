//! The SMTP sink: a loopback RFC 5321 server that records every message it accepts.
//!
//! One tokio task accepts, one task serves each connection; replies are batched and
//! flushed only when the client has nothing more buffered (so PIPELINING is cheap),
//! and every accepted socket has `TCP_NODELAY` set. Tests steer its answers with
//! [`SmtpSinkConfig::reject_rcpt`] and [`SmtpSinkConfig::after_data`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest message the sink accepts, advertised as `SIZE`.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Longest command line (RFC 5321 says 512; AUTH responses can be longer).
const MAX_COMMAND_LINE: u64 = 16 * 1024;
/// Longest DATA line read in one piece; longer lines are read in several.
const MAX_DATA_LINE: u64 = 1024 * 1024;
/// Recipients accepted in one transaction (RFC 5321 asks for at least 100).
const MAX_RECIPIENTS: usize = 1000;
/// Size of each connection's read and write buffers.
const IO_BUFFER: usize = 64 * 1024;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The name the sink gives itself in its greeting and EHLO reply.
const SERVER_NAME: &str = "herald-sink";

/// One message the sink accepted: its envelope and its content, dot-unstuffed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address (empty for the null sender `<>`).
    pub mail_from: String,
    /// The accepted `RCPT TO` addresses, in order.
    pub rcpt_to: Vec<String>,
    /// The message as received after `DATA`: headers, blank line, body.
    pub data: Vec<u8>,
}

/// How the sink answers once a message's content has arrived.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataReply {
    /// Record the message and answer `250 ... queued as ID`.
    #[default]
    Accept,
    /// Answer with this code and text; the message is recorded only for a 2xx or 3xx code.
    Reply(u16, String),
    /// Record the message, then close the connection without answering.
    HangUp,
    /// Record the message, then never answer (until the client goes away).
    Stall,
    /// Record the message, then send this line as it is (a reply that is not SMTP, say).
    Raw(String),
}

/// How an [`SmtpSink`] listens and answers.
#[derive(Debug, Clone)]
pub struct SmtpSinkConfig {
    /// Where to listen; the default is `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// Keep each message's content; `false` only counts them, to keep memory bounded.
    pub keep_messages: bool,
    /// `(substring of address, code, text)`: a matching `RCPT TO` gets this answer instead of 250.
    pub reject_rcpt: Vec<(String, u16, String)>,
    /// `(user, password)`: advertise `AUTH PLAIN LOGIN` and require it before `MAIL`.
    pub credentials: Option<(String, String)>,
    /// The answer to a message's content.
    pub after_data: DataReply,
}

impl Default for SmtpSinkConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            keep_messages: true,
            reject_rcpt: Vec::new(),
            credentials: None,
            after_data: DataReply::Accept,
        }
    }
}

/// A running SMTP server on loopback; stops on [`SmtpSink::shutdown`] or drop.
#[derive(Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    config: SmtpSinkConfig,
    mails: Mutex<Vec<ReceivedMail>>,
    /// Messages per recipient, kept even when the messages are not: duplicates show here.
    per_recipient: Mutex<std::collections::HashMap<String, u32>>,
    count: AtomicUsize,
    connections: AtomicUsize,
    /// Refuse every login with `535` (a changed password), until cleared.
    refuse_credentials: AtomicBool,
}

impl SmtpSink {
    /// Binds `config.bind` and starts serving on the current tokio runtime.
    pub async fn start(config: SmtpSinkConfig) -> io::Result<SmtpSink> {
        let listener = TcpListener::bind(config.bind).await?;
        Self::serve(listener, config)
    }

    /// Serves on a listener the caller already bound (must run inside a tokio runtime).
    pub fn serve(listener: TcpListener, config: SmtpSinkConfig) -> io::Result<SmtpSink> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            mails: Mutex::new(Vec::new()),
            per_recipient: Mutex::new(std::collections::HashMap::new()),
            count: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            refuse_credentials: AtomicBool::new(false),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(SmtpSink {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// While `refuse` holds, every `AUTH` is answered `535 5.7.8` (as for a
    /// changed password); clearing it is the credential fixed.
    pub fn set_refuse_credentials(&self, refuse: bool) {
        self.shared
            .refuse_credentials
            .store(refuse, Ordering::SeqCst);
    }

    /// The messages received so far (empty when `keep_messages` is off).
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared
            .mails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many messages each recipient received so far (kept even when messages are not).
    pub fn per_recipient(&self) -> std::collections::HashMap<String, u32> {
        self.shared
            .per_recipient
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many messages were received so far (counted even when not kept).
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every connection and waits until they are gone.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The accept task owns the connection tasks: once it is gone, so are they.
            let _ = task.await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        if let Err(error) = serve_connection(stream, &shared).await {
                            tracing::debug!(%peer, %error, "smtp sink connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "smtp sink accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    // Without this, a client that writes `\r\n.\r\n` apart from the body waits for a delayed ACK.
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut session = Session {
        shared,
        reader: BufReader::with_capacity(IO_BUFFER, read),
        writer: BufWriter::with_capacity(IO_BUFFER, write),
        line: Vec::with_capacity(1024),
        greeted: false,
        authenticated: shared.config.credentials.is_none(),
        mail_from: None,
        rcpt_to: Vec::new(),
    };
    session
        .reply(&format!("220 {SERVER_NAME} ESMTP ready"))
        .await?;
    session.run().await
}

/// Whether the connection goes on after a command.
enum Next {
    Continue,
    Close,
}

struct Session<'a> {
    shared: &'a Shared,
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    line: Vec<u8>,
    greeted: bool,
    authenticated: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl Session<'_> {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(line) = self.read_command().await? else {
                return Ok(());
            };
            let (verb, arg) = match line.split_once(' ') {
                Some((verb, arg)) => (verb, arg.trim()),
                None => (line.as_str(), ""),
            };
            let next = match verb.to_ascii_uppercase().as_str() {
                "EHLO" => self.ehlo(arg).await?,
                "HELO" => self.helo(arg).await?,
                "AUTH" => self.auth(arg).await?,
                "MAIL" => self.mail(arg).await?,
                "RCPT" => self.rcpt(arg).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 Ok").await?;
                    Next::Continue
                }
                "NOOP" => {
                    self.reply("250 2.0.0 Ok").await?;
                    Next::Continue
                }
                "VRFY" => {
                    self.reply("252 2.1.5 Cannot verify, but will try").await?;
                    Next::Continue
                }
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    self.writer.flush().await?;
                    Next::Close
                }
                _ => {
                    self.reply("500 5.5.2 Command not recognized").await?;
                    Next::Continue
                }
            };
            if let Next::Close = next {
                return Ok(());
            }
        }
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    async fn ehlo(&mut self, domain: &str) -> io::Result<Next> {
        if domain.is_empty() {
            self.reply("501 5.5.4 EHLO needs a domain").await?;
            return Ok(Next::Continue);
        }
        self.reset();
        self.greeted = true;
        let mut lines = vec![
            format!("{SERVER_NAME} greets {domain}"),
            "PIPELINING".to_owned(),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            format!("SIZE {MAX_MESSAGE_BYTES}"),
        ];
        if self.shared.config.credentials.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        let last = lines.len() - 1;
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            text.push_str(&format!("250{sep}{line}\r\n"));
        }
        self.writer.write_all(text.as_bytes()).await?;
        Ok(Next::Continue)
    }

    async fn helo(&mut self, domain: &str) -> io::Result<Next> {
        if domain.is_empty() {
            self.reply("501 5.5.4 HELO needs a domain").await?;
            return Ok(Next::Continue);
        }
        self.reset();
        self.greeted = true;
        self.reply(&format!("250 {SERVER_NAME}")).await?;
        Ok(Next::Continue)
    }

    async fn auth(&mut self, arg: &str) -> io::Result<Next> {
        let Some((user, password)) = self.shared.config.credentials.clone() else {
            self.reply("502 5.5.1 AUTH not available").await?;
            return Ok(Next::Continue);
        };
        if !self.greeted || self.authenticated || self.mail_from.is_some() {
            self.reply("503 5.5.1 AUTH not allowed now").await?;
            return Ok(Next::Continue);
        }
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        let answer = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(response) => Some(response),
                    None => self.challenge("").await?,
                };
                response.map(|r| {
                    decode_base64(&r).map(|plain| {
                        // authzid NUL authcid NUL passwd
                        let mut fields = plain.split('\0').skip(1);
                        fields.next() == Some(user.as_str())
                            && fields.next() == Some(password.as_str())
                    })
                })
            }
            "LOGIN" => {
                let given_user = match initial {
                    Some(response) => Some(response),
                    None => self.challenge("VXNlcm5hbWU6").await?,
                };
                match given_user {
                    None => None,
                    Some(given_user) => self.challenge("UGFzc3dvcmQ6").await?.map(|given_pass| {
                        Some(
                            decode_base64(&given_user)? == user
                                && decode_base64(&given_pass)? == password,
                        )
                    }),
                }
            }
            _ => {
                self.reply("504 5.5.4 Mechanism not supported").await?;
                return Ok(Next::Continue);
            }
        };
        match answer {
            None => self.reply("501 5.7.0 Authentication cancelled").await?,
            Some(None) => self.reply("501 5.5.2 Cannot decode response").await?,
            Some(Some(true)) if !self.shared.refuse_credentials.load(Ordering::SeqCst) => {
                self.authenticated = true;
                self.reply("235 2.7.0 Authentication successful").await?;
            }
            Some(Some(_)) => {
                self.reply("535 5.7.8 Authentication credentials invalid")
                    .await?;
            }
        }
        Ok(Next::Continue)
    }

    /// Sends a `334` challenge and reads the answer; `None` when the client cancels with `*`.
    async fn challenge(&mut self, prompt: &str) -> io::Result<Option<String>> {
        self.reply(&format!("334 {prompt}")).await?;
        match self.read_command().await? {
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Some(line) if line.trim() == "*" => Ok(None),
            Some(line) => Ok(Some(line.trim().to_owned())),
        }
    }

    async fn mail(&mut self, arg: &str) -> io::Result<Next> {
        if !self.greeted {
            self.reply("503 5.5.1 Send EHLO or HELO first").await?;
        } else if !self.authenticated {
            self.reply("530 5.7.0 Authentication required").await?;
        } else if self.mail_from.is_some() {
            self.reply("503 5.5.1 Nested MAIL command").await?;
        } else if let Some((address, params)) = path_argument(arg, "FROM:") {
            let size = params.split_whitespace().find_map(|p| {
                let (key, value) = p.split_once('=')?;
                key.eq_ignore_ascii_case("SIZE")
                    .then(|| value.parse::<usize>().ok())
                    .flatten()
            });
            if size.is_some_and(|size| size > MAX_MESSAGE_BYTES) {
                self.reply("552 5.3.4 Message too big").await?;
            } else {
                self.mail_from = Some(address);
                self.reply("250 2.1.0 Ok").await?;
            }
        } else {
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?;
        }
        Ok(Next::Continue)
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<Next> {
        if self.mail_from.is_none() {
            self.reply("503 5.5.1 Need MAIL before RCPT").await?;
            return Ok(Next::Continue);
        }
        let Some((address, _params)) = path_argument(arg, "TO:").filter(|(a, _)| !a.is_empty())
        else {
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await?;
            return Ok(Next::Continue);
        };
        let shared = self.shared;
        if let Some((_, code, text)) = shared
            .config
            .reject_rcpt
            .iter()
            .find(|(needle, _, _)| address.contains(needle.as_str()))
        {
            self.reply(&format!("{code} {text}")).await?;
        } else if self.rcpt_to.len() >= MAX_RECIPIENTS {
            self.reply("452 4.5.3 Too many recipients").await?;
        } else {
            self.rcpt_to.push(address);
            self.reply("250 2.1.5 Ok").await?;
        }
        Ok(Next::Continue)
    }

    async fn data(&mut self) -> io::Result<Next> {
        let Some(mail_from) = self.mail_from.clone() else {
            self.reply("503 5.5.1 Need MAIL before DATA").await?;
            return Ok(Next::Continue);
        };
        if self.rcpt_to.is_empty() {
            self.reply("554 5.5.1 No valid recipients").await?;
            return Ok(Next::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let Some(data) = self.read_data().await? else {
            self.reset();
            self.reply("552 5.3.4 Message too big").await?;
            return Ok(Next::Continue);
        };
        let mail = ReceivedMail {
            mail_from,
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data,
        };
        self.reset();
        let shared = self.shared;
        match &shared.config.after_data {
            DataReply::Accept => {
                let id = self.record(mail);
                self.reply(&format!("250 2.0.0 Ok: queued as {id}")).await?;
                Ok(Next::Continue)
            }
            DataReply::Reply(code, text) => {
                if *code < 400 {
                    self.record(mail);
                }
                self.reply(&format!("{code} {text}")).await?;
                Ok(Next::Continue)
            }
            DataReply::HangUp => {
                self.record(mail);
                Ok(Next::Close)
            }
            DataReply::Raw(line) => {
                self.record(mail);
                self.reply(line).await?;
                Ok(Next::Continue)
            }
            DataReply::Stall => {
                self.record(mail);
                // Swallow whatever comes until the client gives up and closes.
                let mut sink = tokio::io::sink();
                tokio::io::copy_buf(&mut self.reader, &mut sink).await?;
                Ok(Next::Close)
            }
        }
    }

    /// Reads message content up to the lone `.` line, unstuffing dots; `None` when too big.
    async fn read_data(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut data = Vec::new();
        let mut too_big = false;
        let mut at_line_start = true;
        loop {
            let n = self.read_line(MAX_DATA_LINE).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during DATA",
                ));
            }
            let line = self.line.as_slice();
            let mut content = line;
            if at_line_start {
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                if line.first() == Some(&b'.') {
                    content = &line[1..];
                }
            }
            at_line_start = line.last() == Some(&b'\n');
            if data.len() + content.len() > MAX_MESSAGE_BYTES {
                too_big = true;
            } else if !too_big {
                data.extend_from_slice(content);
            }
        }
        Ok((!too_big).then_some(data))
    }

    /// Records an accepted message and returns its queue id.
    fn record(&self, mail: ReceivedMail) -> String {
        let n = self.shared.count.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut per = self
                .shared
                .per_recipient
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for r in &mail.rcpt_to {
                *per.entry(r.clone()).or_insert(0) += 1;
            }
        }
        if self.shared.config.keep_messages {
            self.shared
                .mails
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(mail);
        }
        format!("{n:08X}")
    }

    /// Reads one command line without its line ending; `None` at end of stream.
    async fn read_command(&mut self) -> io::Result<Option<String>> {
        let n = self.read_line(MAX_COMMAND_LINE).await?;
        if n == 0 {
            return Ok(None);
        }
        if self.line.last() != Some(&b'\n') {
            self.reply("500 5.5.6 Line too long").await?;
            self.writer.flush().await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "command line too long",
            ));
        }
        let text = String::from_utf8_lossy(&self.line);
        Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
    }

    /// Reads up to `limit` bytes of one line into `self.line`, flushing replies first if the
    /// client has nothing more buffered (it is waiting for them).
    async fn read_line(&mut self, limit: u64) -> io::Result<usize> {
        if self.reader.buffer().is_empty() {
            self.writer.flush().await?;
        }
        self.line.clear();
        (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .await
    }

    /// Queues one reply line; it goes out at the next flush.
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await
    }
}

/// Parses `FROM:<address> PARAMS` (the prefix matched case-insensitively) into address and params.
fn path_argument<'a>(arg: &'a str, prefix: &str) -> Option<(String, &'a str)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        Some((inner[..end].to_owned(), inner[end + 1..].trim()))
    } else {
        let end = rest.find(' ').unwrap_or(rest.len());
        Some((rest[..end].to_owned(), rest[end..].trim()))
    }
}

fn decode_base64(text: &str) -> Option<String> {
    let bytes = BASE64.decode(text.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_argument_reads_brackets_params_and_null_sender() {
        assert_eq!(
            path_argument("FROM:<a@b.c> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some(("a@b.c".to_owned(), "SIZE=10 BODY=8BITMIME"))
        );
        assert_eq!(
            path_argument("from: <>", "FROM:"),
            Some((String::new(), ""))
        );
        assert_eq!(
            path_argument("To:x@y.z", "TO:"),
            Some(("x@y.z".to_owned(), ""))
        );
        assert_eq!(path_argument("FROM <a@b.c>", "FROM:"), None);
        assert_eq!(path_argument("TO:<unclosed", "TO:"), None);
    }
}
