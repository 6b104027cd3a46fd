//! The SMTP bounce receiver: a small SMTP server (no TLS, no AUTH) that
//! accepts mail only for `bounce+{token}@bounce_domain` with a genuine
//! callback token, reads DSN bounces and ARF complaints, and applies them:
//! a hard bounce or a complaint suppresses the address and marks the message.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herald_domain::token::TokenKind;
use herald_storage::tracking;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::dsn::read_report;
use crate::email::token_from_verp;
use crate::now_ms;
use crate::state::{AppState, SmtpSettings};

/// A command line longer than this is refused (RFC 5321 allows 512 octets).
const MAX_COMMAND_LINE: usize = 4096;
/// Recipients of one message at most (RFC 5321's minimum is 100).
const MAX_RECIPIENTS: usize = 100;
/// How long sessions may finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the accept loop waits after an accept error (out of file
/// descriptors) before trying again, having freed a session.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a refused newcomer gets to read its 421.
const BUSY_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line (without its CR LF), keeping at most `max` bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let mut overflow = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() && !overflow {
                Line::Eof
            } else if overflow {
                Line::TooLong
            } else {
                Line::Text(buf)
            });
        }
        let (chunk, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..=i], true),
            None => (avail, false),
        };
        let n = chunk.len();
        if buf.len() + n > max + 2 {
            overflow = true;
        } else {
            buf.extend_from_slice(chunk);
        }
        r.consume(n);
        if done {
            if overflow {
                return Ok(Line::TooLong);
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            return Ok(Line::Text(buf));
        }
    }
}

/// Resolves once `rx` holds true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// One open session, as the accept loop sees it.
struct Session {
    id: u64,
    /// When the session last moved mail (opened, MAIL, RCPT, DATA), on the table's clock.
    progress_since: AtomicU64,
    /// Inside DATA: never shed, the message is nearly here.
    in_data: AtomicBool,
    /// Asks the session's task to close it.
    close: Notify,
}

/// Every open session.
struct Sessions {
    open: Mutex<HashMap<u64, Arc<Session>>>,
    start: Instant,
}

impl Sessions {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Session>>> {
        // A panic while holding the lock leaves only timestamps behind: go on.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the session longest without mail progress (other than `except`,
    /// and not inside DATA) to close; false when there is none.
    fn shed_oldest_idle(&self, except: u64) -> bool {
        let m = self.lock();
        let victim = m
            .values()
            .filter(|s| s.id != except && !s.in_data.load(Ordering::Acquire))
            .min_by_key(|s| s.progress_since.load(Ordering::Acquire));
        match victim {
            Some(s) => {
                s.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves SMTP on `listener` until `shutdown` turns true. Every connection
/// is accepted: past [`SmtpSettings::max_sessions`] the session longest
/// without mail progress is closed, so sessions that only send NOOP cannot
/// keep a bounce out.
pub(crate) async fn serve_smtp(
    listener: TcpListener,
    st: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let settings = st.config().smtp.clone().unwrap_or_default();
    let table = Arc::new(Sessions {
        open: Mutex::new(HashMap::new()),
        start: Instant::now(),
    });
    let mut sessions = JoinSet::new();
    let mut next_id: u64 = 0;
    let mut accept_errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut shutdown) => break,
        };
        match accepted {
            Ok((sock, _)) => {
                next_id += 1;
                let id = next_id;
                let me = Arc::new(Session {
                    id,
                    progress_since: AtomicU64::new(table.now()),
                    in_data: AtomicBool::new(false),
                    close: Notify::new(),
                });
                let open = {
                    let mut m = table.lock();
                    m.insert(id, me.clone());
                    m.len()
                };
                if open > settings.max_sessions.max(1) && !table.shed_oldest_idle(id) {
                    table.lock().remove(&id);
                    sessions.spawn(async move {
                        let mut sock = sock;
                        let _ = timeout(
                            BUSY_REPLY_TIMEOUT,
                            sock.write_all(b"421 4.3.2 too busy, try again later\r\n"),
                        )
                        .await;
                    });
                    continue;
                }
                let (st, settings, table) = (st.clone(), settings.clone(), table.clone());
                sessions.spawn(async move {
                    let run = timeout(settings.session_timeout, session(sock, &st, &settings, &me, &table));
                    tokio::select! {
                        r = run => match r {
                            Ok(Err(e)) => tracing::debug!(error = %e, "an SMTP session ended with an error"),
                            Err(_) => tracing::debug!("an SMTP session ran out of time"),
                            Ok(Ok(())) => {}
                        },
                        () = shed(&me) => tracing::debug!("an idle SMTP session was closed for a newcomer"),
                    }
                    table.lock().remove(&me.id);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: free one, then go on.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "accepting an SMTP connection failed");
                }
                table.shed_oldest_idle(0);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        while sessions.try_join_next().is_some() {}
    }
    let _ = timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    sessions.abort_all();
    Ok(())
}

/// Resolves when the session is asked to close outside DATA.
async fn shed(me: &Session) {
    loop {
        me.close.notified().await;
        if !me.in_data.load(Ordering::Acquire) {
            return;
        }
    }
}

/// The address inside `TO:<...>` or `FROM:<...>`, without its parameters.
fn path_arg<'a>(arg: &'a str, prefix: &str) -> Option<&'a str> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        return inner.split_once('>').map(|(a, _)| a);
    }
    rest.split_whitespace().next()
}

/// What a recipient address is to the receiver.
#[derive(Debug, PartialEq, Eq)]
enum Recipient {
    /// A bounce address naming this message.
    Bounce(i64),
    /// `postmaster`, which RFC 5321 requires accepting; its mail is read and dropped.
    Postmaster,
    /// Anything else.
    Refused,
}

fn recipient(st: &AppState, settings: &SmtpSettings, address: &str) -> Recipient {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return if address.eq_ignore_ascii_case("postmaster") {
            Recipient::Postmaster
        } else {
            Recipient::Refused
        };
    };
    if let Some(d) = &settings.bounce_domain
        && !domain.eq_ignore_ascii_case(d)
    {
        return Recipient::Refused;
    }
    if local.eq_ignore_ascii_case("postmaster") {
        return Recipient::Postmaster;
    }
    token_from_verp(address)
        .and_then(|t| st.inner.signer.verify(t))
        .filter(|c| c.kind == TokenKind::Callback)
        .map_or(Recipient::Refused, |c| Recipient::Bounce(c.message_id))
}

async fn session(
    sock: TcpStream,
    st: &AppState,
    s: &SmtpSettings,
    me: &Session,
    table: &Sessions,
) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(format!("220 {} ESMTP herald bounce receiver\r\n", s.hostname).as_bytes())
        .await?;
    let mut in_mail = false;
    let mut rcpts: Vec<Recipient> = Vec::new();
    let mut idle_commands = 0usize;
    loop {
        let line = match timeout(s.idle_timeout, read_line(&mut r, MAX_COMMAND_LINE)).await {
            Err(_) => {
                w.write_all(b"421 4.4.2 idle too long, closing\r\n").await?;
                return Ok(());
            }
            Ok(Ok(Line::Eof)) => return Ok(()),
            Ok(Ok(Line::TooLong)) => {
                w.write_all(b"500 5.5.2 line too long\r\n").await?;
                continue;
            }
            Ok(Ok(Line::Text(l))) => String::from_utf8_lossy(&l).into_owned(),
            Ok(Err(e)) => return Err(e),
        };
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let verb = verb.to_ascii_uppercase();
        let rcpts_before = rcpts.len();
        let reply: String = match verb.as_str() {
            "EHLO" => format!(
                "250-{}\r\n250-SIZE {}\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                s.hostname, s.max_message_bytes
            ),
            "HELO" => format!("250 {}\r\n", s.hostname),
            "MAIL" => match path_arg(arg, "FROM:") {
                Some(_) => {
                    in_mail = true;
                    rcpts.clear();
                    "250 2.1.0 OK\r\n".into()
                }
                None => "501 5.5.4 syntax: MAIL FROM:<address>\r\n".into(),
            },
            "RCPT" if !in_mail => "503 5.5.1 MAIL first\r\n".into(),
            "RCPT" if rcpts.len() >= MAX_RECIPIENTS => "452 4.5.3 too many recipients\r\n".into(),
            "RCPT" => match path_arg(arg, "TO:").map(|a| recipient(st, s, a)) {
                None => "501 5.5.4 syntax: RCPT TO:<address>\r\n".into(),
                Some(Recipient::Refused) => {
                    st.inner
                        .metrics
                        .smtp_refused_recipients
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    "550 5.1.1 no such mailbox: only bounce addresses are accepted here\r\n".into()
                }
                Some(rc) => {
                    rcpts.push(rc);
                    "250 2.1.5 OK\r\n".into()
                }
            },
            "DATA" if rcpts.is_empty() => "554 5.5.1 no valid recipients\r\n".into(),
            "DATA" => {
                w.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                me.in_data.store(true, Ordering::Release);
                let data = read_data(&mut r, s).await;
                me.in_data.store(false, Ordering::Release);
                me.progress_since.store(table.now(), Ordering::Release);
                let reply = match data? {
                    None => return Ok(()),
                    Some(None) => "552 5.3.4 message too big\r\n".to_string(),
                    Some(Some(data)) => deliver(st, &rcpts, &data).await,
                };
                in_mail = false;
                rcpts.clear();
                reply
            }
            "RSET" => {
                in_mail = false;
                rcpts.clear();
                "250 2.0.0 OK\r\n".into()
            }
            "NOOP" => "250 2.0.0 OK\r\n".into(),
            "VRFY" => "252 2.5.0 cannot verify\r\n".into(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 command not implemented\r\n".into(),
        };
        // MAIL, an accepted RCPT and DATA move mail; everything else is idle talk.
        let moved = (verb == "MAIL" && reply.starts_with("250"))
            || rcpts.len() > rcpts_before
            || verb == "DATA";
        if moved {
            me.progress_since.store(table.now(), Ordering::Release);
        } else {
            idle_commands += 1;
            if idle_commands > s.max_idle_commands {
                w.write_all(b"421 4.7.0 too many commands without mail, closing\r\n")
                    .await?;
                return Ok(());
            }
        }
        w.write_all(reply.as_bytes()).await?;
    }
}

/// Reads a DATA section up to its lone dot: `None` at end of stream,
/// `Some(None)` when it was too large (read to its end, then dropped).
async fn read_data<R: AsyncBufRead + Unpin>(
    r: &mut R,
    s: &SmtpSettings,
) -> io::Result<Option<Option<Vec<u8>>>> {
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let line = match timeout(s.idle_timeout, read_line(r, s.max_message_bytes)).await {
            Err(_) | Ok(Ok(Line::Eof)) => return Ok(None),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Line::TooLong)) => {
                too_big = true;
                continue;
            }
            Ok(Ok(Line::Text(l))) => l,
        };
        if line == b"." {
            return Ok(Some((!too_big).then_some(data)));
        }
        // Dot-stuffing (RFC 5321 4.5.2): a leading dot was doubled.
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + line.len() + 2 > s.max_message_bytes {
            too_big = true;
            data.clear();
        }
        if !too_big {
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
    }
}

/// Applies a received message to each message its recipients name; the SMTP reply.
async fn deliver(st: &AppState, rcpts: &[Recipient], data: &[u8]) -> String {
    let report = read_report(data);
    let outcome = report.feedback.map_or("unrecognised", |f| f.as_str());
    st.inner.metrics.count_smtp(outcome);
    let Some(feedback) = report.feedback else {
        // Auto-replies and other mail to the bounce address: accepted, not recorded.
        return "250 2.0.0 OK (not a report; dropped)\r\n".into();
    };
    let ids: BTreeSet<i64> = rcpts
        .iter()
        .filter_map(|r| match r {
            Recipient::Bounce(id) => Some(*id),
            _ => None,
        })
        .collect();
    for id in ids {
        let msg = match tracking::message_info(&st.inner.db, id).await {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading a bounced message failed");
                return "451 4.3.0 temporary failure, try again later\r\n".into();
            }
        };
        if let Err(e) = tracking::apply_email_feedback(
            &st.inner.db,
            &msg,
            feedback,
            "smtp",
            report.detail.clone(),
            now_ms(),
        )
        .await
        {
            tracing::error!(error = %e, "recording a bounce failed");
            return "451 4.3.0 temporary failure, try again later\r\n".into();
        }
    }
    "250 2.0.0 OK\r\n".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_with_or_without_brackets() {
        assert_eq!(path_arg("FROM:<>", "FROM:"), Some(""));
        assert_eq!(
            path_arg("to:<bounce+x@b.example> NOTIFY=NEVER", "TO:"),
            Some("bounce+x@b.example")
        );
        assert_eq!(path_arg("TO: a@b.example", "TO:"), Some("a@b.example"));
        assert_eq!(path_arg("TO", "TO:"), None);
    }

    #[tokio::test]
    async fn long_lines_are_refused_not_buffered() {
        let input = format!("{}\r\nok\r\n", "x".repeat(10_000));
        let mut r = BufReader::new(input.as_bytes());
        assert!(matches!(
            read_line(&mut r, 100).await.unwrap(),
            Line::TooLong
        ));
        assert!(matches!(read_line(&mut r, 100).await.unwrap(), Line::Text(l) if l == b"ok"));
        assert!(matches!(read_line(&mut r, 100).await.unwrap(), Line::Eof));
    }
}
