//! Kernel command-line options: space-separated `key=value` words.
//!
//! | option | values | default |
//! |---|---|---|
//! | `console=` | comma list of `com1`, `e9`, `xen`, `xenio`; or `auto` | `auto`: COM1 if a UART answers, else port 0xe9 |
//! | `loglevel=` | `error` `warn` `info` `debug` `trace` | `info` |
//! | `selftest=` | comma list of `boot`, `xen`, `irq`, `hostile`, `fault`, `stack`, `panic`, `triple`, `hang`; or `none` | `boot` |
//! | `heap=` | size with optional `K`/`M` suffix | `4M` |
//!
//! `fault`, `stack`, `panic`, `triple` and `hang` are test hooks: take a page fault
//! (the exception handler must report it), overflow the boot stack (the guard page and
//! the double-fault stack must turn it into a report), panic (the panic handler must
//! report it),
//! triple-fault (the VMM must report it), never exit (the
//! VMM's timeout must end it). Unknown words are kept and reported, not fatal, so that
//! one command line can serve kernels of different versions; malformed values of known
//! options are errors.

use core::fmt;

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// And warnings.
    Warn,
    /// And information.
    Info,
    /// And debugging detail.
    Debug,
    /// Everything.
    Trace,
}

/// Which console sinks to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleSel {
    /// Probe: COM1 if present, else port 0xe9.
    pub auto: bool,
    /// The 16550 at 0x3f8.
    pub com1: bool,
    /// The Bochs/QEMU/Xen debug port 0xe9.
    pub e9: bool,
    /// Xen's PV console ring (`HVM_PARAM_CONSOLE_PFN`), once the Xen interface is up.
    pub xen: bool,
    /// Xen's own console through the `console_io` hypercall, from as soon as the
    /// hypercall page is installed (real Xen refuses it to an ordinary domU).
    pub xenio: bool,
}

impl ConsoleSel {
    /// `console=auto`.
    pub const AUTO: Self = Self {
        auto: true,
        com1: false,
        e9: false,
        xen: false,
        xenio: false,
    };

    /// Whether a Xen sink is asked for (output waits in a buffer until Xen is up).
    pub fn wants_xen(&self) -> bool {
        self.xen || self.xenio
    }
}

/// Self-tests and test hooks requested.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfTests {
    /// Boot self-tests: start_info, memory, heap, frames, time, interrupts.
    pub boot: bool,
    /// Deliberate page fault.
    pub fault: bool,
    /// Deliberate boot-stack overflow.
    pub stack: bool,
    /// Deliberate panic.
    pub panic: bool,
    /// Deliberate triple fault.
    pub triple: bool,
    /// Never exit.
    pub hang: bool,
    /// The Xen interface: xenstore, watches, transactions, event channels, grants,
    /// the timer (`selftest=xen`).
    pub xen: bool,
    /// The emulated-device platform: the timed wait without an event, and an e1000's
    /// INTx through the IOAPIC to its event and back (`selftest=irq`).
    pub irq: bool,
    /// Attack the hypervisor from inside, then check a well-behaved disk
    /// (`selftest=hostile`, see the kernel's `hostile` module).
    pub hostile: bool,
}

/// Parsed options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    /// Console sinks.
    pub console: ConsoleSel,
    /// Verbosity.
    pub loglevel: LogLevel,
    /// Self-tests.
    pub selftest: SelfTests,
    /// Heap size in bytes.
    pub heap_bytes: u64,
    /// `hostile.skip=`: the attack groups `selftest=hostile` leaves out (a comma list
    /// of [`HOSTILE_GROUPS`]), e.g. one that takes down a hypervisor under test.
    pub hostile_skip: &'a str,
    /// The whole command line, for unknown-word reporting.
    raw: &'a str,
}

/// The attack groups `hostile.skip=` may name: the categories, and the xenstore
/// attacks' raw wire messages (and among them the three whose payload has no NUL),
/// unread replies and oversized header apart.
pub const HOSTILE_GROUPS: [&str; 14] = [
    "hypercall",
    "evtchn",
    "xenstore",
    "xenstore-raw",
    "xenstore-unterminated",
    "xenstore-unread",
    "xenstore-oversized",
    "blkif",
    "netif",
    "ide",
    "virtio",
    "e1000",
    "virtio-net",
    "none",
];

impl Options<'_> {
    /// Whether `hostile.skip=` names `group`.
    pub fn hostile_skips(&self, group: &str) -> bool {
        self.hostile_skip.split(',').any(|g| g == group)
    }
}

/// Default heap size.
pub const DEFAULT_HEAP: u64 = 4 << 20;
/// Smallest heap accepted.
pub const MIN_HEAP: u64 = 64 << 10;
/// Largest heap accepted.
pub const MAX_HEAP: u64 = 1 << 30;

/// A malformed value for a known option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadOption<'a> {
    /// The offending word.
    pub word: &'a str,
    /// What is accepted.
    pub expected: &'static str,
}

impl fmt::Display for BadOption<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad option '{}': expected {}", self.word, self.expected)
    }
}

const KNOWN: [&str; 5] = ["console", "loglevel", "selftest", "heap", "hostile.skip"];

impl<'a> Options<'a> {
    /// Parses a command line.
    pub fn parse(cmdline: &'a str) -> Result<Self, BadOption<'a>> {
        let mut o = Options {
            console: ConsoleSel::AUTO,
            loglevel: LogLevel::Info,
            selftest: SelfTests {
                boot: true,
                ..Default::default()
            },
            heap_bytes: DEFAULT_HEAP,
            hostile_skip: "",
            raw: cmdline,
        };
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "console" => {
                    o.console = parse_console(value).ok_or(BadOption {
                        word,
                        expected: "auto, or a comma list of com1, e9, xen, xenio",
                    })?
                }
                "loglevel" => {
                    o.loglevel = match value {
                        "error" => LogLevel::Error,
                        "warn" => LogLevel::Warn,
                        "info" => LogLevel::Info,
                        "debug" => LogLevel::Debug,
                        "trace" => LogLevel::Trace,
                        _ => {
                            return Err(BadOption {
                                word,
                                expected: "error, warn, info, debug or trace",
                            });
                        }
                    }
                }
                "selftest" => o.selftest = parse_selftests(value).ok_or(BadOption {
                    word,
                    expected: "none, or a comma list of boot, xen, irq, hostile, fault, stack, panic, triple, hang",
                })?,
                "hostile.skip" => {
                    if !value.split(',').all(|g| HOSTILE_GROUPS.contains(&g)) {
                        return Err(BadOption {
                            word,
                            expected: "a comma list of hypercall, evtchn, xenstore, xenstore-raw, \
                                       xenstore-unterminated, xenstore-unread, \
                                       xenstore-oversized, blkif, netif, ide, virtio, e1000, \
                                       virtio-net, or none",
                        });
                    }
                    o.hostile_skip = value;
                }
                "heap" => {
                    o.heap_bytes = parse_size(value)
                        .filter(|s| (MIN_HEAP..=MAX_HEAP).contains(s))
                        .ok_or(BadOption {
                            word,
                            expected: "a size from 64K to 1024M",
                        })?;
                }
                _ => {}
            }
        }
        Ok(o)
    }

    /// Words this kernel does not understand (reported as warnings).
    pub fn unknown(&self) -> impl Iterator<Item = &'a str> {
        self.raw
            .split_ascii_whitespace()
            .filter(|w| match w.split_once('=') {
                Some((k, _)) => !KNOWN.contains(&k) && !crate::ioopts::is_known(k),
                None => true,
            })
    }
}

fn parse_console(v: &str) -> Option<ConsoleSel> {
    if v == "auto" {
        return Some(ConsoleSel::AUTO);
    }
    let mut c = ConsoleSel::default();
    for part in v.split(',') {
        match part {
            "com1" => c.com1 = true,
            "e9" => c.e9 = true,
            "xen" => c.xen = true,
            "xenio" => c.xenio = true,
            _ => return None,
        }
    }
    Some(c)
}

fn parse_selftests(v: &str) -> Option<SelfTests> {
    let mut s = SelfTests::default();
    if v == "none" {
        return Some(s);
    }
    for part in v.split(',') {
        match part {
            "boot" => s.boot = true,
            "fault" => s.fault = true,
            "stack" => s.stack = true,
            "panic" => s.panic = true,
            "triple" => s.triple = true,
            "hang" => s.hang = true,
            "xen" => s.xen = true,
            "irq" => s.irq = true,
            "hostile" => s.hostile = true,
            _ => return None,
        }
    }
    Some(s)
}

/// Parses `123`, `64K`, `4M`, `1G` (binary units).
pub fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = Options::parse("").unwrap();
        assert!(o.console.auto);
        assert_eq!(o.loglevel, LogLevel::Info);
        assert_eq!(
            o.selftest,
            SelfTests {
                boot: true,
                ..Default::default()
            }
        );
        assert_eq!(o.heap_bytes, DEFAULT_HEAP);
        assert_eq!(o.unknown().count(), 0);
    }

    #[test]
    fn all_options() {
        let o =
            Options::parse("console=com1,e9  loglevel=debug selftest=boot,fault heap=8M").unwrap();
        assert_eq!(
            o.console,
            ConsoleSel {
                com1: true,
                e9: true,
                ..ConsoleSel::default()
            }
        );
        let xen = Options::parse("console=xen,e9").unwrap().console;
        assert!(xen.xen && xen.e9 && !xen.xenio && !xen.auto && xen.wants_xen());
        let xenio = Options::parse("console=xenio").unwrap().console;
        assert!(xenio.xenio && !xenio.xen && xenio.wants_xen());
        assert!(!Options::parse("console=auto").unwrap().console.wants_xen());
        assert_eq!(o.loglevel, LogLevel::Debug);
        assert!(o.selftest.boot && o.selftest.fault && !o.selftest.hang);
        assert_eq!(o.heap_bytes, 8 << 20);
    }

    #[test]
    fn selftest_none_disables_boot_tests() {
        assert_eq!(
            Options::parse("selftest=none").unwrap().selftest,
            SelfTests::default()
        );
        let o = Options::parse("selftest=hang").unwrap();
        assert!(o.selftest.hang && !o.selftest.boot);
        assert!(Options::parse("selftest=stack").unwrap().selftest.stack);
        let o = Options::parse("selftest=boot,xen").unwrap();
        assert!(o.selftest.xen && o.selftest.boot && !o.selftest.hang);
        let o = Options::parse("selftest=hostile").unwrap();
        assert!(o.selftest.hostile && !o.selftest.boot && !o.selftest.xen);
        let o = Options::parse("selftest=irq").unwrap();
        assert!(o.selftest.irq && !o.selftest.boot && !o.selftest.xen);
        let o = Options::parse("selftest=panic,triple").unwrap();
        assert!(o.selftest.panic && o.selftest.triple && !o.selftest.fault && !o.selftest.boot);
    }

    #[test]
    fn hostile_skip_names_attack_groups() {
        let o = Options::parse("selftest=hostile hostile.skip=xenstore-raw,netif").unwrap();
        assert!(o.hostile_skips("xenstore-raw") && o.hostile_skips("netif"));
        assert!(!o.hostile_skips("xenstore") && !o.hostile_skips("blkif"));
        // A group's name is not a prefix of another's.
        assert!(!o.hostile_skips("xenstore-unterminated"));
        let o = Options::parse("selftest=hostile hostile.skip=xenstore-unterminated").unwrap();
        assert!(o.hostile_skips("xenstore-unterminated") && !o.hostile_skips("xenstore-raw"));
        assert!(
            !Options::parse("selftest=hostile")
                .unwrap()
                .hostile_skips("netif")
        );
        assert_eq!(o.unknown().count(), 0);
        for bad in ["hostile.skip=", "hostile.skip=netif,", "hostile.skip=all"] {
            assert!(Options::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_words_are_reported_not_fatal() {
        let o = Options::parse("quiet foo=bar heap=1M").unwrap();
        assert_eq!(o.unknown().collect::<Vec<_>>(), vec!["quiet", "foo=bar"]);
    }

    #[test]
    fn malformed_known_options_are_errors() {
        for bad in [
            "console=vga",
            "console=",
            "console=xen,",
            "console=pv",
            "loglevel=loud",
            "selftest=boot,xyz",
            "heap=lots",
            "heap=1K",
            "heap=2G",
            "heap=99999999999999999999G",
        ] {
            let e = Options::parse(bad).unwrap_err();
            assert_eq!(e.word, bad);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("3m"), Some(3 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("18446744073709551615K"), None);
    }
}
