//! A 32-bit PVH kernel makes correct hypercalls under host-shim, end to end.
//!
//! The kernel is a page of GNU assembly ([`KERNEL_S`]), assembled and linked here by
//! the system's binutils into an ELF32 `EM_386` image at 1 MiB whose `PT_NOTE` carries
//! `XEN_ELFNOTE_PHYS32_ENTRY` with a 4-byte descriptor. Entered in 32-bit protected
//! mode with paging off (`docs/misc/pvh.pandoc`), it finds Xen by CPUID, installs the
//! hypercall page from 32-bit code, and checks each result in assembly: `xen_version`,
//! `XENMEM_add_to_physmap` in its compat layout (then that the shim wrote vCPU 0's
//! clock into the mapped shared_info), `EVTCHNOP_alloc_unbound` (the port written
//! back), `EVTCHNOP_close` of a bad port (`-EINVAL` intact in 32 bits), `set_timer_op`
//! (deadline split over `ebx`/`ecx`); then that shared_info is in Xen's 32-bit layout
//! (the wallclock at 0x904, an event on a loopback channel in 32-bit PENDING words and
//! the 32-bit selector), a multicall of 300 entries in the compat layout (which
//! host-shim preempts after 256 and continues through the 32-bit stub's `ebx` and
//! `ecx`: each entry's result checked), then `console_io` and `SCHEDOP_shutdown`. The third test runs
//! the same image on real Xen 4.17 (`scripts/xen-in-qemu.sh`): the two must agree.
//!
//! The numbers in the assembly are transcribed from Xen's public headers rather than
//! taken from `pv_drivers::abi`, which the shim shares: the test is a second witness of
//! the ABI, not the shim agreeing with itself.
//!
//! A failed check prints `pvh32: FAIL step N` through `console_io` and shuts down with
//! `SHUTDOWN_crash`, which `host-shim run` reports as `Outcome::XenShutdown { reason: 3 }`
//! and exit status 126 (`EXIT_GUEST_CRASHED`; `SHUTDOWN_watchdog` maps there too, every
//! other reason to 0). A failure in step 1 may come before the hypercall page works, so
//! it goes out by the debug console (port 0xe9) and the exit port (status 3) instead.
//! The second test builds the kernel expecting the wrong Xen version, to show that the
//! checks can fail.
//!
//! Skips loudly where /dev/kvm or GNU `as` is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::{Run, kvm_available, run_shim, stats_json, target_dir};

const TIMEOUT: &str = "60";

/// The kernel. `--defsym BROKEN=1` makes step 2 expect Xen 4.16.
const KERNEL_S: &str = r#"
# A 32-bit PVH kernel that checks host-shim's hypercalls from 32-bit code.
        .code32

        # Xen's numbers (xen/include/public/xen.h, version.h, memory.h,
        # event_channel.h, sched.h, arch-x86/cpuid.h).
        .set XEN_CPUID_BASE,              0x40000000
        .set HYPERVISOR_memory_op,        12
        .set HYPERVISOR_multicall,        13
        .set HYPERVISOR_set_timer_op,     15
        .set HYPERVISOR_xen_version,      17
        .set HYPERVISOR_console_io,       18
        .set HYPERVISOR_sched_op,         29
        .set HYPERVISOR_event_channel_op, 32
        .set XENVER_version,              0
        .set XENMEM_add_to_physmap,       7
        .set XENMAPSPACE_shared_info,     0
        .set EVTCHNOP_bind_interdomain,   0
        .set EVTCHNOP_close,              3
        .set EVTCHNOP_send,               4
        .set EVTCHNOP_alloc_unbound,      6
        .set CONSOLEIO_write,             0
        .set SCHEDOP_shutdown,            2
        .set SHUTDOWN_poweroff,           0
        .set SHUTDOWN_crash,              3
        .set DOMID_SELF,                  0x7ff0
        .set EINVAL,                      22
        .set EPERM,                       1
        # Entries in step 9's multicall: more than host-shim runs before it preempts
        # one (256).
        .set MC_ENTRIES,                  300
        # vcpu_info[0].time.tsc_to_system_mul in shared_info: `time` is at 32 in
        # vcpu_info and the multiplier at 24 in vcpu_time_info, in the 32-bit and the
        # 64-bit layout alike; it is never 0 once published.
        .set TSC_MUL_AT,                  32 + 24
        # The shim's debug console and exit port: the only ways out before the
        # hypercall page works.
        .set DEBUGCON,                    0xe9
        .set EXIT_PORT,                   0xf4

        .ifdef BROKEN
        .set WANT_VERSION, 0x00040010   # deliberately wrong (4.16): step 2 must fail
        .else
        .set WANT_VERSION, 0x00040011   # Xen 4.17, major << 16 | minor
        .endif

        # hypercall NR: calls stub NR of the page; arguments in ebx ecx edx esi edi,
        # result in eax.
        .macro hypercall nr
        call hypercall_page + 32 * \nr
        .endm

        # check COND, STEP: after a cmp, fails step STEP unless COND (e, ne, ...) holds.
        .macro check cond, step
        j\cond 1f
        mov $\step, %eax
        jmp fail
1:
        .endm

        .text
        .globl pvh_start
pvh_start:
        # PVH entry: flat 32-bit protected mode, paging off, no stack.
        mov $stack_top, %esp
        cld

        # 1. Find Xen: the signature leaf says "XenVMMXenVMM" and reaches base+2, which
        #    names one hypercall page and its MSR. Writing the page's address there
        #    from 32-bit code fills it with 32-bit stubs, stub N starting `mov $N, %eax`.
        mov $XEN_CPUID_BASE, %eax
        cpuid
        cmp $XEN_CPUID_BASE + 2, %eax
        check ae, 1
        cmp $0x566e6558, %ebx           # "XenV"
        check e, 1
        cmp $0x65584d4d, %ecx           # "MMXe"
        check e, 1
        cmp $0x4d4d566e, %edx           # "nVMM"
        check e, 1
        mov $XEN_CPUID_BASE + 2, %eax
        cpuid
        cmp $1, %eax                    # pages
        check e, 1
        cmp $0x40000000, %ebx           # the MSR
        check e, 1
        mov %ebx, %ecx
        mov $hypercall_page, %eax
        xor %edx, %edx
        wrmsr
        cmpb $0xb8, hypercall_page + 32 * HYPERVISOR_xen_version
        check e, 1
        cmpl $HYPERVISOR_xen_version, hypercall_page + 32 * HYPERVISOR_xen_version + 1
        check e, 1

        # 2. xen_version(XENVER_version, NULL) is major << 16 | minor.
        mov $XENVER_version, %ebx
        xor %ecx, %ecx
        hypercall HYPERVISOR_xen_version
        cmp $WANT_VERSION, %eax
        check e, 2

        # 3. Map shared_info at a zeroed page of .bss, the request in the compat
        #    layout (idx and gpfn 32 bits); the shim publishes vCPU 0's clock there.
        cmpl $0, shared_info + TSC_MUL_AT
        check e, 3
        mov $shared_info, %eax
        shr $12, %eax
        mov %eax, xatp_gpfn
        mov $XENMEM_add_to_physmap, %ebx
        mov $xatp, %ecx
        hypercall HYPERVISOR_memory_op
        cmp $0, %eax
        check e, 3
        cmpl $0, shared_info + TSC_MUL_AT
        check ne, 3

        # 4. An unbound port for ourselves comes back in the structure; closing a port
        #    that does not exist is -EINVAL, all 32 bits of it.
        mov $EVTCHNOP_alloc_unbound, %ebx
        mov $alloc_unbound, %ecx
        hypercall HYPERVISOR_event_channel_op
        cmp $0, %eax
        check e, 4
        cmpl $0, alloc_unbound_port
        check ne, 4
        mov $EVTCHNOP_close, %ebx
        mov $close_bad, %ecx
        hypercall HYPERVISOR_event_channel_op
        cmp $-EINVAL, %eax
        check e, 4

        # 5. set_timer_op's 64-bit deadline is split low/high over ebx/ecx; 0 stops
        #    the timer.
        xor %ebx, %ebx
        xor %ecx, %ecx
        hypercall HYPERVISOR_set_timer_op
        cmp $0, %eax
        check e, 5

        # 7. shared_info is in the 32-bit layout (the page was installed from 32-bit
        #    code): the wallclock's wc_sec at 0x904, nothing where the 64-bit layout
        #    puts it (0xc04).
        cmpl $0, shared_info + 0x904
        check ne, 7
        cmpl $0, shared_info + 0xc04
        check e, 7

        # 8. A loopback channel: a port unbound for ourselves, bound to from a second
        #    port, then an event sent through the second. The first port's PENDING bit
        #    is in 32-bit words at 0x800 and its selector bit in the 32-bit
        #    evtchn_pending_sel at offset 4 of vcpu_info[0].
        mov $EVTCHNOP_alloc_unbound, %ebx
        mov $loop_unbound, %ecx
        hypercall HYPERVISOR_event_channel_op
        cmp $0, %eax
        check e, 8
        mov loop_unbound_port, %eax
        mov %eax, loop_bind_remote
        mov $EVTCHNOP_bind_interdomain, %ebx
        mov $loop_bind, %ecx
        hypercall HYPERVISOR_event_channel_op
        cmp $0, %eax
        check e, 8
        mov loop_bind_local, %eax
        mov %eax, loop_send
        mov $EVTCHNOP_send, %ebx
        mov $loop_send, %ecx
        hypercall HYPERVISOR_event_channel_op
        cmp $0, %eax
        check e, 8
        mov loop_unbound_port, %eax     # the word: shared_info + 0x800 + 4 * (port / 32)
        mov %eax, %ecx
        shr $5, %eax
        and $31, %ecx
        bt %ecx, shared_info + 0x800(,%eax,4)
        check c, 8
        bt %eax, shared_info + 4        # the selector bit of that word
        check c, 8

        # 9. A multicall of MC_ENTRIES entries in the compat layout (32 bytes: u32 op,
        #    result, args[6]), each xen_version(XENVER_version, NULL), results preset
        #    to 0. host-shim preempts it after 256 entries and sets the stub to run
        #    again with ebx (the list) and ecx (the count) advanced; Xen may preempt
        #    it too. Every entry must run once, with its own result.
        mov $mc_list, %edi
        mov $MC_ENTRIES, %ecx
1:      movl $HYPERVISOR_xen_version, (%edi)
        movl $0, 4(%edi)
        movl $XENVER_version, 8(%edi)
        movl $0, 12(%edi)
        add $32, %edi
        loop 1b
        mov $mc_list, %ebx
        mov $MC_ENTRIES, %ecx
        hypercall HYPERVISOR_multicall
        cmp $0, %eax
        check e, 9
        mov $mc_list, %edi
        mov $MC_ENTRIES, %ecx
2:      cmpl $WANT_VERSION, 4(%edi)
        check e, 9
        add $32, %edi
        loop 2b

        # 6. Say so and power off. console_io answers 0, or -EPERM where Xen keeps it
        #    from a domU (real Xen without a debug build): both are correct.
        mov $ok_msg, %edx
        mov $ok_len, %ecx
        call print
        cmp $0, %eax
        je 1f
        cmp $-EPERM, %eax
        check e, 6
1:      mov $SHUTDOWN_poweroff, %eax
        jmp shutdown

# fail: reports step %eax (1..9) and crashes. Step 1 may have failed before the
# hypercall page works: then by the debug console and the exit port (status 3).
fail:
        add $'0', %al
        mov %al, fail_digit
        cmp $'1', %al
        je 1f
        mov $fail_msg, %edx
        mov $fail_len, %ecx
        call print
        mov $SHUTDOWN_crash, %eax
        jmp shutdown
1:      mov $fail_msg, %esi
        mov $fail_len, %ecx
        mov $DEBUGCON, %dx
        rep outsb
        mov $3, %al
        out %al, $EXIT_PORT
        jmp halt

# print: %ecx bytes at %edx to the debug console (port 0xe9, which Xen forwards to
# its log as "(dN)" lines) and through console_io(CONSOLEIO_write); result in eax.
print:
        push %ecx
        mov %edx, %esi
        mov $DEBUGCON, %dx
        rep outsb
        mov %esi, %edx
        pop %ecx
        sub %ecx, %edx
        mov $CONSOLEIO_write, %ebx
        hypercall HYPERVISOR_console_io
        ret

# shutdown: SCHEDOP_shutdown with reason %eax; does not return.
shutdown:
        mov %eax, sched_shutdown
        mov $SCHEDOP_shutdown, %ebx
        mov $sched_shutdown, %ecx
        hypercall HYPERVISOR_sched_op
halt:   hlt
        jmp halt

        .data
        .balign 4
# struct compat_add_to_physmap: u16 domid, u16 size; u32 space, idx, gpfn.
xatp:   .word DOMID_SELF, 0
        .long XENMAPSPACE_shared_info, 0
xatp_gpfn:
        .long 0
# struct evtchn_alloc_unbound: u16 dom, u16 remote_dom (0: domain 0); u32 port (out).
alloc_unbound:
        .word DOMID_SELF, 0
alloc_unbound_port:
        .long 0
# The loopback: evtchn_alloc_unbound {dom, remote_dom: both DOMID_SELF; port},
# evtchn_bind_interdomain {u16 remote_dom, u32 remote_port, u32 local_port (out)},
# evtchn_send {u32 port}.
loop_unbound:
        .word DOMID_SELF, DOMID_SELF
loop_unbound_port:
        .long 0
loop_bind:
        .word DOMID_SELF, 0
loop_bind_remote:
        .long 0
loop_bind_local:
        .long 0
loop_send:
        .long 0
# struct evtchn_close: u32 port; no guest has port 0xffff.
close_bad:
        .long 0xffff
# struct sched_shutdown: u32 reason.
sched_shutdown:
        .long 0
ok_msg: .ascii "pvh32: all hypercalls correct\n"
        .set ok_len, . - ok_msg
fail_msg:
        .ascii "pvh32: FAIL step "
fail_digit:
        .ascii "?\n"
        .set fail_len, . - fail_msg

        # The PVH note (xen/include/public/elfnote.h): name "Xen", type 18
        # (XEN_ELFNOTE_PHYS32_ENTRY), the 32-bit entry address.
        .section .note.Xen, "a", @note
        .balign 4
        .long 4, 4, 18                  # namesz, descsz, type
        .asciz "Xen"
        .long pvh_start

        .bss
        .balign 4096
hypercall_page:
        .skip 4096
shared_info:
        .skip 4096
mc_list:
        .skip 32 * MC_ENTRIES
        .skip 4096                      # the stack
stack_top:
"#;

/// Code (with the note) and data in two segments from 1 MiB, the note also in a
/// `PT_NOTE` of its own; the notes `ld` would add are dropped.
const KERNEL_LD: &str = "\
ENTRY(pvh_start)
PHDRS {
    text PT_LOAD FLAGS(5);
    data PT_LOAD FLAGS(6);
    note PT_NOTE;
}
SECTIONS {
    . = 0x100000;
    .text : { *(.text) } :text
    .note.Xen : { *(.note.Xen) } :text :note
    . = ALIGN(4096);
    .data : { *(.data) } :data
    .bss : { *(.bss) } :data
    /DISCARD/ : { *(.note.gnu.property) *(.comment) }
}
";

const SUCCESS: &str = "pvh32: all hypercalls correct";

/// Whether GNU `as` runs here. When it does not, says so loudly on stderr (as
/// [`kvm_available`] does): the caller must skip, never pretend to pass.
fn gnu_as_available(test: &str) -> bool {
    let found = Command::new("as")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"GNU assembler"));
    if !found {
        // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: cannot build the 32-bit kernel (no GNU as; scripts/setup.sh \
             installs binutils); this KVM test did not run"
        );
    }
    found
}

/// Runs `program` in `dir`; panics with its output unless it succeeds. Returns stdout.
#[track_caller]
fn tool(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Assembles and links the kernel, with `defsyms` passed to `as`, in
/// `<target>/pvh32-test/<variant>/`: build products, kept there for a look with
/// readelf or objdump and overwritten by the next build of the same variant.
fn build_kernel(variant: &str, defsyms: &[&str]) -> PathBuf {
    let dir = target_dir().join("pvh32-test").join(variant);
    std::fs::create_dir_all(&dir).expect("create the kernel's build directory");
    std::fs::write(dir.join("pvh32.s"), KERNEL_S).expect("write pvh32.s");
    std::fs::write(dir.join("pvh32.ld"), KERNEL_LD).expect("write pvh32.ld");
    let mut as_args = vec!["--32", "-o", "pvh32.o", "pvh32.s"];
    for sym in defsyms {
        as_args.extend(["--defsym", sym]);
    }
    tool(&dir, "as", &as_args);
    let ld_args = [
        "-m",
        "elf_i386",
        "-T",
        "pvh32.ld",
        "-o",
        "pvh32.elf",
        "pvh32.o",
    ];
    tool(&dir, "ld", &ld_args);
    dir.join("pvh32.elf")
}

/// Asserts, with readelf rather than the shim's own parser, that `image` is an ELF32
/// i386 file with a `PT_NOTE` segment.
#[track_caller]
fn assert_elf32_with_note(image: &Path) {
    let dir = image.parent().expect("the image is in a directory");
    let path = image.to_str().expect("a UTF-8 path");
    let header = tool(dir, "readelf", &["-hW", path]);
    let field = |name: &str| {
        header
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("readelf -h shows no {name}:\n{header}"))
    };
    assert_eq!(field("Class:"), "ELF32", "{header}");
    assert_eq!(field("Machine:"), "Intel 80386", "{header}");
    let segments = tool(dir, "readelf", &["-lW", path]);
    assert!(
        segments
            .lines()
            .any(|l| l.trim_start().starts_with("NOTE ")),
        "no PT_NOTE segment:\n{segments}"
    );
}

/// Whether the guest printed `line` through `console_io`: on stdout, or on stderr
/// behind a domain prefix such as `(d1) `.
fn console_has(run: &Run, line: &str) -> bool {
    run.stdout
        .lines()
        .chain(run.stderr.lines())
        .any(|l| l.trim_end().ends_with(line))
}

#[test]
fn a_32_bit_pvh_kernel_makes_correct_hypercalls() {
    const TEST: &str = "pvh32::a_32_bit_pvh_kernel_makes_correct_hypercalls";
    if !kvm_available(TEST) || !gnu_as_available(TEST) {
        return;
    }
    let image = build_kernel("good", &[]);
    assert_elf32_with_note(&image);
    let run = run_shim(&image, "", &["--timeout", TIMEOUT, "--stats"]);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(console_has(&run, SUCCESS), "{}\n{}", run.stdout, run.stderr);

    let v = stats_json(&run.stderr);
    assert_eq!(v["outcome"]["kind"], "xen_shutdown", "{v}");
    assert_eq!(v["outcome"]["reason"], 0, "{v}");
    let xen = &v["stats"]["xen"];
    // Exactly the kernel's calls, so none was refused for its mode
    // (`refused.mode_mismatch`) or misnamed.
    assert_eq!(
        xen["hypercalls"],
        serde_json::json!({
            "xen_version.version": 1,
            "memory_op.add_to_physmap": 1,
            "event_channel_op.alloc_unbound": 2,
            "event_channel_op.bind_interdomain": 1,
            "event_channel_op.send": 1,
            "event_channel_op.close": 1,
            "set_timer_op": 1,
            // The multicall of 300 entries: run, preempted after 256, run again.
            "multicall": 2,
            "console_io": 1,
            "sched_op.shutdown": 1,
        }),
        "{v}"
    );
    assert_eq!(xen["hypercall_continuations"], 1, "{v}");
    assert_eq!(
        xen["multicall_entries"],
        serde_json::json!({ "xen_version.version": 300 }),
        "{v}"
    );
    // The one error is the deliberate close of port 0xffff.
    assert_eq!(xen["hypercall_errors"], 1, "{v}");
    // Each came through the 32-bit stubs' port exit.
    assert_eq!(v["stats"]["exits"]["hypercall"], 12, "{v}");
}

#[test]
fn a_failed_check_in_the_32_bit_kernel_crashes_the_guest() {
    const TEST: &str = "pvh32::a_failed_check_in_the_32_bit_kernel_crashes_the_guest";
    if !kvm_available(TEST) || !gnu_as_available(TEST) {
        return;
    }
    let image = build_kernel("broken", &["BROKEN=1"]);
    let run = run_shim(&image, "", &["--timeout", TIMEOUT, "--stats"]);
    assert_eq!(
        run.code(),
        Some(i32::from(host_shim::EXIT_GUEST_CRASHED)),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        console_has(&run, "pvh32: FAIL step 2"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        !console_has(&run, SUCCESS),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let v = stats_json(&run.stderr);
    assert_eq!(v["outcome"]["kind"], "xen_shutdown", "{v}");
    assert_eq!(
        v["outcome"]["reason"],
        pv_drivers::abi::sched::SHUTDOWN_CRASH,
        "{v}"
    );
    // It stopped at step 2: nothing of steps 3 to 5 ran.
    assert_eq!(
        v["stats"]["xen"]["hypercalls"],
        serde_json::json!({
            "xen_version.version": 1,
            "console_io": 1,
            "sched_op.shutdown": 1,
        }),
        "{v}"
    );
}

#[test]
fn the_same_32_bit_kernel_is_correct_on_real_xen() {
    const TEST: &str = "pvh32::the_same_32_bit_kernel_is_correct_on_real_xen";
    if !gnu_as_available(TEST) {
        return;
    }
    // Real Xen 4.17 (Debian's) in QEMU, a second implementation of what the shim
    // answers: the compat layouts, the 32-bit stubs, -EINVAL in 32 bits.
    let image = build_kernel("good", &[]);
    let mut cmd = Command::new(system_tests::workspace_root().join("scripts/xen-in-qemu.sh"));
    cmd.arg("--kernel").arg(&image).args(["--timeout", "120"]);
    let run = system_tests::run_with_limit(cmd, std::time::Duration::from_secs(900));
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(console_has(&run, SUCCESS), "{}\n{}", run.stdout, run.stderr);
}
