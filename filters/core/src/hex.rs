//! Lower-case hex, two digits per byte: digests in audit records, rate-limit pseudonyms,
//! shared-data keys. Written out rather than `format!` per byte, which cost about 500
//! instructions a byte on the request path.

/// `bytes` as lower-case hex.
pub fn lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lower_case_digits_per_byte() {
        assert_eq!(super::lower(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(super::lower(&[]), "");
        for b in 0..=255u8 {
            assert_eq!(super::lower(&[b]), format!("{b:02x}"));
        }
    }
}
