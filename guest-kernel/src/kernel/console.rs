//! The console: COM1 (16550 at 0x3f8), the debug port 0xe9, and on Xen the PV console
//! ring and Xen's own console (`console_io`), behind `log`.
//!
//! COM1 is probed through its scratch register (absent ports read as all-ones), so
//! the same image prints on QEMU and host-shim (COM1) and on Xen PVH, which emulates
//! no UART but forwards port 0xe9 to its console. Output is polled: boot runs with
//! interrupts off.
//!
//! The Xen sinks (`console=xen`, `console=xenio`) exist only once the Xen interface is
//! up, which is after memory and time. Until then output waits in a buffer; each Xen
//! sink replays it when it comes up (`console_io` as soon as the hypercall page is
//! installed, the ring at the end of Xen's bring-up), and [`xen_settled`] decides
//! after Xen's bring-up: a Xen sink that did not come up (no Xen, no console ring,
//! `console_io` refused as real Xen refuses it to a domU with `-EPERM`) is dropped, and
//! if no sink is left, the console falls back to `auto` and replays the buffer there.
//!
//! During a measured benchmark phase [`hold`] keeps all output in a second buffer of
//! the same kind (a byte through an emulated UART is a VM exit, which would count as
//! the phase's work) and [`release`] writes it out afterwards, saying how many bytes
//! did not fit; the panic path writes what is held first, then its own message.

use super::arch::{inb, outb};
use super::xen::HypercallPage;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_kernel::cmdline::{ConsoleSel, LogLevel};
use pv_drivers::hypercall::XenHypercalls as _;
use spin::Mutex;

const COM1: u16 = 0x3f8;
const DEBUG_PORT: u16 = 0xe9;
/// Line-status reads before a stuck UART is given up on (a bound, not a delay).
const THRE_SPINS: u32 = 100_000;
/// Output kept for the Xen sinks until Xen is up, and output held during a phase.
const EARLY_BYTES: usize = 16 * 1024;

/// What the console buffers until Xen is up, or while output is held.
struct Early {
    buf: [u8; EARLY_BYTES],
    len: usize,
    /// Bytes that did not fit.
    lost: usize,
}

impl Early {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(EARLY_BYTES - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self.lost += bytes.len() - n;
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

struct Sinks {
    com1: bool,
    e9: bool,
    /// The PV console ring, up.
    xen: bool,
    /// `console_io`, up.
    xenio: Option<HypercallPage>,
    /// The Xen sinks asked for on the command line.
    want: ConsoleSel,
    /// Buffering for Xen sinks not yet settled.
    buffering: bool,
    early: Early,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    com1: false,
    e9: false,
    xen: false,
    xenio: None,
    want: ConsoleSel::AUTO,
    buffering: false,
    early: Early {
        buf: [0; EARLY_BYTES],
        len: 0,
        lost: 0,
    },
});
static LOGGER: Logger = Logger;
/// Output goes to [`HELD`], not to the sinks ([`hold`]).
static HOLDING: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Early> = Mutex::new(Early {
    buf: [0; EARLY_BYTES],
    len: 0,
    lost: 0,
});

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

/// The port sinks `auto` picks: COM1 if a 16550 answers, else port 0xe9.
fn auto_ports() -> (bool, bool) {
    let has_com1 = com1_present();
    (has_com1, !has_com1)
}

/// Probes and initialises the console per `sel`; returns which port sinks (COM1,
/// 0xe9) are active. Xen sinks start buffering (see the module doc).
pub fn init(sel: ConsoleSel) -> (bool, bool) {
    let (com1, e9) = if sel.auto {
        auto_ports()
    } else {
        (sel.com1 && com1_present(), sel.e9)
    };
    if com1 {
        com1_init();
    }
    let mut s = SINKS.lock();
    s.com1 = com1;
    s.e9 = e9;
    s.want = sel;
    s.buffering = sel.wants_xen();
    (com1, e9)
}

/// The active sinks, for the boot log.
pub fn describe() -> &'static str {
    let s = SINKS.lock();
    let xen = s.want.xen && (s.xen || s.buffering);
    let xenio = s.want.xenio && (s.xenio.is_some() || s.buffering);
    match (s.com1, s.e9, xen, xenio) {
        (false, false, false, false) => "none",
        (true, false, false, false) => "com1",
        (false, true, false, false) => "e9",
        (true, true, false, false) => "com1 e9",
        (false, false, true, false) => "xen (from Xen bring-up)",
        (false, false, false, true) => "xenio (from Xen bring-up)",
        (false, false, true, true) => "xen xenio (from Xen bring-up)",
        _ => "ports and xen (xen from Xen bring-up)",
    }
}

/// The hypercall page is installed: `console_io` can be tried. Called by Xen's
/// bring-up; replays the buffer there if `console=xenio` asked for it.
pub fn xen_hypercalls_ready(hv: HypercallPage) {
    let mut s = SINKS.lock();
    if !s.want.xenio || !s.buffering {
        return;
    }
    // Real Xen refuses `console_io` to a domU (`-EPERM`): then this sink is not there.
    if hv.console_write(s.early.bytes()).is_ok() {
        s.xenio = Some(hv);
    }
}

/// The PV console ring is up (Xen's bring-up is done and found one): replays the
/// buffer there if `console=xen` asked for it.
pub fn xen_ring_ready() {
    let mut s = SINKS.lock();
    if !s.want.xen || !s.buffering {
        return;
    }
    let Some(x) = super::xen::get() else {
        return;
    };
    let n = s.early.len;
    if x.console_write(s.early.bytes()) == n {
        s.xen = true;
    }
}

/// Xen's bring-up is over (or there is no Xen): the Xen sinks that came up stay, the
/// others are dropped with a warning, and if nothing is left the console falls back
/// to `auto`, where the buffered output is replayed.
pub fn xen_settled() {
    let (lost, fell_back, missing) = {
        let mut s = SINKS.lock();
        if !s.buffering {
            return;
        }
        s.buffering = false;
        let missing = (s.want.xen && !s.xen, s.want.xenio && s.xenio.is_none());
        let mut fell_back = None;
        if !(s.com1 || s.e9 || s.xen || s.xenio.is_some()) {
            let (com1, e9) = auto_ports();
            if com1 {
                com1_init();
            }
            s.com1 = com1;
            s.e9 = e9;
            fell_back = Some(if com1 { "com1" } else { "e9" });
            let early = &s.early;
            put_ports(com1, e9, early.bytes());
        }
        let lost = s.early.lost;
        s.early.len = 0;
        (lost, fell_back, missing)
    };
    if missing.0 {
        log::warn!("console: the Xen PV console ring is not available");
    }
    if missing.1 {
        log::warn!("console: Xen refused console_io (or there is no Xen)");
    }
    if let Some(to) = fell_back {
        log::warn!("console: no console left; falling back to {to}");
    }
    if lost > 0 {
        log::warn!("console: {lost} bytes of early output did not fit the buffer");
    }
}

fn put_ports(com1: bool, e9: bool, bytes: &[u8]) {
    for &b in bytes {
        if com1 {
            com1_put(b);
        }
        if e9 {
            outb(DEBUG_PORT, b);
        }
    }
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

/// Holds back console output until [`release`]: nothing reaches a sink meanwhile.
pub fn hold() {
    HOLDING.store(true, Ordering::SeqCst);
}

/// Ends [`hold`]: writes the held output to the sinks, then, if the buffer overflowed,
/// a warning with the number of bytes dropped.
pub fn release() {
    let lost = {
        let mut held = HELD.lock();
        // Cleared under the lock: a writer that still saw it set waits for this lock,
        // finds it clear and writes after the held bytes.
        HOLDING.store(false, Ordering::SeqCst);
        write_sinks(held.bytes());
        let lost = held.lost;
        held.len = 0;
        held.lost = 0;
        lost
    };
    if lost > 0 {
        log::warn!(
            "console: {lost} bytes of output held during a measured phase did not fit the \
             buffer ({EARLY_BYTES} bytes) and were dropped"
        );
    }
}

/// Writes raw bytes to every active sink (or to the held output, see [`hold`]).
pub fn write_bytes(bytes: &[u8]) {
    if HOLDING.load(Ordering::SeqCst) {
        let mut held = HELD.lock();
        // Released while this waited for the lock: straight out.
        if HOLDING.load(Ordering::SeqCst) {
            held.push(bytes);
            return;
        }
    }
    write_sinks(bytes);
}

fn write_sinks(bytes: &[u8]) {
    let mut s = SINKS.lock();
    put_ports(s.com1, s.e9, bytes);
    if s.buffering {
        s.early.push(bytes);
    }
    if s.xen
        && let Some(x) = super::xen::get()
    {
        x.console_write(bytes);
    }
    if let Some(hv) = s.xenio
        && hv.console_write(bytes).is_err()
    {
        s.xenio = None;
    }
}

/// Writes to the console without waiting for its lock: for the panic and exception
/// paths, which may interrupt a holder of the lock. Output held by [`hold`] goes out
/// first (unless its holder was interrupted), and holding ends.
pub fn write_bytes_unlocked(bytes: &[u8]) {
    if HOLDING.swap(false, Ordering::SeqCst)
        && let Some(mut held) = HELD.try_lock()
    {
        put_unlocked(held.bytes());
        held.len = 0;
    }
    put_unlocked(bytes);
}

fn put_unlocked(bytes: &[u8]) {
    let Some(s) = SINKS.try_lock() else {
        // The interrupted code holds the lock: print to both ports (an absent one
        // ignores the bytes).
        put_ports(true, true, bytes);
        return;
    };
    let (xen, xenio) = (s.xen, s.xenio);
    // With only buffered sinks (Xen not up yet), the ports are the last resort.
    let ports = !(s.com1 || s.e9 || xen || xenio.is_some());
    put_ports(s.com1 || ports, s.e9 || ports, bytes);
    drop(s);
    if xen && let Some(x) = super::xen::get() {
        x.try_console_write(bytes);
    }
    if let Some(hv) = xenio {
        let _ = hv.console_write(bytes);
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
