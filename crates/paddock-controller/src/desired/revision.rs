//! Revision hashes: FNV-1a (32 bit) over the canonical JSON of what defines a revision.
//! JSON objects from `serde_json::Value` are key-ordered, so equal content hashes equally.

use serde::Serialize;

fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A short, label-safe hash of `value` (lowercase hex).
pub fn hash<T: Serialize>(value: &T) -> String {
    // Going through `Value` sorts map keys, which struct serialisation alone would not do for
    // maps held in `BTreeMap`s of `Value`s from users.
    let canonical = serde_json::to_value(value)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default();
    format!("{:08x}", fnv1a32(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn hash_ignores_key_order() {
        let a = serde_json::json!({"a": 1, "b": {"x": 1, "y": 2}});
        let b: serde_json::Value =
            serde_json::from_str(r#"{"b": {"y": 2, "x": 1}, "a": 1}"#).unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&serde_json::json!({"a": 2})));
    }
}
