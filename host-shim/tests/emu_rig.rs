//! The driver-against-model rig itself: what a driver writes through its DMA view is
//! what a model reads from guest RAM, and the reverse.

mod emu_common;

use emu_common::Ram;
use hw_devices::DmaMemory;
use pv_drivers::shmem::SharedMemory;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn dma_views_and_guest_ram_are_the_same_bytes() {
    let mut ram = Ram::new(4);
    let (a, va) = ram.alloc_pages(2).expect("pages");
    let (b, vb) = ram.alloc_pages(1).expect("page");
    assert_eq!(a % 4096, 0);
    assert!(b >= a + 8192, "allocations overlap");
    va.write_bytes(4100, b"driver");
    let mut got = [0u8; 6];
    ram.mem
        .read_slice(&mut got, GuestAddress(a + 4100))
        .unwrap();
    assert_eq!(&got, b"driver");
    ram.mem.write_slice(b"model", GuestAddress(b + 8)).unwrap();
    let mut back = [0u8; 5];
    vb.read_bytes(8, &mut back);
    assert_eq!(&back, b"model");
    // Freed pages come back zeroed.
    ram.free_pages(b, vb);
    let (c, vc) = ram.alloc_pages(1).expect("page");
    assert_eq!(c, b);
    vc.read_bytes(8, &mut back);
    assert_eq!(back, [0; 5]);
    // Past the end of RAM: no pages.
    assert!(ram.alloc_pages(4096).is_none());
    // The model's DMA outside RAM fails rather than reaching other memory.
    assert!(ram.mem.write_slice(b"x", GuestAddress(4 << 20)).is_err());
}
