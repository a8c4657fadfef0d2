//! Fuzzes kernel-image validation (`host_shim::elf::parse` and the memory-fit check).
//!
//! Input is mostly valid: an `ElfBuilder` image from structured fields, then a few byte
//! flips, so the fuzzer spends its time past the ELF magic. Run with
//! `cargo +nightly fuzz run elf_parse` from `host-shim/`.
#![no_main]

use arbitrary::Arbitrary;
use host_shim::MemoryLayout;
use host_shim::elf::{self, KernelImage};
use host_shim::testing::ElfBuilder;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Segment {
    paddr: u64,
    data: Vec<u8>,
    extra_memsz: u32,
}

#[derive(Debug, Arbitrary)]
struct Input {
    mem_mib: u16,
    segments: Vec<Segment>,
    pvh_desc: Option<Vec<u8>>,
    notes: Vec<(Vec<u8>, u32, Vec<u8>)>,
    notes_filesz: Option<u16>,
    flips: Vec<(u16, u8)>,
}

fn check(image: &KernelImage, bytes: &[u8]) {
    for seg in &image.segments {
        assert!(seg.memsz >= seg.filesz && seg.memsz > 0);
        assert!(seg.paddr.checked_add(seg.memsz).is_some());
        assert!(seg.offset.saturating_add(seg.filesz) <= bytes.len() as u64);
    }
    let entry = u64::from(image.pvh_entry);
    assert!(
        image
            .segments
            .iter()
            .any(|s| (s.paddr..s.end()).contains(&entry))
    );
}

fuzz_target!(|input: Input| {
    let mut b = ElfBuilder::new();
    for seg in input.segments.iter().take(8) {
        let memsz = seg.data.len() as u64 + u64::from(seg.extra_memsz);
        b = b.segment_with_memsz(seg.paddr, &seg.data, memsz);
    }
    for (name, n_type, desc) in input.notes.iter().take(4) {
        b = b.extra_note(name, *n_type, desc);
    }
    if let Some(desc) = &input.pvh_desc {
        b = b.pvh_descriptor(desc);
    }
    if let Some(filesz) = input.notes_filesz {
        b = b.truncate_notes(filesz.into());
    }
    let mut bytes = b.build();
    for &(at, value) in &input.flips {
        if let Some(byte) = bytes.get_mut(usize::from(at)) {
            *byte = value;
        }
    }
    if let Ok(image) = elf::parse(&bytes) {
        check(&image, &bytes);
        if let Ok(layout) = MemoryLayout::new(input.mem_mib.into()) {
            let _ = layout.check_fits(&image);
        }
    }
});
