//! The console: COM1 (16550 at 0x3f8) and/or the debug port 0xe9, behind `log`.
//!
//! COM1 is probed through its scratch register (absent ports read as all-ones), so
//! the same image prints on QEMU and host-shim (COM1) and on Xen PVH, which emulates
//! no UART but forwards port 0xe9 to its console. Output is polled: boot runs with
//! interrupts off.

use super::arch::{inb, outb};
use guest_kernel::cmdline::{ConsoleSel, LogLevel};
use spin::Mutex;

const COM1: u16 = 0x3f8;
const DEBUG_PORT: u16 = 0xe9;
/// Line-status reads before a stuck UART is given up on (a bound, not a delay).
const THRE_SPINS: u32 = 100_000;

struct Sinks {
    com1: bool,
    e9: bool,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    com1: false,
    e9: false,
});
static LOGGER: Logger = Logger;

fn com1_present() -> bool {
    // Scratch register (offset 7) keeps what is written to it on a real 16550.
    [0x5a, 0xa5].iter().all(|&v| {
        outb(COM1 + 7, v);
        inb(COM1 + 7) == v
    })
}

fn com1_init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFOs on, cleared
    outb(COM1 + 4, 0x03); // DTR | RTS
}

fn com1_put(b: u8) {
    for _ in 0..THRE_SPINS {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1, b);
}

/// Probes and initialises the console per `sel`; returns which sinks are active.
pub fn init(sel: ConsoleSel) -> (bool, bool) {
    let has_com1 = com1_present();
    let (com1, e9) = if sel.auto {
        (has_com1, !has_com1)
    } else {
        (sel.com1 && has_com1, sel.e9)
    };
    if com1 {
        com1_init();
    }
    let mut s = SINKS.lock();
    s.com1 = com1;
    s.e9 = e9;
    (com1, e9)
}

/// Installs the `log` backend at `level`.
pub fn init_log(level: LogLevel) {
    let filter = match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    // A second call (never made) would only keep the first logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}

/// Writes raw bytes to every active sink.
pub fn write_bytes(bytes: &[u8]) {
    let s = SINKS.lock();
    for &b in bytes {
        if s.com1 {
            com1_put(b);
        }
        if s.e9 {
            outb(DEBUG_PORT, b);
        }
    }
}

/// Writes to the console without taking its lock: for the panic and exception paths,
/// which may interrupt a holder of the lock.
pub fn write_bytes_unlocked(bytes: &[u8]) {
    // If the lock is held by the code this path interrupted, print to both sinks:
    // an absent sink ignores the bytes.
    let (com1, e9) = match SINKS.try_lock() {
        Some(s) => (s.com1, s.e9),
        None => (true, true),
    };
    for &b in bytes {
        if com1 {
            com1_put(b);
        }
        if e9 {
            outb(DEBUG_PORT, b);
        }
    }
}

/// `core::fmt::Write` onto the console.
pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// `core::fmt::Write` onto the console, lock-free (panic/exception paths).
pub struct EmergencyConsole;

impl core::fmt::Write for EmergencyConsole {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_bytes_unlocked(s.as_bytes());
        Ok(())
    }
}

/// Prints a line on the console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::kernel::console::Console, $($arg)*);
    }};
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        use core::fmt::Write as _;
        let prefix = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        // Format into one buffer so that a line reaches the console in one piece.
        let mut line = LineBuf::new();
        let _ = writeln!(line, "{prefix}{}", r.args());
        write_bytes(line.as_bytes());
    }

    fn flush(&self) {}
}

/// A fixed line buffer; overlong lines are cut with a marker.
struct LineBuf {
    buf: [u8; 512],
    len: usize,
    cut: bool,
}

impl LineBuf {
    fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
            cut: false,
        }
    }

    fn as_bytes(&mut self) -> &[u8] {
        if self.cut {
            let n = self.buf.len();
            self.buf[n - 5..].copy_from_slice(b"[..]\n");
            return &self.buf;
        }
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
        }
        Ok(())
    }
}
