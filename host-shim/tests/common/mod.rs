//! Test support: a KVM availability check and a tiny 32-bit x86 assembler for guests
//! that run at the PVH entry (protected mode, paging off, flat segments).

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;

/// Where the test guests are loaded and entered.
pub const LOAD: u32 = 0x10_0000;

/// Whether KVM can be used; prints a loud SKIPPED line on stderr when it cannot.
///
/// The line goes straight to the stderr handle: libtest captures `eprintln!` of passing
/// tests, and a skip must not pass silently.
pub fn kvm_usable(test: &str) -> bool {
    let reason = if !std::path::Path::new("/dev/kvm").exists() {
        "/dev/kvm not present".to_owned()
    } else {
        match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => return true,
            Err(e) => format!("/dev/kvm not accessible: {e}"),
        }
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason} ({test})");
    false
}

/// 32-bit machine code with forward and backward 8-bit jumps to labels.
#[derive(Default)]
pub struct Asm {
    code: Vec<u8>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    /// Defines `name` here.
    pub fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.insert(name, self.code.len());
        self
    }

    /// Guest-physical address of the next byte.
    pub fn here(&self) -> u32 {
        LOAD + self.code.len() as u32
    }

    /// `jcc rel8` (or `jmp rel8` with opcode 0xeb) to `target`.
    pub fn jump(&mut self, opcode: u8, target: &'static str) -> &mut Self {
        self.code.push(opcode);
        self.fixups.push((self.code.len(), target));
        self.code.push(0);
        self
    }

    /// `mov al, imm8; out imm8, al`.
    pub fn out8(&mut self, port: u8, value: u8) -> &mut Self {
        self.raw(&[0xb0, value, 0xe6, port])
    }

    /// `mov dx, port`.
    pub fn mov_dx(&mut self, port: u16) -> &mut Self {
        let [lo, hi] = port.to_le_bytes();
        self.raw(&[0x66, 0xba, lo, hi])
    }

    /// Writes `text` to the debug console, one `out` per byte.
    pub fn print(&mut self, text: &str) -> &mut Self {
        for b in text.bytes() {
            self.out8(0xe9, b);
        }
        self
    }

    /// Writes `status` to the exit port, then spins if the write did not end the run.
    pub fn exit(&mut self, status: u8) -> &mut Self {
        self.out8(0xf4, status).raw(&[0xeb, 0xfe])
    }

    /// The code with jumps resolved.
    pub fn assemble(&self) -> Vec<u8> {
        let mut code = self.code.clone();
        for &(at, target) in &self.fixups {
            let dest = self.labels[target] as isize;
            let rel = dest - (at as isize + 1);
            code[at] = i8::try_from(rel).expect("jump in range") as u8;
        }
        code
    }

    /// A PVH kernel running this code from [`LOAD`].
    pub fn kernel(&self) -> Vec<u8> {
        pvh_kernel(&self.assemble())
    }
}

/// A PVH kernel whose code at [`LOAD`] is `code`.
pub fn pvh_kernel(code: &[u8]) -> Vec<u8> {
    host_shim::testing::pvh_kernel(code)
}

/// The guest that prints `text` on port 0xe9 and exits with `status`.
pub fn hello_kernel(text: &str, status: u8) -> Vec<u8> {
    Asm::new().print(text).exit(status).kernel()
}

/// A fresh scratch directory `<CARGO_TARGET_TMPDIR>/<suite>/<test>` (removed first if a
/// run left it behind).
pub fn scratch_dir(suite: &str, test: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(suite)
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Builds the guest image as scripts/run.sh does, into this workspace's target
/// directory (the one holding this test's host-shim binary), and returns its path.
pub fn guest_kernel() -> std::path::PathBuf {
    let target = std::path::Path::new(env!("CARGO_BIN_EXE_host-shim"))
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the binary lies in <target>/<profile>/")
        .to_path_buf();
    let status =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "guest-kernel",
                "--target",
                "x86_64-unknown-none",
            ])
            .status()
            .expect("run cargo to build the guest");
    assert!(status.success(), "building the guest failed: {status}");
    target.join("x86_64-unknown-none/release/guest-kernel")
}
