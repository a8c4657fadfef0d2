//! Builders for tiny guest images, shared by the shim's unit tests, its integration
//! tests, its fuzz target, and the system tests that want a guest without building one.
//!
//! [`ElfBuilder`] writes an ELF64 x86-64 executable: the header, one `PT_LOAD` per
//! segment, and one 4-aligned `PT_NOTE` holding any extra notes followed by the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note with an 8-byte descriptor, as our guest emits it.
//!
//! [`xen_without_kvm`] gives the shim's Xen interface over plain memory, for tests that
//! need no vCPU.

pub mod fuzz;
pub mod fuzz_backends;
pub mod fuzz_devices;

pub use fuzz::{fuzz_hypercall, fuzz_xenstore};
pub use fuzz_backends::{fuzz_blkback, fuzz_blkfront, fuzz_netback, fuzz_netfront};
pub use fuzz_devices::{fuzz_e1000, fuzz_ide, fuzz_pci_config, fuzz_virtio_blk, fuzz_virtio_net};

use std::cell::RefCell;
use std::sync::Arc;

use pv_drivers::abi::xen::DomId;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::elf::{XEN_ELFNOTE_PHYS32_ENTRY, XEN_NOTE_NAME};
use crate::kvm::{InterruptLog, Interrupter};
use crate::xen::guest_mem::{GuestRam, PAGE_SIZE};
use crate::xen::xenstored::{DomainConfig, Quotas, Xenstored};
use crate::xen::{Xen, XenConfig};

#[derive(Debug, Clone)]
struct Segment {
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

#[derive(Debug, Clone)]
struct Note {
    name: Vec<u8>,
    n_type: u32,
    desc: Vec<u8>,
}

/// Builds a small ELF64 image in memory.
#[derive(Debug, Clone, Default)]
pub struct ElfBuilder {
    segments: Vec<Segment>,
    notes: Vec<Note>,
    pvh_desc: Option<Vec<u8>>,
    notes_filesz: Option<u64>,
    /// `Some(e_machine)`: an ELF32 image for that machine.
    elf32: Option<u16>,
}

impl ElfBuilder {
    /// An image with no segments and no notes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `PT_LOAD` segment at guest-physical `paddr` holding `data`.
    pub fn segment(self, paddr: u64, data: &[u8]) -> Self {
        let memsz = data.len() as u64;
        self.segment_with_memsz(paddr, data, memsz)
    }

    /// Adds a `PT_LOAD` segment whose `p_memsz` is `memsz` (may be smaller than the
    /// data, to build invalid images).
    pub fn segment_with_memsz(mut self, paddr: u64, data: &[u8], memsz: u64) -> Self {
        self.segments.push(Segment {
            paddr,
            data: data.to_vec(),
            memsz,
        });
        self
    }

    /// Adds the `XEN_ELFNOTE_PHYS32_ENTRY` note with `entry` as an 8-byte descriptor.
    pub fn pvh_entry(self, entry: u64) -> Self {
        self.pvh_descriptor(&entry.to_le_bytes())
    }

    /// Adds the `XEN_ELFNOTE_PHYS32_ENTRY` note with a raw descriptor.
    pub fn pvh_descriptor(mut self, desc: &[u8]) -> Self {
        self.pvh_desc = Some(desc.to_vec());
        self
    }

    /// Adds another note (placed before the PVH note).
    pub fn extra_note(mut self, name: &[u8], n_type: u32, desc: &[u8]) -> Self {
        self.notes.push(Note {
            name: name.to_vec(),
            n_type,
            desc: desc.to_vec(),
        });
        self
    }

    /// Builds an ELF32 image for `machine` (3 `EM_386`, 62 `EM_X86_64`) instead of ELF64.
    pub fn elf32(mut self, machine: u16) -> Self {
        self.elf32 = Some(machine);
        self
    }

    /// Overrides the `PT_NOTE` segment's `p_filesz` (to build malformed notes).
    pub fn truncate_notes(mut self, filesz: u64) -> Self {
        self.notes_filesz = Some(filesz);
        self
    }

    fn note_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let pvh = self.pvh_desc.as_ref().map(|desc| Note {
            name: XEN_NOTE_NAME.to_vec(),
            n_type: XEN_ELFNOTE_PHYS32_ENTRY,
            desc: desc.clone(),
        });
        for note in self.notes.iter().chain(pvh.as_ref()) {
            out.extend_from_slice(&(note.name.len() as u32).to_le_bytes());
            out.extend_from_slice(&(note.desc.len() as u32).to_le_bytes());
            out.extend_from_slice(&note.n_type.to_le_bytes());
            out.extend_from_slice(&note.name);
            out.resize(out.len().next_multiple_of(4), 0);
            out.extend_from_slice(&note.desc);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    /// The image's bytes.
    pub fn build(&self) -> Vec<u8> {
        let (ehdr, phdr_size) = if self.elf32.is_some() {
            (52, 32)
        } else {
            (64, 56)
        };
        let notes = self.note_bytes();
        let has_notes = !notes.is_empty() || self.notes_filesz.is_some();
        let phnum = self.segments.len() + usize::from(has_notes);
        let notes_at = ehdr + phdr_size * phnum;
        let mut data_at = (notes_at + notes.len()).next_multiple_of(16);

        let mut phdrs = Vec::new();
        let mut payload = Vec::new();
        let header = |p_type, flags, offset, paddr, filesz, memsz, align| Phdr {
            p_type,
            flags,
            offset,
            paddr,
            filesz,
            memsz,
            align,
        };
        for seg in &self.segments {
            phdrs.push(header(
                1,
                5,
                data_at as u64,
                seg.paddr,
                seg.data.len() as u64,
                seg.memsz,
                16,
            ));
            payload.extend_from_slice(&seg.data);
            data_at += seg.data.len();
        }
        if has_notes {
            let filesz = self.notes_filesz.unwrap_or(notes.len() as u64);
            phdrs.push(header(4, 4, notes_at as u64, 0, filesz, filesz, 4));
        }

        let entry = match &self.pvh_desc {
            Some(d) if d.len() >= 4 => u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])),
            _ => self.segments.first().map_or(0, |s| s.paddr),
        };
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF");
        let class = if self.elf32.is_some() { 1 } else { 2 };
        out.extend_from_slice(&[class, 1, 1, 0]); // class, little-endian, version 1, SysV
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out.extend_from_slice(&self.elf32.unwrap_or(62).to_le_bytes()); // e_machine
        out.extend_from_slice(&1u32.to_le_bytes());
        // e_entry, e_phoff, e_shoff: address-sized.
        for word in [entry, ehdr as u64, 0] {
            push_word(&mut out, word, self.elf32.is_some());
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&(ehdr as u16).to_le_bytes()); // e_ehsize
        out.extend_from_slice(&(phdr_size as u16).to_le_bytes()); // e_phentsize
        out.extend_from_slice(&(phnum as u16).to_le_bytes());
        out.extend_from_slice(&(phdr_size as u16).to_le_bytes()); // e_shentsize
        out.extend_from_slice(&[0; 4]); // e_shnum, e_shstrndx
        for p in phdrs {
            p.write(&mut out, self.elf32.is_some());
        }
        out.extend_from_slice(&notes);
        out.resize(out.len().next_multiple_of(16), 0);
        out.extend_from_slice(&payload);
        out
    }
}

/// Appends an address-sized ELF field: 4 bytes in ELF32 (truncated), 8 in ELF64.
fn push_word(out: &mut Vec<u8>, word: u64, elf32: bool) {
    if elf32 {
        out.extend_from_slice(&(word as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

/// A program header to write.
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

impl Phdr {
    /// Appends it in the ELF64 (56 bytes) or ELF32 (32 bytes) layout; `p_vaddr` is
    /// `p_paddr`.
    fn write(&self, out: &mut Vec<u8>, elf32: bool) {
        out.extend_from_slice(&self.p_type.to_le_bytes());
        if !elf32 {
            out.extend_from_slice(&self.flags.to_le_bytes());
        }
        for word in [self.offset, self.paddr, self.paddr, self.filesz, self.memsz] {
            push_word(out, word, elf32);
        }
        if elf32 {
            out.extend_from_slice(&self.flags.to_le_bytes());
        }
        push_word(out, self.align, elf32);
    }
}

/// A PVH kernel whose 32-bit code at `0x100000` is `code`, entered there.
pub fn pvh_kernel(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    ElfBuilder::new()
        .segment(LOAD, code)
        .pvh_entry(LOAD)
        .build()
}

/// A Xen interface for a guest with `mib` MiB of fresh RAM at address 0, without KVM:
/// the upcalls it injects go to the returned log. The xenstore and console rings are
/// the last two pages of RAM; xenstored serves the former, the latter has no backend.
/// For unit tests and fuzzing of the hypercall dispatcher and grant tables.
pub fn xen_without_kvm(mib: u64) -> (Arc<Xen>, InterruptLog) {
    let bytes = mib << 20;
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .expect("mapping test guest RAM");
    let config = XenConfig {
        domid: TEST_DOMID,
        name: "guest".into(),
        tsc_khz: 1_000_000,
        ram_pages: bytes / PAGE_SIZE,
        max_gpfn: bytes / PAGE_SIZE - 1,
        store_page: bytes - 2 * PAGE_SIZE,
        console_page: bytes - PAGE_SIZE,
    };
    let (irq, log) = Interrupter::recording();
    let xen = Xen::new(config, GuestRam::new(ram), irq, 0).expect("Xen interface");
    // As `attach_xenstore` builds it.
    let daemon = fresh_xenstored(&Quotas::default(), &[(TEST_DOMID, xen.xenstore_domain())]);
    xen.attach_xenstore_daemon(daemon).expect("xenstored");
    (xen, log)
}

/// A xenstore daemon as `Xenstored::new(quotas)` followed by `introduce_domain_with`
/// for each of `domains` builds it: built once per thread for each argument list and
/// cloned for every call (a clone is a deep copy of a daemon nobody used, so each call
/// gets a fresh daemon, without the cost of building the tree again: the dearest part
/// of a fuzz input's setup, two thirds of a small one's time).
pub fn fresh_xenstored(quotas: &Quotas, domains: &[(DomId, DomainConfig)]) -> Xenstored {
    type Built = (Quotas, Vec<(DomId, DomainConfig)>, Xenstored);
    thread_local! {
        static BUILT: RefCell<Vec<Built>> = const { RefCell::new(Vec::new()) };
    }
    BUILT.with_borrow_mut(|built| {
        if let Some((_, _, xs)) = built.iter().find(|(q, d, _)| q == quotas && d == domains) {
            return xs.clone();
        }
        let mut xs = Xenstored::new(quotas.clone());
        for (domid, config) in domains {
            xs.introduce_domain_with(*domid, config)
                .unwrap_or_else(|e| panic!("introducing domain {domid}: {e}"));
        }
        built.push((quotas.clone(), domains.to_vec(), xs.clone()));
        xs
    })
}

/// The guest's domain id in [`xen_without_kvm`].
pub const TEST_DOMID: DomId = 7;

/// xorshift64*: deterministic pseudo-random numbers for the fuzz-style and hostile-input
/// tests (the same inputs on every run; no wall clock, no OS entropy).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Up to `max - 1` random bytes.
    pub fn bytes(&mut self, max: u64) -> Vec<u8> {
        let mut v = vec![0; self.below(max) as usize];
        self.fill(&mut v);
        v
    }
}
