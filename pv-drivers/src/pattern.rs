//! A deterministic data pattern: the bytes at any offset of a disk (or of a TCP
//! stream) are a function of a seed and that offset alone.
//!
//! The guest's block workload writes it and verifies it, the guest's TCP bulk sender
//! sends it, and host tests write or check the same bytes in a disk image or a received
//! stream with these functions. It must be cheap: the guest's ring-0 code can run
//! ~500x slower than native on the development machines, so a byte costs about one
//! instruction (one mix of a 64-bit word per eight bytes).
//!
//! Definition (stable: host tests and disk images depend on it): the 8-byte word at
//! byte offset `8 * i` is [`word`]`(seed, i)` in little-endian order; byte `o` is byte
//! `o % 8` of word `o / 8`. Every word differs from its neighbours, so a block written
//! at the wrong place, a torn write or a stale sector shows as a mismatch.

/// The pattern word with index `index` (covering bytes `8 * index .. 8 * index + 8`).
#[inline]
pub fn word(seed: u64, index: u64) -> u64 {
    // A multiply-xorshift finaliser over (index, seed): distinct for distinct indices
    // of one seed, cheap, and not zero for seed 0 at index 0.
    let mut z = index
        .wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x6a09_e667_f3bc_c909);
    z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    z ^ (z >> 32)
}

/// The pattern byte at `offset`.
#[inline]
pub fn byte(seed: u64, offset: u64) -> u8 {
    word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the pattern bytes at `offset .. offset + buf.len()`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let head = (offset.wrapping_neg() % 8) as usize;
    let head = head.min(buf.len());
    let (first, rest) = buf.split_at_mut(head);
    for (i, b) in first.iter_mut().enumerate() {
        *b = byte(seed, offset + i as u64);
    }
    let base = offset + head as u64; // a multiple of 8 when `rest` is not empty
    let mut chunks = rest.chunks_exact_mut(8);
    let mut index = base / 8;
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, index).to_le_bytes());
        index += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let w = word(seed, index).to_le_bytes();
        tail.copy_from_slice(&w[..tail.len()]);
    }
}

/// The first byte of `buf` that differs from the pattern at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Its offset (in the same space as the `offset` passed in).
    pub offset: u64,
    /// The pattern's byte.
    pub expected: u8,
    /// The byte found.
    pub found: u8,
}

/// Compares `buf` with the pattern at `offset`; the first difference, if any.
pub fn check(seed: u64, offset: u64, buf: &[u8]) -> Option<Mismatch> {
    let bytewise = |start: usize, part: &[u8]| {
        part.iter().enumerate().find_map(|(i, &found)| {
            let at = offset + (start + i) as u64;
            let expected = byte(seed, at);
            (found != expected).then_some(Mismatch {
                offset: at,
                expected,
                found,
            })
        })
    };
    let head = ((offset.wrapping_neg() % 8) as usize).min(buf.len());
    if let Some(m) = bytewise(0, &buf[..head]) {
        return Some(m);
    }
    let first = (offset + head as u64) / 8;
    let mut chunks = buf[head..].chunks_exact(8);
    for (k, c) in (&mut chunks).enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        if u64::from_le_bytes(w) != word(seed, first + k as u64) {
            return bytewise(head + 8 * k, c);
        }
    }
    let tail = chunks.remainder();
    bytewise(buf.len() - tail.len(), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_byte_at_any_alignment() {
        for seed in [0, 1, 42, u64::MAX] {
            for offset in [0u64, 1, 3, 7, 8, 4093, 1 << 40] {
                for len in [0usize, 1, 5, 8, 9, 17, 100] {
                    let mut buf = vec![0u8; len];
                    fill(seed, offset, &mut buf);
                    for (i, &b) in buf.iter().enumerate() {
                        assert_eq!(b, byte(seed, offset + i as u64));
                    }
                    assert_eq!(check(seed, offset, &buf), None);
                }
            }
        }
    }

    #[test]
    fn check_reports_the_first_difference() {
        let mut buf = vec![0u8; 4096];
        fill(7, 512, &mut buf);
        buf[1000] ^= 0x10;
        buf[3000] ^= 0x01;
        let m = check(7, 512, &buf).unwrap();
        assert_eq!(m.offset, 1512);
        assert_eq!(m.expected, byte(7, 1512));
        assert_eq!(m.found, byte(7, 1512) ^ 0x10);
        // Unaligned start and a short tail.
        let mut odd = vec![0u8; 13];
        fill(7, 3, &mut odd);
        odd[12] = !odd[12];
        assert_eq!(check(7, 3, &odd).unwrap().offset, 15);
        odd[0] = !odd[0];
        assert_eq!(check(7, 3, &odd).unwrap().offset, 3);
    }

    #[test]
    fn words_differ_by_place_and_seed() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            assert!(seen.insert(word(1, i)), "word {i} repeats");
        }
        assert_ne!(word(1, 0), word(2, 0));
        assert_ne!(word(0, 0), 0);
        // A block moved by one sector does not verify.
        let mut a = vec![0u8; 512];
        fill(1, 0, &mut a);
        assert!(check(1, 512, &a).is_some());
    }
}
