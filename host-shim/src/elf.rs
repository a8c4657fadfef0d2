//! Validation of the guest kernel image before anything is loaded.
//!
//! The kernel must be a little-endian x86 ELF executable (ELF64 `EM_X86_64`, or ELF32
//! `EM_386` or `EM_X86_64` as Xen's and QEMU's loaders take them: the PVH entry is
//! 32-bit code either way) whose `PT_NOTE` segments carry Xen's
//! `XEN_ELFNOTE_PHYS32_ENTRY` note (`xen/include/public/elfnote.h`, type 18,
//! name `"Xen"`): the 32-bit physical entry point of the PVH boot protocol
//! (`docs/misc/pvh.pandoc`). This parser is pure (bytes in, description out) so it runs
//! in unit tests and under the fuzzer; [`crate::boot`] then checks the segments against
//! the guest's memory and copies the segments in.
//!
//! rust-vmm's linux-loader finds the same note, but only in ELF64 images, keeps only
//! the answer of the *last* `PT_NOTE` segment and does not look at `p_memsz`; so the
//! parsing and loading are here.

pub use pv_drivers::abi::elfnote::{XEN_ELFNOTE_PHYS32_ENTRY, XEN_NOTE_NAME};

const EHDR64_SIZE: usize = 64;
const PHDR64_SIZE: usize = 56;
const EHDR32_SIZE: usize = 52;
const PHDR32_SIZE: usize = 32;
const NOTE_HEADER_SIZE: usize = 12;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Why a kernel image was rejected. Each message completes "kernel FILE: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The file does not start with the ELF magic.
    #[error("not an ELF file (bad magic)")]
    BadMagic,
    /// The file is shorter than its class's ELF header.
    #[error("truncated ELF file ({0} bytes; shorter than its ELF header)")]
    Truncated(usize),
    /// Neither ELF32 nor ELF64.
    #[error("unknown ELF class {0}")]
    BadClass(u8),
    /// A big-endian image.
    #[error("is not a little-endian ELF (EI_DATA {0})")]
    NotLittleEndian(u8),
    /// Built for another machine.
    #[error("is not an x86 ELF (e_machine {0}; want EM_X86_64, or EM_386 in ELF32)")]
    WrongMachine(u16),
    /// `e_phentsize` is not the class's program header size.
    #[error("bad program header entry size {0} (ELF64 uses 56, ELF32 32)")]
    BadPhentsize(u16),
    /// The program header table does not fit in the file.
    #[error("program header table ({count} entries at offset {offset:#x}) lies outside the file")]
    PhdrsOutsideFile {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
    },
    /// A segment's file bytes do not fit in the file.
    #[error("segment {index}: file bytes [{offset:#x}, +{size:#x}) lie outside the file")]
    SegmentOutsideFile {
        /// Index of the program header.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// A `PT_LOAD` segment with more file bytes than memory bytes.
    #[error("segment {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}")]
    FileszExceedsMemsz {
        /// Index of the program header.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A `PT_LOAD` segment whose end overflows the 64-bit address space.
    #[error("segment {index}: [{paddr:#x}, +{memsz:#x}) wraps around the address space")]
    SegmentWraps {
        /// Index of the program header.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Nothing to load.
    #[error("has no PT_LOAD segment with memory to load")]
    NoLoadSegments,
    /// A note that runs past the end of its segment.
    #[error("segment {index}: malformed ELF note at segment offset {offset:#x}")]
    BadNote {
        /// Index of the `PT_NOTE` program header.
        index: usize,
        /// Offset of the note inside the segment.
        offset: usize,
    },
    /// A PVH note whose descriptor cannot hold an address.
    #[error("XEN_ELFNOTE_PHYS32_ENTRY descriptor is {0} bytes; it must hold a 32-bit address")]
    ShortPvhDescriptor(u32),
    /// A PVH entry point that is not a 32-bit physical address.
    #[error("PVH entry {0:#x} is above 4 GiB")]
    EntryAbove4G(u64),
    /// No PVH note at all.
    #[error("has no XEN_ELFNOTE_PHYS32_ENTRY note; not a PVH kernel")]
    NoPvhNote,
    /// The PVH entry point is not inside the loaded image.
    #[error("PVH entry {0:#x} is not inside any PT_LOAD segment")]
    EntryOutsideSegments(u32),
}

/// One `PT_LOAD` segment, validated against the file and against address wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Index of its program header.
    pub index: usize,
    /// `p_offset`: where its bytes start in the file.
    pub offset: u64,
    /// `p_paddr`: where it is loaded in guest-physical memory.
    pub paddr: u64,
    /// `p_filesz`: bytes copied from the file.
    pub filesz: u64,
    /// `p_memsz`: bytes it occupies in memory (the rest is zero).
    pub memsz: u64,
}

impl LoadSegment {
    /// One past its last guest-physical byte (never wraps: checked by [`parse`]).
    pub fn end(&self) -> u64 {
        self.paddr + self.memsz
    }
}

/// Which ELF class a kernel image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    /// `ELFCLASS32` (`EM_386`, or `EM_X86_64` for an x32-style image).
    Elf32,
    /// `ELFCLASS64`.
    Elf64,
}

/// A validated PVH kernel image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Its ELF class (the guest's hypercall page follows the mode it runs in, not this).
    pub class: ElfClass,
    /// The 32-bit physical entry point from `XEN_ELFNOTE_PHYS32_ENTRY`.
    pub pvh_entry: u32,
    /// The `PT_LOAD` segments with a non-zero `p_memsz`, in program-header order.
    pub segments: Vec<LoadSegment>,
}

fn bytes_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    bytes_at(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    bytes_at(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    bytes_at(b, off).map(u64::from_le_bytes)
}

/// A program header, as read from the file.
struct Phdr {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// The file bytes `[offset, offset + size)`, if they lie inside the file.
fn file_range(image: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    image.get(start..end)
}

/// Where an ELF class keeps its header and program-header fields.
struct ClassLayout {
    class: ElfClass,
    ehdr: usize,
    phdr: usize,
    /// Offset of `e_phoff`, then of `e_phentsize` (`e_phnum` follows it).
    phoff_at: usize,
    phentsize_at: usize,
    /// Offsets in a program header of `p_offset`, `p_paddr`, `p_filesz`, `p_memsz`,
    /// `p_align`.
    fields: [usize; 5],
}

impl ClassLayout {
    const ELF64: Self = Self {
        class: ElfClass::Elf64,
        ehdr: EHDR64_SIZE,
        phdr: PHDR64_SIZE,
        phoff_at: 32,
        phentsize_at: 54,
        fields: [8, 24, 32, 40, 48],
    };
    const ELF32: Self = Self {
        class: ElfClass::Elf32,
        ehdr: EHDR32_SIZE,
        phdr: PHDR32_SIZE,
        phoff_at: 28,
        phentsize_at: 42,
        fields: [4, 12, 16, 20, 28],
    };

    /// An address-sized field (8 bytes in ELF64, 4 in ELF32), widened.
    fn word(&self, b: &[u8], off: usize) -> Option<u64> {
        match self.class {
            ElfClass::Elf64 => u64_at(b, off),
            ElfClass::Elf32 => u32_at(b, off).map(u64::from),
        }
    }
}

/// Validates `image` as an x86 PVH kernel (ELF64, or ELF32 as Xen and QEMU load).
pub fn parse(image: &[u8]) -> Result<KernelImage, ElfError> {
    if image.len() < 4 || image[..4] != *b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    if image.len() < 5 {
        return Err(ElfError::Truncated(image.len()));
    }
    let layout = match image[4] {
        ELFCLASS64 => ClassLayout::ELF64,
        ELFCLASS32 => ClassLayout::ELF32,
        class => return Err(ElfError::BadClass(class)),
    };
    if image.len() < layout.ehdr {
        return Err(ElfError::Truncated(image.len()));
    }
    if image[5] != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian(image[5]));
    }
    // The header is complete here, so these reads cannot fail.
    let field16 = |off| u16_at(image, off).unwrap_or_default();
    let machine = field16(18);
    let machine_ok = match layout.class {
        ElfClass::Elf64 => machine == EM_X86_64,
        ElfClass::Elf32 => machine == EM_X86_64 || machine == EM_386,
    };
    if !machine_ok {
        return Err(ElfError::WrongMachine(machine));
    }
    let phoff = layout.word(image, layout.phoff_at).unwrap_or_default();
    let phentsize = field16(layout.phentsize_at);
    let phnum = field16(layout.phentsize_at + 2);
    if usize::from(phentsize) != layout.phdr && phnum != 0 {
        return Err(ElfError::BadPhentsize(phentsize));
    }
    let table = file_range(image, phoff, u64::from(phnum) * layout.phdr as u64).ok_or(
        ElfError::PhdrsOutsideFile {
            offset: phoff,
            count: phnum,
        },
    )?;

    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for (index, raw) in table.chunks_exact(layout.phdr).enumerate() {
        // `chunks_exact` yields whole program headers, so every field read succeeds.
        let [offset, paddr, filesz, memsz, align] = layout
            .fields
            .map(|at| layout.word(raw, at).unwrap_or_default());
        let phdr = Phdr {
            p_type: u32_at(raw, 0).unwrap_or_default(),
            offset,
            paddr,
            filesz,
            memsz,
            align,
        };
        match phdr.p_type {
            PT_LOAD => {
                file_range(image, phdr.offset, phdr.filesz).ok_or(
                    ElfError::SegmentOutsideFile {
                        index,
                        offset: phdr.offset,
                        size: phdr.filesz,
                    },
                )?;
                if phdr.filesz > phdr.memsz {
                    return Err(ElfError::FileszExceedsMemsz {
                        index,
                        filesz: phdr.filesz,
                        memsz: phdr.memsz,
                    });
                }
                if phdr.paddr.checked_add(phdr.memsz).is_none() {
                    return Err(ElfError::SegmentWraps {
                        index,
                        paddr: phdr.paddr,
                        memsz: phdr.memsz,
                    });
                }
                if phdr.memsz != 0 {
                    segments.push(LoadSegment {
                        index,
                        offset: phdr.offset,
                        paddr: phdr.paddr,
                        filesz: phdr.filesz,
                        memsz: phdr.memsz,
                    });
                }
            }
            PT_NOTE if pvh_entry.is_none() => {
                let notes = file_range(image, phdr.offset, phdr.filesz).ok_or(
                    ElfError::SegmentOutsideFile {
                        index,
                        offset: phdr.offset,
                        size: phdr.filesz,
                    },
                )?;
                pvh_entry = find_pvh_note(index, notes, phdr.align)?;
            }
            _ => {}
        }
    }

    if segments.is_empty() {
        return Err(ElfError::NoLoadSegments);
    }
    let pvh_entry = pvh_entry.ok_or(ElfError::NoPvhNote)?;
    let entry = u64::from(pvh_entry);
    if !segments.iter().any(|s| (s.paddr..s.end()).contains(&entry)) {
        return Err(ElfError::EntryOutsideSegments(pvh_entry));
    }
    Ok(KernelImage {
        class: layout.class,
        pvh_entry,
        segments,
    })
}

/// Looks for `XEN_ELFNOTE_PHYS32_ENTRY` among the notes of one `PT_NOTE` segment.
///
/// Name and descriptor are padded to 4 bytes (the gABI rule Linux and Xen follow), or to
/// 8 when the segment says it is 8-aligned (as binutils does for such segments).
fn find_pvh_note(index: usize, notes: &[u8], p_align: u64) -> Result<Option<u32>, ElfError> {
    let align = if p_align == 8 { 8 } else { 4 };
    let pad = |n: u32| (n as usize).next_multiple_of(align);
    let mut pos = 0;
    // Fewer bytes than a note header left over: padding, not a note.
    while notes.len() - pos >= NOTE_HEADER_SIZE {
        let bad = ElfError::BadNote { index, offset: pos };
        let namesz = u32_at(notes, pos).ok_or(bad.clone())?;
        let descsz = u32_at(notes, pos + 4).ok_or(bad.clone())?;
        let n_type = u32_at(notes, pos + 8).ok_or(bad.clone())?;
        let name_at = pos + NOTE_HEADER_SIZE;
        let desc_at = name_at + pad(namesz);
        let desc = notes
            .get(desc_at..desc_at + descsz as usize)
            .ok_or(bad.clone())?;
        let name = &notes[name_at..name_at + namesz as usize];
        if n_type == XEN_ELFNOTE_PHYS32_ENTRY && name == XEN_NOTE_NAME {
            // Xen reads the descriptor at its own size; ours emits an 8-byte `.quad`.
            let entry = match desc.len() {
                8.. => u64_at(desc, 0).unwrap_or_default(),
                4..8 => u64::from(u32_at(desc, 0).unwrap_or_default()),
                _ => return Err(ElfError::ShortPvhDescriptor(descsz)),
            };
            return u32::try_from(entry)
                .map(Some)
                .map_err(|_| ElfError::EntryAbove4G(entry));
        }
        pos = (desc_at + pad(descsz)).min(notes.len());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ElfBuilder;

    fn valid() -> ElfBuilder {
        ElfBuilder::new()
            .segment(0x10_0000, &[0x90; 16])
            .pvh_entry(0x10_0000)
    }

    #[test]
    fn accepts_a_minimal_pvh_kernel() {
        let img = parse(&valid().build()).expect("valid image");
        assert_eq!(img.pvh_entry, 0x10_0000);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].paddr, 0x10_0000);
        assert_eq!(img.segments[0].memsz, 16);
    }

    #[test]
    fn accepts_a_four_byte_descriptor_and_other_notes_first() {
        let img = valid()
            .extra_note(b"GNU\0", 3, &[1, 2, 3, 4, 5])
            .pvh_descriptor(&0x10_0004u32.to_le_bytes())
            .build();
        assert_eq!(parse(&img).map(|i| i.pvh_entry), Ok(0x10_0004));
    }

    #[test]
    fn rejects_bad_magic_and_text() {
        let mut img = valid().build();
        img[1] = b'X';
        assert_eq!(parse(&img), Err(ElfError::BadMagic));
        assert_eq!(parse(b"hello, world\n"), Err(ElfError::BadMagic));
        assert_eq!(parse(b""), Err(ElfError::BadMagic));
    }

    #[test]
    fn rejects_truncated_32bit_bigendian_and_foreign_images() {
        let img = valid().build();
        assert_eq!(parse(&img[..40]), Err(ElfError::Truncated(40)));
        let mut e = img.clone();
        e[4] = 3;
        assert_eq!(parse(&e), Err(ElfError::BadClass(3)));
        let mut e = img.clone();
        e[5] = 2;
        assert_eq!(parse(&e), Err(ElfError::NotLittleEndian(2)));
        let mut e = img.clone();
        e[18] = 40; // EM_ARM
        assert_eq!(parse(&e), Err(ElfError::WrongMachine(40)));
    }

    #[test]
    fn accepts_elf32_kernels_for_i386_and_x86_64() {
        for machine in [EM_386, EM_X86_64] {
            let img = valid()
                .pvh_descriptor(&0x10_0004u32.to_le_bytes())
                .elf32(machine)
                .build();
            let parsed = parse(&img).expect("ELF32 PVH kernel");
            assert_eq!(parsed.class, ElfClass::Elf32);
            assert_eq!(parsed.pvh_entry, 0x10_0004);
            assert_eq!(
                (parsed.segments[0].paddr, parsed.segments[0].memsz),
                (0x10_0000, 16)
            );
            // The loaded bytes are where the header says.
            let at = parsed.segments[0].offset as usize;
            assert_eq!(&img[at..at + 16], &[0x90; 16]);
        }
        assert_eq!(
            parse(&valid().build()).map(|i| i.class),
            Ok(ElfClass::Elf64)
        );
        // An ELF32 for another machine, or cut inside its 52-byte header.
        let arm = valid().elf32(40).build();
        assert_eq!(parse(&arm), Err(ElfError::WrongMachine(40)));
        let img = valid().elf32(EM_386).build();
        assert_eq!(parse(&img[..51]), Err(ElfError::Truncated(51)));
        // An ELF64 header claiming EM_386 is refused.
        let mut e = valid().build();
        e[18] = EM_386 as u8;
        assert_eq!(parse(&e), Err(ElfError::WrongMachine(3)));
    }

    #[test]
    fn rejects_missing_note() {
        let img = ElfBuilder::new().segment(0x10_0000, &[0x90]).build();
        assert_eq!(parse(&img), Err(ElfError::NoPvhNote));
        let msg = ElfError::NoPvhNote.to_string();
        assert_eq!(
            msg,
            "has no XEN_ELFNOTE_PHYS32_ENTRY note; not a PVH kernel"
        );
    }

    #[test]
    fn rejects_wrong_note_name_or_type() {
        let img = ElfBuilder::new()
            .segment(0x10_0000, &[0x90])
            .extra_note(b"Xen\0", 17, &0x10_0000u64.to_le_bytes())
            .extra_note(b"Xe\0\0", 18, &0x10_0000u64.to_le_bytes())
            .build();
        assert_eq!(parse(&img), Err(ElfError::NoPvhNote));
    }

    #[test]
    fn rejects_bad_descriptors() {
        let short = valid().pvh_descriptor(&[0, 0]).build();
        assert_eq!(parse(&short), Err(ElfError::ShortPvhDescriptor(2)));
        let high = valid()
            .pvh_descriptor(&0x1_0000_0000u64.to_le_bytes())
            .build();
        assert_eq!(parse(&high), Err(ElfError::EntryAbove4G(0x1_0000_0000)));
    }

    #[test]
    fn rejects_entry_outside_segments() {
        let img = valid().pvh_entry(0x20_0000).build();
        assert_eq!(parse(&img), Err(ElfError::EntryOutsideSegments(0x20_0000)));
    }

    #[test]
    fn rejects_memsz_wrap_and_filesz_over_memsz() {
        let img = valid()
            .segment_with_memsz(0xffff_ffff_ffff_f000, &[], 0x2000)
            .build();
        assert!(matches!(
            parse(&img),
            Err(ElfError::SegmentWraps { index: 1, .. })
        ));
        let img = valid().segment_with_memsz(0x20_0000, &[1, 2, 3], 2).build();
        assert!(matches!(
            parse(&img),
            Err(ElfError::FileszExceedsMemsz { .. })
        ));
    }

    #[test]
    fn rejects_ranges_outside_the_file() {
        let mut img = valid().build();
        // e_phnum = 0x7fff: the table runs past the end of the file.
        img[56..58].copy_from_slice(&0x7fffu16.to_le_bytes());
        assert!(matches!(
            parse(&img),
            Err(ElfError::PhdrsOutsideFile { .. })
        ));
        let mut img = valid().build();
        // First program header's p_filesz, far past the end of the file.
        img[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&img),
            Err(ElfError::SegmentOutsideFile { index: 0, .. })
        ));
    }

    #[test]
    fn rejects_a_note_running_past_its_segment() {
        let img = ElfBuilder::new()
            .segment(0x10_0000, &[0x90])
            .extra_note(b"Xen\0", 18, &0x10_0000u64.to_le_bytes())
            .truncate_notes(20)
            .build();
        assert!(matches!(parse(&img), Err(ElfError::BadNote { .. })));
    }

    #[test]
    fn survives_every_truncation_and_single_byte_corruption() {
        let images = [
            valid().extra_note(b"GNU\0", 1, &[7; 9]).build(),
            valid().elf32(EM_386).build(),
        ];
        for img in images {
            for len in 0..img.len() {
                let _ = parse(&img[..len]);
            }
            for i in 0..img.len() {
                for v in [0x00, 0x7f, 0x80, 0xff] {
                    let mut e = img.clone();
                    e[i] = v;
                    let _ = parse(&e);
                }
            }
        }
    }
}
