//! Which of `--channels-hosts` a group or an inbox lives on: channels_redis's
//! `_consistent_hash`, bit for bit, so the sidecar and the app's senders agree.
//!
//! ```text
//! "<prefix>__group__<g>" | "<g>" | "specific.<id>!" --crc32 & 0xFFF--> ring of 4096 --> host index
//! ```

/// channels_redis `_consistent_hash`: CRC-32 of the name, top 12 bits of the ring, then scaled
/// down to one of `ring_size` hosts.
pub fn consistent_hash(value: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let bigval = (crc32(value.as_bytes()) & 0xFFF) as f64;
    let ring_divisor = 4096.0 / ring_size as f64;
    ((bigval / ring_divisor) as usize).min(ring_size - 1)
}

/// CRC-32 (IEEE, as Python's `binascii.crc32`); only hashed on joins, so bitwise is enough.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_binascii() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn consistent_hash_matches_channels_redis() {
        // Values from channels_redis.utils._consistent_hash computed with Python.
        assert_eq!(consistent_hash("anything", 1), 0);
        for (value, ring, want) in [
            ("user_42_tasks", 2, 1),
            ("user_42_tasks", 3, 1),
            ("g1", 2, 1),
            ("g1", 3, 2),
            ("asgi__group__g1", 2, 0),
            ("specific.0123456789abcdef0123456789abcdef!", 3, 1),
        ] {
            assert_eq!(consistent_hash(value, ring), want, "{value} over {ring}");
        }
    }
}
