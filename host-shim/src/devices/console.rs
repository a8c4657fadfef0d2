//! The console sink: where the guest's serial and debug-console bytes go.
//!
//! The binary passes stdout; in-process tests pass a [`Capture`] and read it back.
//! Several devices share one sink, so it is a cloneable handle.
//!
//! Devices run on the vCPU thread, and the guest must never be able to stall the shim
//! through the host's output (a full pipe, a stopped terminal): a stalled vCPU thread
//! cannot be kicked out of `write(2)`, so `--timeout` would hang. So the sink is a
//! bounded queue drained by a writer thread of its own. A device's write waits while
//! the queue is full (back-pressure, no loss), until [`ConsoleSink::abandon`] is called:
//! from then on writes are dropped and nothing waits.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes queued before writers wait for the writer thread.
const QUEUE_CAPACITY: usize = 64 * 1024;

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    /// The writer thread is writing bytes it took from the queue.
    writing: bool,
    /// Writes are dropped from now on (the run is being torn down).
    abandoned: bool,
    /// Every handle is gone: the writer thread drains the queue and ends.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes are queued, or the sink is closed.
    queued: Condvar,
    /// Signalled when the writer thread made room or went idle, or on abandon.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A state poisoned by a panic elsewhere is still consistent: every update is a
        // single assignment or queue operation.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes the queue when the last [`ConsoleSink`] clone is dropped.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.queued.notify_all();
    }
}

/// A cloneable, thread-safe handle to the console.
#[derive(Clone)]
pub struct ConsoleSink(Arc<Handle>);

impl ConsoleSink {
    /// A sink writing to `writer` from a writer thread of its own.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        let shared = Arc::new(Shared::default());
        let drain = shared.clone();
        // If the thread cannot be spawned, output is lost but the VM still runs:
        // writes never wait for a writer that does not exist.
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || writer_thread(&drain, writer));
        if spawned.is_err() {
            shared.lock().abandoned = true;
        }
        Self(Arc::new(Handle(shared)))
    }

    /// A sink that drops everything written to it at once, with no writer thread
    /// (born abandoned): for tests and fuzz targets that never read the output, which
    /// then start no thread per run.
    pub fn discard() -> Self {
        let shared = Arc::new(Shared::default());
        shared.lock().abandoned = true;
        Self(Arc::new(Handle(shared)))
    }

    /// A sink writing to the process's stdout.
    pub fn stdout() -> Self {
        Self::new(io::stdout())
    }

    /// Drops all further output and releases every writer waiting for room.
    pub fn abandon(&self) {
        self.0.0.lock().abandoned = true;
        self.0.0.drained.notify_all();
    }

    /// Waits until everything queued so far has been written, or `limit` passed.
    /// Returns whether the queue was drained.
    pub fn drain(&self, limit: Option<Duration>) -> bool {
        let shared = &self.0.0;
        let deadline = limit.map(|l| Instant::now() + l);
        let mut st = shared.lock();
        while !st.queue.is_empty() || st.writing {
            if st.abandoned && limit.is_none() {
                return false;
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left,
                    None => return false,
                },
                None => Duration::from_millis(100),
            };
            st = shared
                .drained
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

fn writer_thread(shared: &Shared, mut writer: impl Write) {
    let mut chunk = Vec::new();
    loop {
        {
            let mut st = shared.lock();
            st.writing = false;
            shared.drained.notify_all();
            while st.queue.is_empty() && !st.closed {
                st = shared.queued.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.queue.is_empty() {
                return; // closed and drained
            }
            chunk.clear();
            chunk.extend(st.queue.drain(..));
            st.writing = true;
            shared.drained.notify_all();
        }
        // A failing host writer (closed pipe) loses the output, never the VM.
        if writer
            .write_all(&chunk)
            .and_then(|()| writer.flush())
            .is_err()
        {
            shared.lock().abandoned = true;
        }
    }
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleSink")
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &self.0.0;
        let mut st = shared.lock();
        loop {
            if st.abandoned {
                return Ok(buf.len());
            }
            // Room for all of it, or for part of a write larger than the queue.
            let room = QUEUE_CAPACITY.saturating_sub(st.queue.len());
            if room > 0 {
                let n = room.min(buf.len());
                st.queue.extend(&buf[..n]);
                shared.queued.notify_one();
                return Ok(n);
            }
            st = shared.drained.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain(None);
        Ok(())
    }
}

/// An in-memory console for tests: clone it, give one clone to the VM as its sink
/// (`ConsoleSink::new(capture.clone())`), read the other.
#[derive(Clone, Debug, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// An empty capture buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    /// A writer that blocks until released, like a full pipe.
    struct Blocked(Arc<(Mutex<bool>, Condvar)>);

    impl Write for Blocked {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_discarding_sink_takes_everything_and_never_waits() {
        let mut sink = ConsoleSink::discard();
        for _ in 0..3 {
            sink.write_all(&[b'x'; QUEUE_CAPACITY]).unwrap();
        }
        sink.flush().unwrap();
        assert!(sink.drain(None));
    }

    #[test]
    fn output_arrives_in_order() {
        let cap = Capture::new();
        let mut sink = ConsoleSink::new(cap.clone());
        for i in 0..1000u32 {
            write!(sink, "{i},").unwrap();
        }
        sink.flush().unwrap();
        let want: String = (0..1000u32).map(|i| format!("{i},")).collect();
        assert_eq!(cap.text(), want);
    }

    #[test]
    fn a_blocked_host_writer_never_blocks_after_abandon() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let mut sink = ConsoleSink::new(Blocked(gate.clone()));
        // The writer thread takes this and blocks in the host write.
        sink.write_all(b"first").unwrap();
        assert!(
            !sink.drain(Some(Duration::from_millis(50))),
            "drained through a blocked writer"
        );
        let mut producer = sink.clone();
        // More than the queue holds: the producer must wait, not lose bytes...
        let t = std::thread::spawn(move || {
            let data = vec![b'x'; 4 * QUEUE_CAPACITY];
            producer.write_all(&data).unwrap();
        });
        // ...until the sink is abandoned, which releases it (dropping output).
        sink.abandon();
        t.join().unwrap();
        sink.write_all(b"dropped").unwrap();
        // Release the writer so its thread can end with the test.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let _ = sink.flush();
    }
}
