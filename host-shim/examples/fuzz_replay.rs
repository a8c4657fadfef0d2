//! Runs one fuzz target's body over a set of inputs, natively (no libFuzzer, no
//! sanitizer), to measure where an input's time goes:
//!
//! ```text
//! cargo build --release --example fuzz_replay
//! valgrind --tool=callgrind target/release/examples/fuzz_replay hypercall \
//!     host-shim/fuzz/seeds/hypercall
//! ```
//!
//! Arguments: the target's name, then files or directories of inputs (a directory's
//! files in name order). Prints the number of inputs run, the heap allocations per
//! input, and how many inputs ended with more allocations than frees: under
//! libFuzzer such an input is run a second time and then costs a LeakSanitizer scan
//! of the whole heap (up to 1000 times a run), so a body should free what it
//! allocates before it returns (no detached threads, no caches that grow).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use host_shim::testing;

/// The system allocator, counting.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counters have no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc is a free and an allocation, as ASan counts it.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        FREES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller's contract holds.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn body(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "hypercall" => |d| {
            let _ = testing::fuzz_hypercall(d);
        },
        "xenstore_decode" => testing::fuzz_xenstore,
        "blkback" => |d| {
            let _ = testing::fuzz_blkback(d);
        },
        "blkfront" => |d| {
            let _ = testing::fuzz_blkfront(d);
        },
        "netback" => |d| {
            let _ = testing::fuzz_netback(d);
        },
        "netfront" => |d| {
            let _ = testing::fuzz_netfront(d);
        },
        "e1000" => |d| {
            let _ = testing::fuzz_e1000(d);
        },
        "ide" => |d| {
            let _ = testing::fuzz_ide(d);
        },
        "pci_config" => |d| {
            let _ = testing::fuzz_pci_config(d);
        },
        "virtio_blk" => |d| {
            let _ = testing::fuzz_virtio_blk(d);
        },
        "virtio_net" => |d| {
            let _ = testing::fuzz_virtio_net(d);
        },
        _ => return None,
    })
}

fn inputs(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("reading the input directory")
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        out.extend(entries);
    } else {
        out.push(path.to_owned());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    let Some(run) = body(&target) else {
        eprintln!("usage: fuzz_replay TARGET INPUT...");
        std::process::exit(2);
    };
    let mut files = Vec::new();
    for arg in args {
        inputs(Path::new(&arg), &mut files);
    }
    let data: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("reading an input"))
        .collect();
    let (mut allocs, mut unbalanced) = (0, 0);
    for input in &data {
        let (a0, f0) = (ALLOCS.load(Ordering::SeqCst), FREES.load(Ordering::SeqCst));
        run(input);
        let (a1, f1) = (ALLOCS.load(Ordering::SeqCst), FREES.load(Ordering::SeqCst));
        allocs += a1 - a0;
        unbalanced += u64::from(a1 - a0 > f1 - f0);
    }
    let n = data.len().max(1) as u64;
    println!(
        "{target}: {} inputs, {} allocations an input, {unbalanced} with more allocations than frees",
        data.len(),
        allocs / n
    );
}
