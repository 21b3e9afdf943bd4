//! The access log: one line per request, written off the request path.
//!
//! The `logging` phase hands a small [`Entry`] (strings moved out of the
//! request's context, no formatting) to a bounded queue and moves on; a
//! thread of its own formats the lines (text or JSON, the same fields as the
//! process's other logs) and writes them through a buffer that is flushed
//! whenever the queue runs empty. A full queue drops the line and counts it
//! (`bouncer_gateway_access_log_dropped_total`): a slow disk or a stalled
//! terminal never blocks a request. A file that logrotate moved away is
//! reopened by name within a second.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    },
    time::{Duration, Instant, SystemTime},
};

use bouncer_core::config::{AccessLogConfig, AccessLogFormat};

/// Lines queued between the requests and the writer: 20 ms of 800k
/// requests/s.
pub const QUEUE: usize = 16_384;

/// How long a line waits for the writer at most. The writer sleeps between
/// batches rather than waiting on the queue: a writer parked in `recv`
/// makes every request's `try_send` wake it (a futex call on the proxy
/// thread, then a context switch), and flushing each time the queue ran
/// empty cost a `write(2)` per line. Both together held default logging
/// to 0.72× logs-off (benches/load/gateway.sh, one server core).
const BATCH_EVERY: Duration = Duration::from_millis(20);

/// Bytes buffered before a write; a batch is written at the latest when it ends.
const BUFFER: usize = 64 * 1024;

/// One request, as the `logging` phase knows it.
#[derive(Debug)]
pub struct Entry {
    pub at: SystemTime,
    pub request_id: String,
    pub method: http::Method,
    /// `-` when no route matched.
    pub route: Option<String>,
    pub status: u16,
    pub decision: &'static str,
    pub user_id: Option<uuid::Uuid>,
    pub client: Option<IpAddr>,
    pub micros: u64,
}

enum Message {
    Line(Entry),
    /// Write what is queued, flush, and say so.
    Flush(mpsc::Sender<()>),
}

/// The request path's end of the access log.
pub struct AccessLog {
    queue: Option<SyncSender<Message>>,
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("enabled", &self.queue.is_some()).finish_non_exhaustive()
    }
}

/// Where lines go.
enum Sink {
    Stderr(BufWriter<io::Stderr>),
    File { path: PathBuf, file: BufWriter<File>, checked: Instant },
}

impl AccessLog {
    /// Starts the writer for `config`; `format` is the process's log format,
    /// used unless the configuration names one.
    pub fn start(config: &AccessLogConfig, format: AccessLogFormat) -> io::Result<Self> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let format = config.format.unwrap_or(format);
        let sink = match config.path.as_str() {
            "stderr" => Sink::Stderr(BufWriter::with_capacity(BUFFER, io::stderr())),
            path => {
                let path = PathBuf::from(path);
                let file = open(&path)?;
                Sink::File { path, file: BufWriter::with_capacity(BUFFER, file), checked: Instant::now() }
            }
        };
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(rx, sink, format))?;
        Ok(Self { queue: Some(queue), dropped: AtomicU64::new(0) })
    }

    /// No access log (`access_log.enabled: false`).
    pub fn disabled() -> Self {
        Self { queue: None, dropped: AtomicU64::new(0) }
    }

    /// Queues a line; never waits.
    pub fn record(&self, entry: Entry) {
        let Some(queue) = &self.queue else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            queue.try_send(Message::Line(entry))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes out what is queued, waiting at most `within` (the stop, which
    /// otherwise would lose the last lines with the process).
    pub fn flush(&self, within: Duration) {
        let Some(queue) = &self.queue else { return };
        let (done, flushed) = mpsc::channel();
        if queue.try_send(Message::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(within);
        }
    }
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_lines(rx: Receiver<Message>, mut sink: Sink, format: AccessLogFormat) {
    let mut line = String::with_capacity(256);
    loop {
        std::thread::sleep(BATCH_EVERY);
        // Everything queued now, then one flush.
        loop {
            match rx.try_recv() {
                Ok(Message::Line(entry)) => {
                    line.clear();
                    render(&entry, format, &mut line);
                    sink.write(line.as_bytes());
                }
                Ok(Message::Flush(done)) => {
                    sink.flush();
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    sink.flush();
                    return;
                }
            }
        }
        sink.flush();
        sink.reopen_if_moved();
    }
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) {
        let result = match self {
            Sink::Stderr(w) => w.write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        };
        // Nowhere better to say it than the process log, and not per line.
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot write the access log");
        }
    }

    fn flush(&mut self) {
        let _ = match self {
            Sink::Stderr(w) => w.flush(),
            Sink::File { file, .. } => file.flush(),
        };
    }

    /// logrotate renames the file and expects a new one at the name.
    #[cfg(unix)]
    fn reopen_if_moved(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Sink::File { path, file, checked } = self else { return };
        if checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        *checked = Instant::now();
        let current = file.get_ref().metadata().map(|m| (m.dev(), m.ino())).ok();
        let named = std::fs::metadata(&*path).map(|m| (m.dev(), m.ino())).ok();
        if current != named {
            match open(path) {
                Ok(fresh) => {
                    let _ = file.flush();
                    *file = BufWriter::with_capacity(BUFFER, fresh);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log"),
            }
        }
    }

    #[cfg(not(unix))]
    fn reopen_if_moved(&mut self) {}
}

/// `2026-12-07T15:50:18.093967Z`, as the process's other log lines.
fn timestamp(at: SystemTime, out: &mut String) {
    use std::fmt::Write as _;
    let t = time::OffsetDateTime::from(at);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
}

/// One line, with the fields (and names) the access log has always had.
/// Written field by field into `out`: this runs once per request, and
/// `serde_json::json!` would build a map of owned strings for each.
fn render(e: &Entry, format: AccessLogFormat, out: &mut String) {
    use std::fmt::Write as _;
    let route = e.route.as_deref().unwrap_or("-");
    let mut uuid = uuid::Uuid::encode_buffer();
    let user = e.user_id.as_ref().map_or("", |u| u.hyphenated().encode_lower(&mut uuid));
    match format {
        AccessLogFormat::Json => {
            out.push_str("{\"timestamp\":\"");
            timestamp(e.at, out);
            out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
            json_string(&e.request_id, out);
            out.push_str(",\"method\":");
            json_string(e.method.as_str(), out);
            out.push_str(",\"route\":");
            json_string(route, out);
            let _ = write!(out, ",\"status\":{},\"decision\":", e.status);
            json_string(e.decision, out);
            out.push_str(",\"user_id\":");
            json_string(user, out);
            out.push_str(",\"client\":\"");
            if let Some(ip) = e.client {
                let _ = write!(out, "{ip}");
            }
            let _ = writeln!(out, "\",\"micros\":{},\"target\":\"bouncer::access\"}}", e.micros);
        }
        AccessLogFormat::Text => {
            timestamp(e.at, out);
            let _ = write!(
                out,
                "  INFO bouncer::access: request request_id={} method={} route={} status={} decision={} user_id={} client=",
                e.request_id, e.method, route, e.status, e.decision, user
            );
            if let Some(ip) = e.client {
                let _ = write!(out, "{ip}");
            }
            let _ = writeln!(out, " micros={}", e.micros);
        }
    }
}

/// `s` as a JSON string (RFC 8259 §7 escapes).
fn json_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_767_225_600_123_456),
            request_id: "r-1".into(),
            method: http::Method::GET,
            route: Some("orders".into()),
            status: 200,
            decision: "forwarded",
            user_id: Some(uuid::Uuid::from_u128(1)),
            client: Some("192.0.2.1".parse().unwrap()),
            micros: 412,
        }
    }

    #[test]
    fn lines_carry_the_same_fields_in_both_formats() {
        let mut text = String::new();
        render(&entry(), AccessLogFormat::Text, &mut text);
        assert_eq!(
            text,
            "2026-01-01T00:00:00.123456Z  INFO bouncer::access: request request_id=r-1 method=GET route=orders status=200 decision=forwarded user_id=00000000-0000-0000-0000-000000000001 client=192.0.2.1 micros=412\n"
        );
        let mut json = String::new();
        render(&Entry { route: None, user_id: None, ..entry() }, AccessLogFormat::Json, &mut json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["route"].as_str(), v["user_id"].as_str(), v["status"].as_u64()),
            (Some("-"), Some(""), Some(200))
        );
        assert_eq!(v["target"], "bouncer::access");
        assert!(json.ends_with('\n') && json.matches('\n').count() == 1, "one line: {json:?}");
    }

    #[test]
    fn json_lines_escape_what_needs_it() {
        let odd = "a\"b\\c\u{1}d\u{e9}";
        let e = Entry { request_id: odd.into(), route: Some(odd.into()), client: None, ..entry() };
        let mut json = String::new();
        render(&e, AccessLogFormat::Json, &mut json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|err| panic!("{err}: {json}"));
        assert_eq!((v["request_id"].as_str(), v["route"].as_str()), (Some(odd), Some(odd)));
        assert_eq!((v["client"].as_str(), v["micros"].as_u64()), (Some(""), Some(412)));
        assert_eq!(v["timestamp"], "2026-01-01T00:00:00.123456Z");
    }

    #[test]
    fn lines_reach_the_file_and_a_full_queue_drops_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = AccessLogConfig { path: path.display().to_string(), ..AccessLogConfig::default() };
        let log = AccessLog::start(&config, AccessLogFormat::Json).unwrap();
        for _ in 0..3 {
            log.record(entry());
        }
        log.flush(Duration::from_secs(5));
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.lines().count(), 3, "{written}");
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);

        // logrotate: the file is moved away; lines go to a new one by the name.
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        let mut reopened = false;
        for _ in 0..100 {
            log.record(entry());
            log.flush(Duration::from_secs(5));
            if std::fs::read_to_string(&path).is_ok_and(|t| !t.is_empty()) {
                reopened = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(reopened, "no new access.log appeared after the old one was moved away");

        // No writer at all: every line is counted as dropped, none waits.
        let (queue, _rx) = mpsc::sync_channel(1);
        let stuck = AccessLog { queue: Some(queue), dropped: AtomicU64::new(0) };
        // (Were record to wait, this would hang.)
        for _ in 0..1000 {
            stuck.record(entry());
        }
        assert_eq!(stuck.dropped.load(Ordering::Relaxed), 999, "one fits the queue, the rest are dropped");
    }

    #[test]
    fn a_disabled_log_takes_nothing() {
        let log = AccessLog::start(
            &AccessLogConfig { enabled: false, ..Default::default() },
            AccessLogFormat::Text,
        )
        .unwrap();
        log.record(entry());
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);
    }
}
