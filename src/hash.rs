//! Content hashes: the keys that make reruns idempotent and the provenance of every row.
//!
//! All hashes are lowercase hex SHA-256. Parts are length-prefixed before hashing so that
//! `("ab", "c")` and `("a", "bc")` never collide.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Hash of several strings, unambiguous about where one ends and the next begins.
pub fn of_parts(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Hash of a value's canonical JSON encoding.
pub fn of_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// Streams a file through SHA-256 (models are gigabytes: never read them whole).
pub fn of_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The first 8 bytes of a hex digest as a number (for seeding RNGs).
pub fn hex_to_u64(hex_digest: &str) -> u64 {
    u64::from_str_radix(hex_digest.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_unambiguous() {
        assert_ne!(of_parts(&["ab", "c"]), of_parts(&["a", "bc"]));
        assert_eq!(of_parts(&["x"]), of_parts(&["x"]));
    }
}
