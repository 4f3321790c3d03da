//! The signature E2B SDKs put on pre-signed file URLs (`download_url()` / `upload_url()`).
//! The runtime checks it; the gateway uses it to tell which sandbox a signed URL without a
//! sandbox id is for (the SDKs build those URLs from one fixed sandbox address).

use base64::Engine;
use sha2::{Digest, Sha256};

/// `v1_` + unpadded base64 of sha256(`path:operation:username:token[:expiration]`).
/// `operation` is `read` (download) or `write` (upload); `username` is empty for the default
/// user.
pub fn file_signature(
    path: &str,
    operation: &str,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut raw = format!("{path}:{operation}:{username}:{token}");
    if let Some(exp) = expiration {
        raw.push_str(&format!(":{exp}"));
    }
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sdks_signature() {
        // What e2b's get_signature("/a.txt", "read", None, "tok") computes.
        let expected = {
            let d = Sha256::digest(b"/a.txt:read::tok");
            format!(
                "v1_{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)
            )
        };
        assert_eq!(file_signature("/a.txt", "read", "", "tok", None), expected);
        assert_ne!(
            file_signature("/a.txt", "read", "", "tok", Some(5)),
            expected
        );
    }
}
