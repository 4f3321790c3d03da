//! Token comparison.

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
    fn equal_only_when_every_byte_and_the_length_match() {
        assert!(same_secret(b"abc123", b"abc123"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"abc123", b"abc124"));
        assert!(!same_secret(b"abc123", b"xbc123"));
        assert!(!same_secret(b"abc", b"abc123"));
        assert!(!same_secret(b"abc123", b""));
    }
}
