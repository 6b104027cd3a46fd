//! The SMTP sink driven by a raw, scripted client: replies, dot-unstuffing, AUTH,
//! rejections, pipelining and shutdown.

use std::time::Duration;

use herald_sinks::{DataReply, SmtpSink, SmtpSinkConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(sink: &SmtpSink) -> Client {
        let stream = TcpStream::connect(sink.addr()).await.unwrap();
        let (r, w) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(r),
            writer: w,
        };
        assert!(client.reply().await.starts_with("220 "));
        client
    }

    /// Reads one (possibly multi-line) reply and returns it whole.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.unwrap();
            assert!(n > 0, "connection closed; so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') || line.len() <= 5 {
                return all;
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    async fn cmd(&mut self, text: &str) -> String {
        self.send(&format!("{text}\r\n")).await;
        self.reply().await
    }
}

#[tokio::test]
async fn full_conversation_records_messages_with_dots_unstuffed() {
    let sink = SmtpSink::start(SmtpSinkConfig::default()).await.unwrap();
    let mut c = Client::connect(&sink).await;
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("503"));
    let ehlo = c.cmd("EHLO client.test").await;
    for ext in ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE "] {
        assert!(ehlo.contains(ext), "{ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.cmd("DATA").await.starts_with("503"));
    assert!(
        c.cmd("MAIL FROM:<bounce+1@x.test> BODY=8BITMIME")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<r1@y.test>").await.starts_with("250"));
    assert!(c.cmd("rcpt to:<r2@y.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: hi\r\n\r\n..leading dot\r\nline\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.cmd("NOOP").await.starts_with("250"));

    // A second message on the same connection, after an RSET.
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<r3@y.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.cmd("QUIT").await.starts_with("221"));

    let got = sink.received();
    assert_eq!(sink.count(), 2);
    assert_eq!(got[0].mail_from, "bounce+1@x.test");
    assert_eq!(got[0].rcpt_to, vec!["r1@y.test", "r2@y.test"]);
    assert_eq!(got[0].data, b"Subject: hi\r\n\r\n.leading dot\r\nline\r\n");
    assert_eq!(got[1].mail_from, "");
    assert_eq!(got[1].data, b"\r\n");
    assert_eq!(sink.connections(), 1);
    sink.shutdown().await;
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let sink = SmtpSink::start(SmtpSinkConfig::default()).await.unwrap();
    let mut c = Client::connect(&sink).await;
    c.send("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("250-"));
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    c.send("x\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("221"));
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn rejects_chosen_recipients_with_chosen_codes() {
    let sink = SmtpSink::start(SmtpSinkConfig {
        reject_rcpt: vec![
            ("dead".into(), 550, "5.1.1 No such user".into()),
            ("busy".into(), 451, "4.3.0 Try later".into()),
        ],
        ..SmtpSinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&sink).await;
    c.cmd("HELO c").await;
    c.cmd("MAIL FROM:<a@x>").await;
    assert_eq!(
        c.cmd("RCPT TO:<dead@y>").await,
        "550 5.1.1 No such user\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<busy@y>").await, "451 4.3.0 Try later\r\n");
    assert!(c.cmd("DATA").await.starts_with("554"));
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn auth_plain_and_login_are_checked_and_required() {
    let sink = SmtpSink::start(SmtpSinkConfig {
        credentials: Some(("user".into(), "secret".into())),
        ..SmtpSinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&sink).await;
    assert!(c.cmd("EHLO c").await.contains("AUTH PLAIN LOGIN"));
    assert!(c.cmd("MAIL FROM:<a@x>").await.starts_with("530"));
    // "\0user\0wrong"
    assert!(
        c.cmd("AUTH PLAIN AHVzZXIAd3Jvbmc=")
            .await
            .starts_with("535")
    );
    // "\0user\0secret"
    assert!(
        c.cmd("AUTH PLAIN AHVzZXIAc2VjcmV0")
            .await
            .starts_with("235")
    );
    assert!(c.cmd("MAIL FROM:<a@x>").await.starts_with("250"));

    let mut c = Client::connect(&sink).await;
    c.cmd("EHLO c").await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd("dXNlcg==").await, "334 UGFzc3dvcmQ6\r\n");
    assert!(c.cmd("c2VjcmV0").await.starts_with("235"));

    let mut c = Client::connect(&sink).await;
    c.cmd("EHLO c").await;
    assert!(c.cmd("AUTH PLAIN").await.starts_with("334"));
    assert!(c.cmd("*").await.starts_with("501"));
}

#[tokio::test]
async fn hang_up_after_data_records_but_never_answers() {
    let sink = SmtpSink::start(SmtpSinkConfig {
        after_data: DataReply::HangUp,
        keep_messages: false,
        ..SmtpSinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = Client::connect(&sink).await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@x>").await;
    c.cmd("RCPT TO:<b@y>").await;
    c.cmd("DATA").await;
    c.send("hello\r\n.\r\n").await;
    let mut line = String::new();
    let n = c.reader.read_line(&mut line).await.unwrap_or(0);
    assert_eq!(n, 0, "expected EOF, got {line:?}");
    assert_eq!(sink.count(), 1);
    assert!(sink.received().is_empty(), "keep_messages is off");
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_connections() {
    let sink = SmtpSink::start(SmtpSinkConfig::default()).await.unwrap();
    let addr = sink.addr();
    let mut c = Client::connect(&sink).await;
    sink.shutdown().await;
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.reader.read_line(&mut line)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}
