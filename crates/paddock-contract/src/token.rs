//! Tokens: made from the kernel's random pool, compared in constant time.

/// The kernel's random pool could not be read (so no secret may be made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomUnavailable;

impl std::fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the kernel's random number source is unavailable")
    }
}

impl std::error::Error for RandomUnavailable {}

/// `bytes` random bytes from the kernel, as lowercase hex (`2 × bytes` characters). The one
/// generator of every token, key, salt and id Paddock makes: a failure is an error, never a
/// predictable (all-zero) secret.
pub fn random_hex(bytes: usize) -> Result<String, RandomUnavailable> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|_| RandomUnavailable)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether two secrets are equal, compared without an early exit so that the time taken does
/// not reveal how long a matching prefix is. (The length is not secret: tokens have a fixed
/// length.)
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn random_hex_has_the_asked_length_and_differs_each_time() {
        let a = super::random_hex(24).unwrap();
        let b = super::random_hex(24).unwrap();
        assert_eq!(a.len(), 48);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        assert!(same_secret(b"abc123", b"abc123"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"abc123", b"abc124"));
        assert!(!same_secret(b"abc123", b"xbc123"));
        assert!(!same_secret(b"abc", b"abc123"));
        assert!(!same_secret(b"abc123", b""));
    }
}
