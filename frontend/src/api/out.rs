//! Appending short byte strings without a `memcpy` call each.
//!
//! Encoded items are mostly short strings (names, label keys and values, quantities) between
//! a few fixed bytes. `Vec::extend_from_slice` of a slice whose length is not known at compile
//! time calls libc's `memcpy`, whose call and size dispatch cost more than the copy for a
//! 20-byte name (callgrind: `memcpy` was the largest single cost of a protobuf list).

/// Appends `s` to `out`. Up to 32 bytes are copied as two overlapping fixed-size blocks into a
/// stack array, which is appended whole (inline stores) and then cut back to its length, as
/// `memcpy` does internally but without the call; longer strings go to `extend_from_slice`.
#[inline(always)]
pub fn put_short(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    let len = out.len();
    if n > 16 {
        if n > 32 {
            out.extend_from_slice(s);
            return;
        }
        let mut a = [0u8; 32];
        a[..16].copy_from_slice(&s[..16]);
        a[n - 16..n].copy_from_slice(&s[n - 16..]);
        out.extend_from_slice(&a);
    } else {
        let mut a = [0u8; 16];
        if n >= 8 {
            a[..8].copy_from_slice(&s[..8]);
            a[n - 8..n].copy_from_slice(&s[n - 8..]);
        } else if n >= 4 {
            a[..4].copy_from_slice(&s[..4]);
            a[n - 4..n].copy_from_slice(&s[n - 4..]);
        } else if n > 0 {
            // 1 to 3 bytes: first, middle and last (some the same byte).
            a[0] = s[0];
            a[n / 2] = s[n / 2];
            a[n - 1] = s[n - 1];
        }
        out.extend_from_slice(&a);
    }
    out.truncate(len + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_appends_exactly_the_bytes() {
        let source: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for n in 0..=source.len() {
            for prefix in [0usize, 1, 7] {
                let mut out = vec![0xAA; prefix];
                put_short(&mut out, &source[..n]);
                assert_eq!(out.len(), prefix + n);
                assert_eq!(&out[prefix..], &source[..n], "length {n} after {prefix}");
                assert!(out[..prefix].iter().all(|b| *b == 0xAA));
            }
        }
    }
}
