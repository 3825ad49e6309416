//! The host side of the guest agent, over the virtio-serial port
//! `vale.agent` (QEMU: a Unix socket the VMM listens on).
//!
//! The protocol, which the guest image implements:
//!
//! ```text
//! host → guest   <id> <command>\n              id decimal, command without newline
//! guest → host   VALE-OUT <id> <nbytes>\n
//!                <nbytes bytes: the command's stdout and stderr>
//!                VALE-EXIT <id> <code>\n
//! host → guest   <id> !bg <command>\n          run detached: empty output, code 0
//! ```
//!
//! Requests written before the guest opens its port wait in the socket, so
//! [`AgentClient::wait_ready`] sends `<id> true` about once a second until one
//! of them is answered. Replies with ids this client is not waiting for (late
//! answers to earlier pings, or to a command that timed out) are discarded, as
//! are lines outside a reply that do not start with `VALE-OUT` (the tail of a
//! reply whose reader went away). Ids come from one process-wide counter that
//! starts at a time-derived value, so a new connection (another `vale-vm exec`)
//! does not take a stale reply for its own. Every read has a deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest output a reply may announce (a corrupt header must not make us
/// allocate gigabytes).
pub const MAX_OUTPUT: usize = 64 << 20;

/// Longest line outside a reply that is kept while waiting for its newline.
const MAX_LINE: usize = 4096;

/// How often [`AgentClient::wait_ready`] pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// What a command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// stdout and stderr, interleaved as the guest wrote them (lossy UTF-8).
    pub stdout: String,
    /// The exit code (shell convention: 128 + N for signal N).
    pub code: i32,
}

impl Output {
    /// Whether the command exited with 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// One complete reply as read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// The raw output bytes.
    pub output: Vec<u8>,
    /// The exit code.
    pub code: i32,
}

/// A malformed or cut reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A `VALE-OUT` line whose id or length does not parse.
    #[error("bad reply header {0:?}")]
    BadHeader(String),
    /// A reply announcing more than [`MAX_OUTPUT`] bytes.
    #[error("reply {id} announces {len} bytes of output, more than {max}", max = MAX_OUTPUT)]
    TooLarge {
        /// The reply's id.
        id: u64,
        /// The announced length.
        len: usize,
    },
    /// The line after the output is not `VALE-EXIT <same id> <code>`.
    #[error("reply {id}: expected `VALE-EXIT {id} <code>` after the output, got {line:?}")]
    BadExit {
        /// The reply's id.
        id: u64,
        /// What came instead.
        line: String,
    },
    /// The stream ended inside a reply.
    #[error("reply {id} truncated: the stream ended {where_}")]
    Truncated {
        /// The reply's id.
        id: u64,
        /// Where: "after 3 of 10 output bytes", "before its VALE-EXIT line".
        where_: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between replies: waiting for a `VALE-OUT` line.
    Header,
    /// Reading `len` output bytes of reply `id`.
    Body { id: u64, len: usize },
    /// Output read; waiting for `VALE-EXIT`.
    Exit { id: u64, output: Vec<u8> },
}

/// An incremental parser of the agent's replies: feed it whatever each read
/// returned, take complete replies out.
#[derive(Debug)]
pub struct ReplyParser {
    buf: Vec<u8>,
    state: State,
    skipped: usize,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser {
            buf: Vec::new(),
            state: State::Header,
            skipped: 0,
        }
    }
}

impl ReplyParser {
    /// An empty parser.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Lines skipped so far because they were outside any reply.
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// The next complete reply, if the bytes fed so far hold one. After an
    /// error the stream is out of step and should be closed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, FrameError> {
        loop {
            match &mut self.state {
                State::Header => {
                    let Some(line) = take_line(&mut self.buf) else {
                        if self.buf.len() > MAX_LINE {
                            // A long run of non-protocol bytes: drop it.
                            self.buf.clear();
                            self.skipped += 1;
                        }
                        return Ok(None);
                    };
                    let Some(rest) = line.strip_prefix("VALE-OUT ") else {
                        tracing::debug!(line = %line, "agent: skipped a line outside any reply");
                        self.skipped += 1;
                        continue;
                    };
                    let (id, len) =
                        parse_two(rest).ok_or_else(|| FrameError::BadHeader(line.clone()))?;
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if len > MAX_OUTPUT {
                        return Err(FrameError::TooLarge { id, len });
                    }
                    self.state = State::Body { id, len };
                }
                State::Body { id, len } => {
                    if self.buf.len() < *len {
                        return Ok(None);
                    }
                    let output: Vec<u8> = self.buf.drain(..*len).collect();
                    self.state = State::Exit { id: *id, output };
                }
                State::Exit { id, output } => {
                    let Some(line) = take_line(&mut self.buf) else {
                        if self.buf.len() > MAX_LINE {
                            let line = String::from_utf8_lossy(&self.buf[..64]).into_owned();
                            return Err(FrameError::BadExit { id: *id, line });
                        }
                        return Ok(None);
                    };
                    let id = *id;
                    let parsed = line
                        .strip_prefix("VALE-EXIT ")
                        .and_then(parse_id_code)
                        .filter(|(got, _)| *got == id);
                    let Some((_, code)) = parsed else {
                        return Err(FrameError::BadExit { id, line });
                    };
                    let output = std::mem::take(output);
                    self.state = State::Header;
                    return Ok(Some(Reply { id, output, code }));
                }
            }
        }
    }

    /// Call at end of stream: an error if it ended inside a reply.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.state {
            State::Header => Ok(()),
            State::Body { id, len } => Err(FrameError::Truncated {
                id: *id,
                where_: format!("after {} of {} output bytes", self.buf.len(), len),
            }),
            State::Exit { id, .. } => Err(FrameError::Truncated {
                id: *id,
                where_: "before its VALE-EXIT line".to_string(),
            }),
        }
    }
}

/// Takes one `\n`-terminated line (without it, and without a trailing `\r`).
fn take_line(buf: &mut Vec<u8>) -> Option<String> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let mut line: Vec<u8> = buf.drain(..=nl).collect();
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

fn parse_two(s: &str) -> Option<(u64, u64)> {
    let mut it = s.split(' ');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    it.next().is_none().then_some((a, b))
}

fn parse_id_code(s: &str) -> Option<(u64, i32)> {
    let mut it = s.split(' ');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    it.next().is_none().then_some((a, b))
}

/// The next request id: one counter per process, starting from the clock
/// (milliseconds × 1000) so processes talking to the same guest one after
/// another do not reuse each other's ids.
pub fn next_id() -> u64 {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    NEXT.get_or_init(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        AtomicU64::new((ms % 1_000_000_000) * 1000 + 1)
    })
    .fetch_add(1, Ordering::Relaxed)
}

/// Seconds for messages: "30 s", "1.5 s".
#[derive(Debug, Clone, Copy)]
pub struct Secs(pub Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs_f64();
        if s.fract() == 0.0 {
            write!(f, "{s:.0} s")
        } else {
            write!(f, "{s:.1} s")
        }
    }
}

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket cannot be connected to.
    #[error("agent socket {path}: cannot connect: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No ping was answered in time.
    #[error("the agent did not answer within {}", Secs(*after))]
    NotReady {
        /// How long we waited.
        after: Duration,
    },
    /// A command the protocol cannot carry.
    #[error("command {cmd:?}: {why}")]
    BadCommand {
        /// The command.
        cmd: String,
        /// Why.
        why: &'static str,
    },
    /// No reply in time.
    #[error("command `{cmd}` timed out after {}", Secs(*after))]
    Timeout {
        /// The command.
        cmd: String,
        /// The timeout.
        after: Duration,
    },
    /// The stream ended between replies.
    #[error("command `{cmd}`: the agent connection closed before the reply")]
    Closed {
        /// The command.
        cmd: String,
    },
    /// A malformed or truncated reply.
    #[error("command `{cmd}`: {source}")]
    Frame {
        /// The command.
        cmd: String,
        /// The cause.
        #[source]
        source: FrameError,
    },
    /// A socket error.
    #[error("command `{cmd}`: {source}")]
    Io {
        /// The command.
        cmd: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A connection to one guest's agent.
#[derive(Debug)]
pub struct AgentClient {
    path: PathBuf,
    stream: UnixStream,
    parser: ReplyParser,
}

impl AgentClient {
    /// Connects once.
    pub fn connect(path: &Path) -> Result<AgentClient, AgentError> {
        let stream = UnixStream::connect(path).map_err(|source| AgentError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(AgentClient {
            path: path.to_path_buf(),
            stream,
            parser: ReplyParser::new(),
        })
    }

    /// Connects, retrying every 50 ms while the socket is absent or refuses
    /// (the VMM has not created it yet), until `timeout`.
    pub fn connect_timeout(path: &Path, timeout: Duration) -> Result<AgentClient, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            match AgentClient::connect(path) {
                Ok(c) => return Ok(c),
                Err(AgentError::Connect { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `<id> true` about once a second until one of them is answered,
    /// or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        let mut pings = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::NotReady { after: timeout });
            }
            if self.ping(&mut pings, PING_INTERVAL.min(deadline - now))? {
                return Ok(());
            }
        }
    }

    /// Sends one ping (its id is added to `pings`) and waits up to `wait`
    /// for an answer to any of `pings`. `Ok(false)`: none yet.
    pub fn ping(&mut self, pings: &mut Vec<u64>, wait: Duration) -> Result<bool, AgentError> {
        let id = next_id();
        let cmd = "true";
        let deadline = Instant::now() + wait;
        match self.send(id, cmd, deadline) {
            Ok(()) => {}
            // The guest has not drained the socket yet: wait, then ping again.
            Err(AgentError::Timeout { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        pings.push(id);
        self.poll_pings(pings, deadline.saturating_duration_since(Instant::now()))
    }

    /// Waits up to `wait` for an answer to any of `pings` without sending
    /// another. `Ok(false)`: none yet.
    pub fn poll_pings(&mut self, pings: &[u64], wait: Duration) -> Result<bool, AgentError> {
        let deadline = Instant::now() + wait;
        match self.read_reply("true", wait, deadline, |got| pings.contains(&got)) {
            Ok(_) => Ok(true),
            Err(AgentError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `cmd` in the guest (through its shell) and waits up to `timeout`
    /// for it to finish.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<Output, AgentError> {
        check_command(cmd)?;
        let id = next_id();
        let deadline = Instant::now() + timeout;
        self.send_for(id, cmd, cmd, timeout, deadline)?;
        let reply = self.read_reply(cmd, timeout, deadline, |got| got == id)?;
        Ok(Output {
            stdout: String::from_utf8_lossy(&reply.output).into_owned(),
            code: reply.code,
        })
    }

    /// Starts `cmd` detached in the guest (`<id> !bg <cmd>`); returns once
    /// the agent has acknowledged it.
    pub fn spawn_bg(&mut self, cmd: &str, timeout: Duration) -> Result<(), AgentError> {
        check_command(cmd)?;
        let id = next_id();
        let deadline = Instant::now() + timeout;
        let line = format!("!bg {cmd}");
        self.send_for(id, &line, cmd, timeout, deadline)?;
        self.read_reply(cmd, timeout, deadline, |got| got == id)?;
        Ok(())
    }

    fn send_for(
        &mut self,
        id: u64,
        line: &str,
        cmd: &str,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), AgentError> {
        self.send(id, line, deadline).map_err(|e| match e {
            AgentError::Timeout { .. } => AgentError::Timeout {
                cmd: cmd.to_string(),
                after: timeout,
            },
            other => other,
        })
    }

    fn send(&mut self, id: u64, line: &str, deadline: Instant) -> Result<(), AgentError> {
        let msg = format!("{id} {line}\n");
        let io_err = |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => AgentError::Timeout {
                cmd: line.to_string(),
                after: Duration::ZERO,
            },
            _ => AgentError::Io {
                cmd: line.to_string(),
                source,
            },
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.stream
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        self.stream.write_all(msg.as_bytes()).map_err(io_err)
    }

    /// Reads until a reply whose id `want`s, discarding others.
    fn read_reply(
        &mut self,
        cmd: &str,
        timeout: Duration,
        deadline: Instant,
        want: impl Fn(u64) -> bool,
    ) -> Result<Reply, AgentError> {
        let frame = |source| AgentError::Frame {
            cmd: cmd.to_string(),
            source,
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(reply) = self.parser.next_reply().map_err(frame)? {
                if want(reply.id) {
                    return Ok(reply);
                }
                tracing::debug!(
                    id = reply.id,
                    "agent: discarded a reply for another request"
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout {
                    cmd: cmd.to_string(),
                    after: timeout,
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| AgentError::Io {
                    cmd: cmd.to_string(),
                    source,
                })?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.parser.finish().map_err(frame)?;
                    return Err(AgentError::Closed {
                        cmd: cmd.to_string(),
                    });
                }
                Ok(n) => self.parser.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(AgentError::Timeout {
                        cmd: cmd.to_string(),
                        after: timeout,
                    });
                }
                Err(source) => {
                    return Err(AgentError::Io {
                        cmd: cmd.to_string(),
                        source,
                    })
                }
            }
        }
    }
}

fn check_command(cmd: &str) -> Result<(), AgentError> {
    let why = if cmd.trim().is_empty() {
        "empty"
    } else if cmd.contains(['\n', '\r']) {
        "contains a newline (one request is one line)"
    } else if cmd.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(AgentError::BadCommand {
        cmd: cmd.to_string(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn reply(id: u64, out: &str, code: i32) -> Vec<u8> {
        format!("VALE-OUT {id} {}\n{out}VALE-EXIT {id} {code}\n", out.len()).into_bytes()
    }

    #[test]
    fn whole_reply() {
        let mut p = ReplyParser::new();
        p.feed(&reply(7, "hello\nworld\n", 3));
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.output, b"hello\nworld\n");
        assert_eq!(r.code, 3);
        assert_eq!(p.next_reply().unwrap(), None);
        p.finish().unwrap();
    }

    #[test]
    fn split_reads_byte_by_byte() {
        let mut bytes = reply(1, "", 0);
        bytes.extend(reply(2, "VALE-EXIT 2 9\nVALE-OUT 3 4\n", -1)); // protocol text as output
        bytes.extend(reply(3, "\u{e9}t\u{e9}", 255));
        let mut p = ReplyParser::new();
        let mut got = Vec::new();
        for b in &bytes {
            p.feed(std::slice::from_ref(b));
            while let Some(r) = p.next_reply().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].id, got[0].output.len(), got[0].code), (1, 0, 0));
        assert_eq!(got[1].output, b"VALE-EXIT 2 9\nVALE-OUT 3 4\n");
        assert_eq!(got[1].code, -1);
        assert_eq!(
            String::from_utf8(got[2].output.clone()).unwrap(),
            "\u{e9}t\u{e9}"
        );
        p.finish().unwrap();
    }

    #[test]
    fn binary_output_without_trailing_newline() {
        let mut p = ReplyParser::new();
        let out = [0u8, 255, b'\n', 10, 13];
        p.feed(format!("VALE-OUT 5 {}\n", out.len()).as_bytes());
        p.feed(&out);
        p.feed(b"VALE-EXIT 5 0\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.output, out);
    }

    #[test]
    fn junk_between_replies_is_skipped() {
        let mut p = ReplyParser::new();
        p.feed(b"tail of an old reply\n");
        p.feed(&reply(4, "x", 0));
        assert_eq!(p.next_reply().unwrap().unwrap().id, 4);
        assert_eq!(p.skipped_lines(), 1);
    }

    #[test]
    fn truncated_reply_is_an_error() {
        let mut p = ReplyParser::new();
        p.feed(b"VALE-OUT 9 10\nabc");
        assert_eq!(p.next_reply().unwrap(), None);
        let e = p.finish().unwrap_err();
        assert_eq!(
            e,
            FrameError::Truncated {
                id: 9,
                where_: "after 3 of 10 output bytes".into()
            }
        );
        let mut p = ReplyParser::new();
        p.feed(b"VALE-OUT 9 3\nabcVALE-EX");
        assert_eq!(p.next_reply().unwrap(), None);
        assert!(p
            .finish()
            .unwrap_err()
            .to_string()
            .contains("before its VALE-EXIT"));
    }

    #[test]
    fn bad_frames() {
        let mut p = ReplyParser::new();
        p.feed(b"VALE-OUT x 3\n");
        assert!(matches!(p.next_reply(), Err(FrameError::BadHeader(_))));
        let mut p = ReplyParser::new();
        p.feed(b"VALE-OUT 1 99999999999\n");
        assert!(matches!(p.next_reply(), Err(FrameError::TooLarge { .. })));
        let mut p = ReplyParser::new();
        p.feed(b"VALE-OUT 1 2\nokVALE-EXIT 2 0\n");
        assert!(matches!(
            p.next_reply(),
            Err(FrameError::BadExit { id: 1, .. })
        ));
        let mut p = ReplyParser::new();
        p.feed(b"VALE-OUT 1 2\nokgarbage\n");
        assert!(matches!(
            p.next_reply(),
            Err(FrameError::BadExit { id: 1, .. })
        ));
    }

    #[test]
    fn commands_are_one_line() {
        assert!(check_command("echo hi").is_ok());
        assert!(check_command("").is_err());
        assert!(check_command("a\nb").is_err());
    }

    #[test]
    fn ids_increase() {
        let a = next_id();
        let b = next_id();
        assert!(b > a);
    }

    /// A fake guest agent on a socket: answers pings only after `ignore`
    /// requests, interleaves a stale reply, answers `!bg`, cuts `cut`.
    fn fake_agent(listener: UnixListener, ignore: usize) {
        let (mut s, _) = listener.accept().unwrap();
        let mut reader = io::BufReader::new(s.try_clone().unwrap());
        let mut seen = 0;
        loop {
            let mut line = String::new();
            if io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
                return;
            }
            seen += 1;
            let (id, cmd) = line.trim_end().split_once(' ').unwrap();
            if seen <= ignore {
                continue;
            }
            // A stale reply for some other id first.
            s.write_all(&reply(1, "stale", 1)).unwrap();
            if cmd == "cut" {
                s.write_all(format!("VALE-OUT {id} 100\nonly this").as_bytes())
                    .unwrap();
                return;
            }
            if cmd == "sleep" {
                continue;
            }
            let (out, code) = match cmd.strip_prefix("!bg ") {
                Some(_) => (String::new(), 0),
                None => (format!("ran {cmd}\n"), 42),
            };
            // Split the reply over two writes.
            let r = reply(id.parse().unwrap(), &out, code);
            let (a, b) = r.split_at(r.len() / 2);
            s.write_all(a).unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
            s.write_all(b).unwrap();
        }
    }

    fn sock_path(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmmi-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn client_against_fake_agent() {
        let path = sock_path("ok");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || fake_agent(l, 1));
        let mut c = AgentClient::connect_timeout(&path, Duration::from_secs(5)).unwrap();
        // The first ping is ignored (agent "not up"), the second answered.
        c.wait_ready(Duration::from_secs(10)).unwrap();
        let out = c.run("uname -a", Duration::from_secs(5)).unwrap();
        assert_eq!(
            out,
            Output {
                stdout: "ran uname -a\n".into(),
                code: 42
            }
        );
        c.spawn_bg("iperf3 -s", Duration::from_secs(5)).unwrap();
        let e = c.run("sleep", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.to_string(), "command `sleep` timed out after 0.2 s");
        let e = c.run("cut", Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::Frame {
                    source: FrameError::Truncated { .. },
                    ..
                }
            ),
            "{e}"
        );
        t.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn not_ready_times_out() {
        let path = sock_path("silent");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || fake_agent(l, usize::MAX));
        let mut c = AgentClient::connect(&path).unwrap();
        let e = c.wait_ready(Duration::from_millis(1500)).unwrap_err();
        assert_eq!(e.to_string(), "the agent did not answer within 1.5 s");
        drop(c);
        t.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
