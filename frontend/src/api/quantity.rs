//! Kubernetes `resource.Quantity` strings in canonical form, as metrics-server prints them.
//!
//! CPU is a DecimalSI quantity built from nanocores (`NewScaledQuantity(n, -9)`); memory is a
//! BinarySI quantity of bytes. Canonical form follows apimachinery's `CanonicalizeBytes`:
//! decimal values drop factors of ten and use the largest SI suffix (`n`, `u`, `m`, none, `k`,
//! `M`, ...) that keeps an integer mantissa (`1500000000n` prints `1500m`); binary values use
//! the largest power of 1024 that divides them (`Ki`, `Mi`, ...), except that values below 1024
//! print as decimal (`1000` prints `1k`).

use std::fmt;

/// CPU usage in nanocores, displayed as a canonical DecimalSI quantity (`"123456n"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cpu(pub u64);

/// Memory in bytes, displayed as a canonical BinarySI quantity (`"12340Ki"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Memory(pub u64);

/// `00` to `99`: the decimal digits of each pair value.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Canonical quantity text in a fixed buffer (no allocation; a u64 with any suffix fits).
#[derive(Clone, Copy)]
pub struct Text {
    /// The bytes, at the end of the buffer: `buf[start..]`.
    buf: [u8; 44],
    /// Where the text starts.
    start: usize,
}

impl Text {
    /// The text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and suffix letters are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }

    /// `mantissa` followed by `suffix`.
    fn new(mantissa: u128, suffix: &str) -> Text {
        let mut t = Text { buf: [0; 44], start: 44 };
        for b in suffix.bytes().rev() {
            t.start -= 1;
            t.buf[t.start] = b;
        }
        // 64-bit divisions for the common case, two digits per division (a table of the 100
        // pairs, as itoa does); u128 only beyond u64.
        match u64::try_from(mantissa) {
            Ok(mut v) => {
                while v >= 100 {
                    let pair = (v % 100) as usize * 2;
                    v /= 100;
                    t.start -= 2;
                    t.buf[t.start..t.start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
                }
                if v >= 10 {
                    let pair = v as usize * 2;
                    t.start -= 2;
                    t.buf[t.start..t.start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
                } else {
                    t.start -= 1;
                    t.buf[t.start] = b'0' + v as u8;
                }
            }
            Err(_) => {
                let mut v = mantissa;
                loop {
                    t.start -= 1;
                    t.buf[t.start] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
            }
        }
        t
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Cpu {
    /// The canonical text.
    pub fn text(self) -> Text {
        decimal(self.0, -9)
    }
}

impl Memory {
    /// The canonical text.
    pub fn text(self) -> Text {
        if self.0 < 1024 {
            return decimal(self.0, 0);
        }
        // The largest power of 1024 (at most 6) dividing it, from its trailing zero bits.
        let power = ((self.0.trailing_zeros() / 10) as usize).min(6);
        let mantissa = self.0 >> (10 * power);
        const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
        Text::new(u128::from(mantissa), SUFFIXES[power])
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// `value * 10^exponent` (exponent a multiple of 3 between -9 and 18) in canonical form.
fn decimal(value: u64, exponent: i32) -> Text {
    if value == 0 {
        return Text::new(0, "");
    }
    // apimachinery strips every trailing zero, then multiplies back to an exponent that is a
    // multiple of three; from an exponent that already is one (every caller's), that is
    // stripping whole groups of three zeros. In 64 bits (a division by a constant is a
    // multiplication; u128's is a library call); u128 only for the scaling below.
    debug_assert!(exponent % 3 == 0, "exponent {exponent}");
    let mut trimmed = value;
    let mut exponent = exponent;
    while trimmed.is_multiple_of(1000) {
        trimmed /= 1000;
        exponent += 3;
    }
    let mut mantissa = u128::from(trimmed);
    // Above exa there is no suffix: fold the rest back into the mantissa.
    while exponent > 18 {
        mantissa *= 1000;
        exponent -= 3;
    }
    let suffix = match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    Text::new(mantissa, suffix)
}

/// Sum of CPU quantities, saturating (a pod's total in the Table view).
pub fn sum_cpu(values: impl IntoIterator<Item = Cpu>) -> Cpu {
    Cpu(values.into_iter().fold(0u64, |acc, v| acc.saturating_add(v.0)))
}

/// Sum of memory quantities, saturating (a pod's total in the Table view).
pub fn sum_memory(values: impl IntoIterator<Item = Memory>) -> Memory {
    Memory(values.into_iter().fold(0u64, |acc, v| acc.saturating_add(v.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_prints_nanocores_unless_a_larger_suffix_keeps_an_integer() {
        assert_eq!(Cpu(123_456).to_string(), "123456n");
        assert_eq!(Cpu(162_542_336).to_string(), "162542336n");
        assert_eq!(Cpu(123_456_000).to_string(), "123456u");
        assert_eq!(Cpu(1_500_000_000).to_string(), "1500m");
        assert_eq!(Cpu(250_000_000).to_string(), "250m");
        assert_eq!(Cpu(1_000_000_000).to_string(), "1");
        assert_eq!(Cpu(10_000_000_000).to_string(), "10");
        assert_eq!(Cpu(5_000_000_000_000).to_string(), "5k");
        assert_eq!(Cpu(0).to_string(), "0");
        assert_eq!(Cpu(10).to_string(), "10n");
        assert_eq!(Cpu(100).to_string(), "100n");
    }

    #[test]
    fn memory_prints_the_largest_power_of_1024_that_divides_it() {
        assert_eq!(Memory(12_636_160).to_string(), "12340Ki");
        assert_eq!(Memory(1 << 20).to_string(), "1Mi");
        assert_eq!(Memory(3 << 30).to_string(), "3Gi");
        assert_eq!(Memory(1025).to_string(), "1025");
        assert_eq!(Memory(12_345_678).to_string(), "12345678");
        assert_eq!(Memory(1024).to_string(), "1Ki");
    }

    #[test]
    fn memory_below_1024_bytes_prints_as_a_decimal_quantity() {
        assert_eq!(Memory(0).to_string(), "0");
        assert_eq!(Memory(512).to_string(), "512");
        assert_eq!(Memory(1000).to_string(), "1k");
        assert_eq!(Memory(100).to_string(), "100");
    }

    #[test]
    fn text_and_display_agree() {
        for v in [0u64, 1, 9, 10, 999, 1000, 1001, 1023, 1024, 123_456_789, 1 << 40, u64::MAX - 1] {
            assert_eq!(Cpu(v).text().as_str(), Cpu(v).to_string());
            assert_eq!(Memory(v).text().as_bytes(), Memory(v).to_string().as_bytes());
        }
    }

    /// The digits and powers of 1024 the way they were computed before the two-digit table
    /// and the trailing-zero count: one digit per division, one division by 1024 at a time.
    fn slow_memory(v: u64) -> String {
        if v < 1024 {
            return decimal(v, 0).as_str().to_owned();
        }
        let (mut mantissa, mut power) = (v, 0usize);
        while mantissa.is_multiple_of(1024) && power < 6 {
            mantissa /= 1024;
            power += 1;
        }
        format!("{mantissa}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power])
    }

    /// apimachinery's way: every trailing zero stripped, then back to a multiple of three.
    fn slow_decimal(value: u64, exponent: i32) -> String {
        if value == 0 {
            return "0".into();
        }
        let (mut m, mut e) = (u128::from(value), exponent);
        while m % 10 == 0 {
            m /= 10;
            e += 1;
        }
        while e.rem_euclid(3) != 0 {
            m *= 10;
            e -= 1;
        }
        while e > 18 {
            m *= 1000;
            e -= 3;
        }
        let suffix = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"][((e + 9) / 3) as usize];
        format!("{m}{suffix}")
    }

    #[test]
    fn digit_pairs_and_powers_agree_with_one_digit_at_a_time() {
        let mut values: Vec<u64> = (0..=1100).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for shift in 0..64 {
            values.extend([1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1, 3u64 << shift.min(62), 10u64.saturating_pow(shift / 3)]);
            for _ in 0..50 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                values.push(x >> (shift % 60));
            }
        }
        values.push(u64::MAX);
        for v in values {
            assert_eq!(Text::new(u128::from(v), "").as_str(), v.to_string());
            assert_eq!(Cpu(v).to_string(), slow_decimal(v, -9), "{v}");
            assert_eq!(decimal(v, 0).as_str(), slow_decimal(v, 0), "{v}");
            assert_eq!(Memory(v).to_string(), slow_memory(v), "{v}");
        }
        assert_eq!(Text::new(u128::from(u64::MAX) * 1000, "").as_str(), (u128::from(u64::MAX) * 1000).to_string());
    }

    #[test]
    fn huge_values_do_not_overflow() {
        assert_eq!(Cpu(u64::MAX).to_string(), "18446744073709551615n");
        assert_eq!(Memory(u64::MAX).to_string(), "18446744073709551615");
        assert_eq!(Memory(1 << 62).to_string(), "4Ei");
        assert_eq!(sum_cpu([Cpu(u64::MAX), Cpu(1)]), Cpu(u64::MAX));
        assert_eq!(sum_memory([Memory(1024), Memory(1024)]).to_string(), "2Ki");
    }
}
