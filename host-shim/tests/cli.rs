//! Runs the `host-shim` binary: bad input must give exactly one error line and status
//! 125; with KVM, a guest's output, status, crash and timeout reach the caller.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Asm, hello_kernel, kvm_usable};
use host_shim::testing::ElfBuilder;

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

fn shim(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_host-shim"))
        .args(args)
        .output()
        .expect("run host-shim");
    Run {
        status: out.status.code().expect("exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `bytes` to a file private to this test.
fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-shim-cli");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Asserts one stderr line, exactly `host-shim: error: <message>`, and status 125.
fn assert_error(run: &Run, message: &str) {
    assert_eq!(run.stderr, format!("host-shim: error: {message}\n"));
    assert_eq!(run.status, 125, "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn missing_kernel_file() {
    let run = shim(&["run", "--kernel", "/nonexistent/kernel.elf"]);
    assert_error(
        &run,
        "kernel /nonexistent/kernel.elf: cannot read: No such file or directory (os error 2)",
    );
}

#[test]
fn kernel_is_a_directory() {
    let run = shim(&["run", "--kernel", "/"]);
    assert_error(&run, "kernel /: cannot read: is a directory");
}

#[test]
fn kernel_is_a_device() {
    let run = shim(&["run", "--kernel", "/dev/zero"]);
    assert_error(&run, "kernel /dev/zero: cannot read: not a regular file");
}

#[test]
fn kernel_is_not_an_elf() {
    let k = file("notes.txt", b"just some text\n");
    let run = shim(&["run", "--kernel", path_str(&k)]);
    assert_error(
        &run,
        &format!("kernel {}: not an ELF file (bad magic)", k.display()),
    );
}

#[test]
fn elf_without_pvh_note() {
    let k = file(
        "no-note.elf",
        &ElfBuilder::new().segment(0x10_0000, &[0xf4]).build(),
    );
    let run = shim(&["run", "--kernel", path_str(&k)]);
    assert_error(
        &run,
        &format!(
            "kernel {}: has no XEN_ELFNOTE_PHYS32_ENTRY note; not a PVH kernel",
            k.display()
        ),
    );
}

#[test]
fn modules_too_large_for_memory_are_refused_with_the_reason() {
    let k = file(
        "small.elf",
        &ElfBuilder::new()
            .segment(0x10_0000, &[0xf4])
            .pvh_entry(0x10_0000)
            .build(),
    );
    let m = file("module.bin", &vec![0u8; 3 << 20]);
    let spec = format!("{},cmdline=first", m.display());
    let run = shim(&[
        "run",
        "--kernel",
        path_str(&k),
        "--mem",
        "4",
        "--module",
        &spec,
        "--module",
        &spec,
    ]);
    assert_error(
        &run,
        "the boot modules (6291456 bytes in all, page aligned) do not fit in guest RAM above \
         the kernel (which ends at 0x100001); give the guest more memory (--mem)",
    );
    let run = shim(&[
        "run",
        "--kernel",
        path_str(&k),
        "--module",
        "/nonexistent/m",
    ]);
    assert_error(
        &run,
        "module /nonexistent/m: cannot read: No such file or directory (os error 2)",
    );
}

#[test]
fn image_too_large_for_memory() {
    let k = file(
        "big.elf",
        &ElfBuilder::new()
            .segment_with_memsz(0x10_0000, &[0xf4], 8 << 20)
            .pvh_entry(0x10_0000)
            .build(),
    );
    let run = shim(&["run", "--kernel", path_str(&k), "--mem", "4"]);
    assert_error(
        &run,
        &format!(
            "kernel {}: segment 0 [0x100000, 0x900000) does not fit in the guest's 4 MiB of \
             RAM ([0x0, 0x400000))",
            k.display()
        ),
    );
}

#[test]
fn absurd_memory_sizes() {
    for mem in ["0", "10000000"] {
        let run = shim(&["run", "--kernel", "/nonexistent", "--mem", mem]);
        assert_error(
            &run,
            &format!("memory size {mem} MiB is out of range (2..=65536 MiB)"),
        );
    }
}

#[test]
fn command_line_too_long() {
    let k = file("ok.elf", &hello_kernel("x", 0));
    let long = "a".repeat(5000);
    let run = shim(&["run", "--kernel", path_str(&k), "--cmdline", &long]);
    assert_error(
        &run,
        "command line is 5000 bytes; at most 4095 fit in its page",
    );
    // Reported before the kernel is looked at.
    let run = shim(&["run", "--kernel", "/nonexistent", "--cmdline", &long]);
    assert_error(
        &run,
        "command line is 5000 bytes; at most 4095 fit in its page",
    );
}

#[test]
fn syntax_errors_are_one_line_too() {
    let run = shim(&["run", "--kernel", "k", "--mem", "lots"]);
    assert_eq!(run.status, 125);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("host-shim: error: invalid value 'lots' for '--mem <MIB>'")
    );
    let run = shim(&[]);
    assert_error(&run, "missing subcommand; try 'host-shim --help'");
}

#[test]
fn help_documents_exit_statuses() {
    let run = shim(&["run", "--help"]);
    assert_eq!(run.status, 0);
    for needle in [
        "--kernel <FILE>",
        "--timeout <SECS>",
        "124",
        "125",
        "126",
        "0xf4",
    ] {
        assert!(
            run.stdout.contains(needle),
            "help lacks {needle}:\n{}",
            run.stdout
        );
    }
}

#[test]
fn guest_output_status_and_stats() {
    if !kvm_usable("guest_output_status_and_stats") {
        return;
    }
    let k = file("hello.elf", &hello_kernel("hello, shim\n", 3));
    let stats = file("hello-stats.json", b"");
    let run = shim(&[
        "run",
        "--kernel",
        path_str(&k),
        "--mem",
        "8",
        "--timeout",
        "30",
        "--stats",
        "--stats-file",
        path_str(&stats),
    ]);
    assert_eq!(run.stdout, "hello, shim\n");
    assert_eq!(run.status, 3, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stderr).expect("stats JSON");
    assert_eq!(json["outcome"]["kind"], "exited");
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["stats"]["pio_ports"]["0xe9"], 12);
    assert_eq!(json["stats"]["exits"]["io_out"], 13);
    let from_file = std::fs::read_to_string(&stats).expect("stats file");
    assert_eq!(from_file.trim_end(), run.stderr.trim_end());
}

#[test]
fn crashed_guest_exits_126() {
    if !kvm_usable("crashed_guest_exits_126") {
        return;
    }
    // ud2 with the reset IDT (base 0, all gates absent): #UD, #NP, #DF, shutdown.
    let k = file("crash.elf", &Asm::new().raw(&[0x0f, 0x0b]).kernel());
    let run = shim(&["run", "--kernel", path_str(&k), "--timeout", "30"]);
    assert_eq!(run.status, 126, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("host-shim: error: guest triple-faulted (rip=0x100000, "),
        "{}",
        run.stderr
    );
}

#[test]
fn hung_guest_times_out_with_124() {
    if !kvm_usable("hung_guest_times_out_with_124") {
        return;
    }
    let k = file("hang.elf", &common::pvh_kernel(&[0xfa, 0xf4, 0xeb, 0xfd]));
    let run = shim(&["run", "--kernel", path_str(&k), "--timeout", "1", "--stats"]);
    assert_eq!(run.status, 124, "{}", run.stderr);
    let mut lines = run.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("host-shim: error: guest did not exit within 1 s")
    );
    // A tiny guest that never calls Xen: on a KVM that cannot intercept vmcall, the
    // shim says why a Xen guest might hang so.
    let mut next = lines.next().expect("stats line");
    if next.starts_with("host-shim: note: the guest made no hypercall") {
        next = lines.next().expect("stats line");
    }
    let json: serde_json::Value = serde_json::from_str(next).expect("JSON");
    assert_eq!(json["outcome"]["kind"], "timeout");
}

/// Runs the shim with stdout on a pipe that nobody reads, after `prepare` ran in the
/// child before exec; returns the exit status (the harness kills it after 60 s).
fn shim_unread_stdout(args: &[&str], block_sigrtmin: bool) -> Option<i32> {
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-shim"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    if block_sigrtmin {
        // SAFETY: runs in the forked child before exec and only changes its signal
        // mask with async-signal-safe calls.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGRTMIN());
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("run host-shim");
    // Keep the pipe open and unread: once its buffer is full, every console write of
    // the shim would block.
    let _stdout = child.stdout.take();
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code();
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn timeout_holds_when_host_stdout_blocks() {
    if !kvm_usable("timeout_holds_when_host_stdout_blocks") {
        return;
    }
    // Prints on port 0xe9 forever: fills the unread pipe, then the console queue.
    let mut asm = common::Asm::new();
    asm.label("top").out8(0xe9, b'A').jump(0xeb, "top");
    let k = file("flood.elf", &asm.kernel());
    let status = shim_unread_stdout(&["run", "--kernel", path_str(&k), "--timeout", "1"], false);
    assert_eq!(
        status,
        Some(124),
        "the shim hung on a blocked stdout (None) or failed"
    );
}

#[test]
fn timeout_holds_when_the_parent_blocked_the_kick_signal() {
    if !kvm_usable("timeout_holds_when_the_parent_blocked_the_kick_signal") {
        return;
    }
    let k = file("spin.elf", &common::pvh_kernel(&[0xeb, 0xfe]));
    let status = shim_unread_stdout(&["run", "--kernel", path_str(&k), "--timeout", "1"], true);
    assert_eq!(
        status,
        Some(124),
        "the shim ignored --timeout (None) or failed"
    );
}

#[test]
fn fifo_without_writer_is_an_error_not_a_hang() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-shim-cli");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let fifo = dir.join("no-writer.fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(path_str(&fifo)).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let run = shim(&["run", "--kernel", path_str(&fifo)]);
    assert_error(
        &run,
        &format!("kernel {}: not an ELF file (bad magic)", fifo.display()),
    );
}

#[test]
fn one_writer_per_disk_image() {
    use host_shim::hostio::disk::{DiskImage, DiskOptions};
    if !kvm_usable("one_writer_per_disk_image") {
        return;
    }
    let k = file("hello-disk.elf", &hello_kernel("ran\n", 0));
    let img = file("one-writer.img", &vec![0x5a; 1 << 20]);
    let run_with = |disks: &[String]| {
        let mut args = vec!["run", "--kernel", path_str(&k), "--mem", "8", "--no-xen"];
        for d in disks {
            args.extend(["--disk", d.as_str()]);
        }
        shim(&args)
    };
    let busy = format!(
        "disk {}: in use: another user has it open (one writer per image; given twice, \
         or to another running host-shim?)",
        path_str(&img)
    );
    let written = format!(
        "disk {}: in use: another user holds it for writing (its lock is exclusive)",
        path_str(&img)
    );
    // The same image given twice: refused before the guest runs.
    let twice = [
        format!("{},if=virtio", path_str(&img)),
        format!("{},if=virtio", path_str(&img)),
    ];
    assert_error(&run_with(&twice), &busy);
    // A reader beside a writer (the IDE disk is attached first).
    let mixed = [
        format!("{},if=virtio,ro", path_str(&img)),
        format!("{},if=ide", path_str(&img)),
    ];
    assert_error(&run_with(&mixed), &written);
    // Readers share it.
    let readers = [
        format!("{},if=virtio,ro", path_str(&img)),
        format!("{},if=virtio,ro", path_str(&img)),
    ];
    let run = run_with(&readers);
    assert_eq!(
        (run.status, run.stdout.as_str()),
        (0, "ran\n"),
        "{}",
        run.stderr
    );
    // Another process holding it for writing (another shim): refused, even read-only.
    let held = DiskImage::open(&img, DiskOptions::default()).expect("open");
    let run = run_with(&[format!("{},if=virtio,ro", path_str(&img))]);
    assert_error(&run, &written);
    let run = run_with(&[format!("{},if=virtio", path_str(&img))]);
    assert_error(&run, &busy);
    drop(held);
    let run = run_with(&[format!("{},if=virtio", path_str(&img))]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    // Nothing was written by any refused run.
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0x5a));
}

#[test]
fn an_unwritable_stats_file_is_refused_before_the_guest_runs() {
    let k = file("hello-stats-dir.elf", &hello_kernel("ran\n", 0));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let run = shim(&[
        "run",
        "--kernel",
        path_str(&k),
        "--stats-file",
        path_str(&dir),
    ]);
    assert_error(
        &run,
        &format!(
            "cannot write stats file {}: Is a directory (os error 21)",
            path_str(&dir)
        ),
    );
}

#[test]
fn a_disk_image_of_partial_sectors_is_refused() {
    if !kvm_usable("a_disk_image_of_partial_sectors_is_refused") {
        return;
    }
    let k = file("hello-partial.elf", &hello_kernel("ran\n", 0));
    let img = file("partial.img", &vec![0u8; 4096 + 100]);
    let run = shim(&[
        "run",
        "--kernel",
        path_str(&k),
        "--mem",
        "8",
        "--no-xen",
        "--disk",
        &format!("{},if=virtio", path_str(&img)),
    ]);
    assert_error(
        &run,
        &format!(
            "disk {}: 4196 bytes is not a whole number of 512-byte sectors (its last 100 \
             bytes would be unreachable; truncate or extend it)",
            path_str(&img)
        ),
    );
}

/// One hostile invocation: its arguments and the error it must give.
struct Hostile {
    args: Vec<String>,
    error: String,
    /// Refused only once KVM is open (device files are opened beside the VM).
    needs_kvm: bool,
}

/// Every hostile invocation is refused before any guest runs: one error line naming the
/// problem, status 125, nothing on stdout, never a panic or a hang.
#[test]
fn hostile_invocations_are_one_clear_error_each() {
    let good = file("hostile-good.elf", &hello_kernel("ran\n", 0));
    let k = path_str(&good).to_owned();
    let valid = std::fs::read(&good).unwrap();
    // ELFs: empty, truncated, another machine, the other byte order, 32-bit for ARM.
    let empty = file("hostile-empty.elf", b"");
    let truncated = file("hostile-truncated.elf", &valid[..40]);
    let mut arm = valid.clone();
    arm[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
    let arm = file("hostile-arm.elf", &arm);
    let mut big_endian = valid.clone();
    big_endian[5] = 2; // ELFDATA2MSB
    let big_endian = file("hostile-be.elf", &big_endian);
    let no_note = file(
        "hostile-no-note.elf",
        &ElfBuilder::new().segment(0x10_0000, &[0xf4]).build(),
    );
    // Images: empty, partial sectors, a directory, a device.
    let zero = file("hostile-zero.img", b"");
    let partial = file("hostile-partial.img", &[0u8; 1000]);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let d = path_str(&dir).to_owned();
    let (zero, partial) = (path_str(&zero).to_owned(), path_str(&partial).to_owned());
    let ok_img = file("hostile-ok.img", &vec![0u8; 1 << 20]);
    let img = path_str(&ok_img).to_owned();

    let run_args = |extra: &[&str]| {
        let mut v: Vec<String> = ["run", "--kernel", k.as_str()].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let case = |args: Vec<String>, error: &str| Hostile {
        args,
        error: error.into(),
        needs_kvm: false,
    };
    let kvm_case = |args: Vec<String>, error: &str| Hostile {
        args,
        error: error.into(),
        needs_kvm: true,
    };
    let kernel = |p: &PathBuf| ["run", "--kernel", path_str(p)].map(String::from).to_vec();
    let cases = vec![
        case(kernel(&empty), "not an ELF file"),
        case(kernel(&truncated), "truncated"),
        case(kernel(&arm), "machine"),
        case(kernel(&big_endian), "little-endian"),
        case(kernel(&no_note), "not a PVH kernel"),
        case(kernel(&dir), "is a directory"),
        case(
            ["run", "--kernel", "/dev/null"].map(String::from).to_vec(),
            "not a regular file",
        ),
        case(
            ["run", "--kernel", "/nonexistent/k"]
                .map(String::from)
                .to_vec(),
            "No such file",
        ),
        case(run_args(&["--mem", "1"]), "out of range"),
        case(run_args(&["--mem", "99999999"]), "out of range"),
        case(run_args(&["--mem", "-5"]), "'-5'"),
        case(run_args(&["--timeout", "-1"]), "'-1'"),
        case(run_args(&["--timeout", "NaN"]), "--timeout"),
        case(run_args(&["--domid", "0"]), "--domid"),
        case(run_args(&["--domid", "40000"]), "--domid"),
        case(run_args(&["--name", "a b"]), "not a domain name"),
        case(run_args(&["--name", ""]), "not a domain name"),
        case(run_args(&["--cmdline", &"x".repeat(5000)]), "at most 4095"),
        case(run_args(&["--initrd", &d]), "is a directory"),
        case(run_args(&["--module", "/nonexistent/m"]), "No such file"),
        case(run_args(&["--stats-file", &d]), "cannot write stats file"),
        case(run_args(&["--disk", ""]), "--disk"),
        case(run_args(&["--disk", "x.img,if=scsi"]), "unknown interface"),
        case(run_args(&["--disk", "x.img,create=2T"]), "--disk"),
        case(run_args(&["--disk", "x.img,create=3"]), "--disk"),
        case(run_args(&["--disk", "x.img,ro,create=1M"]), "--disk"),
        case(run_args(&["--net", "model=e1000"]), "needs tap=NAME"),
        case(run_args(&["--net", "tap="]), "not an interface name"),
        case(run_args(&["--net", "tap=a/b"]), "not an interface name"),
        case(
            run_args(&["--net", "tap=t,mac=00:00:00:00:00:00"]),
            "not a unicast MAC",
        ),
        case(
            run_args(&["--net", "tap=t,mac=01:00:5e:00:00:01"]),
            "not a unicast MAC",
        ),
        case(run_args(&["--net", "tap=t,model=rtl8139"]), "unknown model"),
        case(
            run_args(&["--net", "tap=t,model=e1000", "--net", "tap=t,model=virtio"]),
            "TAP t is given to two --net devices",
        ),
        case(
            run_args(&["--no-xen", "--disk", &img]),
            "need the Xen interface",
        ),
        case(
            run_args(&[
                "--no-xen",
                "--disk",
                &format!("{img},if=ide"),
                "--disk",
                &format!("{img},if=ide,ro"),
            ]),
            "one --disk with if=ide",
        ),
        kvm_case(
            run_args(&["--no-xen", "--disk", &format!("{zero},if=virtio")]),
            "empty",
        ),
        kvm_case(
            run_args(&["--no-xen", "--disk", &format!("{partial},if=ide")]),
            "not a whole number of 512-byte sectors",
        ),
        kvm_case(
            run_args(&["--no-xen", "--disk", &format!("{d},if=virtio")]),
            "Is a directory",
        ),
        kvm_case(
            run_args(&["--no-xen", "--disk", "/dev/null,if=virtio"]),
            "empty",
        ),
        kvm_case(
            run_args(&["--no-xen", "--disk", "/nonexistent/d.img,if=virtio"]),
            "No such file",
        ),
        case(
            ["bench", "--kernel", k.as_str(), "--paths", "xen,floppy"]
                .map(String::from)
                .to_vec(),
            "floppy",
        ),
        case(
            ["bench", "--kernel", k.as_str(), "--place", "a\tb"]
                .map(String::from)
                .to_vec(),
            "--place",
        ),
        case(
            ["bench", "--kernel", "/nonexistent/k"]
                .map(String::from)
                .to_vec(),
            "No such file",
        ),
    ];
    assert!(cases.len() >= 30, "the issue asks for at least 30");
    let kvm = kvm_usable("hostile_invocations_are_one_clear_error_each (the device cases)");
    let mut wrong = Vec::new();
    for c in cases.iter().filter(|c| kvm || !c.needs_kvm) {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let run = shim(&args);
        let ok = run.status == 125
            && run.stdout.is_empty()
            && run.stderr.lines().count() == 1
            && run.stderr.starts_with("host-shim: error: ")
            && run.stderr.contains(&c.error);
        if !ok {
            wrong.push(format!(
                "{:?}: status {} stdout {:?} stderr {:?} (wanted {:?})",
                c.args, run.status, run.stdout, run.stderr, c.error
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
