//! The console sink: where the guest's serial and debug-console bytes go.
//!
//! The binary passes stdout; in-process tests pass a [`Capture`] and read it back.
//! Several devices share one sink, so it is a cloneable handle.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

/// A cloneable, thread-safe handle to the console's writer.
#[derive(Clone)]
pub struct ConsoleSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl ConsoleSink {
    /// A sink writing to `writer`.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Box::new(writer))))
    }

    /// A sink writing to the process's stdout.
    pub fn stdout() -> Self {
        Self::new(io::stdout())
    }

    fn inner(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        // A writer poisoned by a panic elsewhere is still a writer.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleSink")
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
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
