//! Searching and comparing bytes eight at a time. Rust's comparisons of strings and
//! slices call memcmp, a byte loop in musl's libc, and a byte search by iterator is a
//! byte loop too; a big tailnet's netmap (megabytes) is framed and scanned, its names
//! sorted and its hosts block compared at every change.

use std::cmp::Ordering;

/// `a.cmp(b)`, eight bytes at a time.
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    let word = |s: &[u8]| <[u8; 8]>::try_from(s).map_or(0, u64::from_be_bytes);
    let common = a.len().min(b.len()) / 8 * 8;
    let mut i = 0;
    while i < common {
        let (x, y) = (word(&a[i..i + 8]), word(&b[i..i + 8]));
        if x != y {
            return x.cmp(&y);
        }
        i += 8;
    }
    a[i..].iter().cmp(b[i..].iter())
}

/// `a == b`, eight bytes at a time.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && compare(a, b) == Ordering::Equal
}

/// Where the first `byte` at or after `from` is. A word has one where (word ^ byte in
/// every lane) has a zero byte; the lowest such lane is the first.
pub fn find(b: &[u8], from: usize, byte: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let lanes = ONES * u64::from(byte);
    let mut i = from;
    while let Some(word) = b.get(i..i + 8) {
        let x = <[u8; 8]>::try_from(word).map_or(0, u64::from_le_bytes) ^ lanes;
        let zero = x.wrapping_sub(ONES) & !x & HIGH;
        if zero != 0 {
            return Some(i + zero.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    let rest = b.get(i..)?;
    rest.iter().position(|&c| c == byte).map(|at| i + at)
}

#[cfg(test)]
mod tests {
    use super::{compare, equal, find};

    #[test]
    fn finds_the_first_byte_in_every_position() {
        for byte in [b'"', b'\n', 0, 0xff] {
            for len in 0..20 {
                for at in 0..len {
                    let mut b = vec![byte ^ 1; len];
                    b[at] = byte;
                    if at + 1 < len {
                        b[at + 1] = byte;
                    }
                    for from in 0..=at {
                        assert_eq!(find(&b, from, byte), Some(at), "{byte} {len} {at} {from}");
                    }
                    assert_eq!(find(&b, at + 2, byte), None);
                }
                assert_eq!(find(&vec![byte ^ 0x80; len], 0, byte), None);
                assert_eq!(find(&vec![byte.wrapping_add(1); len], 0, byte), None);
            }
        }
    }

    #[test]
    fn orders_as_slices_do() {
        let words: Vec<Vec<u8>> = [
            "",
            "a",
            "ab",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgi",
            "abcdefg",
            "b",
            "\u{ff}x",
            "abcdefghabcdefgh",
            "abcdefghabcdefgg",
            "abcdefghabcdefgh-",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        for a in &words {
            for b in &words {
                assert_eq!(compare(a, b), a.cmp(b), "{a:?} {b:?}");
                assert_eq!(equal(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }
}
