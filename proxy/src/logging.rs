//! keel's log on stderr: text or JSON lines, filtered by `KEEL_LOG` (default `info`).
//!
//! Access-log lines (one per HTTP request, target `keel::access`, and one per closed connection, target
//! `keel::telemetry`; formatted by `crate::telemetry::access_log`) are the only lines written at request rate, so
//! they are buffered and written out in batches at most `ACCESS_FLUSH_INTERVAL` after they were logged (Envoy
//! flushes its access-log files on a timer too, every second by default): one write per batch instead of one per
//! request. Every other line goes through `tracing` and is written as it is logged.
use std::{
    io::{self, IsTerminal as _, Write as _},
    mem,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// How long an access-log line may wait in the buffer.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// A buffer this full is written out by the logging thread itself (the flusher fell behind).
const ACCESS_BUFFER_LIMIT: usize = 256 * 1024;

/// Installs the global subscriber. Keep the returned handle and `flush` it before exiting, so the last
/// access-log lines are written.
pub fn init(format: LogFormat) -> AccessLog {
    // One layer under one global filter (so call sites nothing logs, such as h2's trace spans on every poll,
    // stay disabled for good). The access log asks the same filter whether its targets are on.
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let access = AccessLog::start();
    let lines = access.clone();
    crate::telemetry::access_log::install(crate::telemetry::access_log::Sink {
        json: matches!(format, LogFormat::Json),
        write: Box::new(move |line| {
            // The buffer's writer never fails.
            let _ = (&lines).write_all(line);
        }),
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    access
}

/// The access log's buffer and the thread that writes it out.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Signalled when the buffer stops being empty.
    filled: Condvar,
}

impl AccessLog {
    fn start() -> AccessLog {
        let shared = Arc::new(Shared { buffer: Mutex::new(Vec::new()), filled: Condvar::new() });
        let flusher = shared.clone();
        let spawned = thread::Builder::new().name("keel-access-log".into()).spawn(move || loop {
            {
                let buffer = flusher.buffer.lock().unwrap_or_else(|e| e.into_inner());
                drop(flusher.filled.wait_while(buffer, |b| b.is_empty()).unwrap_or_else(|e| e.into_inner()));
            }
            // Let more lines gather, then write them all at once.
            thread::sleep(ACCESS_FLUSH_INTERVAL);
            flusher.write_out();
        });
        if let Err(e) = spawned {
            eprintln!("keel: no access-log flusher thread ({e}); access-log lines are written when the buffer fills");
        }
        AccessLog { shared }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        self.shared.write_out();
    }
}

impl Shared {
    fn write_out(&self) {
        let batch = mem::take(&mut *self.buffer.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            // Nowhere to report a failing stderr.
            let _ = io::stderr().lock().write_all(&batch);
        }
    }
}

impl io::Write for &AccessLog {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let full = {
            let mut buffer = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.is_empty() {
                self.shared.filled.notify_one();
            }
            buffer.extend_from_slice(line);
            buffer.len() >= ACCESS_BUFFER_LIMIT
        };
        if full {
            self.shared.write_out();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
