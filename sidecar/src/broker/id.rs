//! Event ids: Redis Stream ids (`<ms>-<seq>`), which order a group's events.
//!
//! ```text
//! XADD (publish.lua) | memory ring --> "1700000000000-3" --parse--> StreamId --> frames, last_id, resume
//! ```

use std::fmt;

/// A Redis Stream id. `0-0` stands for "before everything" (`last_id=<group>:0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Parses `<ms>-<seq>`, or `<ms>` (seq 0), as Redis does.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The next id after `self` (for the in-memory history).
    pub fn next_after(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            Self { ms: now_ms, seq: 0 }
        } else {
            Self {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }

    /// The id just before `self`.
    pub fn predecessor(self) -> Self {
        if self.seq > 0 {
            Self {
                ms: self.ms,
                seq: self.seq - 1,
            }
        } else {
            Self {
                ms: self.ms.saturating_sub(1),
                seq: u64::MAX,
            }
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_like_redis() {
        let a = StreamId::parse("1700000000000-5").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(StreamId::parse("17").unwrap(), StreamId { ms: 17, seq: 0 });
        assert_eq!(StreamId::parse("0").unwrap(), StreamId::ZERO);
        // Numeric, not lexicographic: 9-0 < 10-0.
        assert!(StreamId::parse("9-0").unwrap() < StreamId::parse("10-0").unwrap());
        for bad in [
            "",
            "-",
            "a-1",
            "1-",
            "1-2-3",
            "1- 2",
            "+",
            "123456789012345678901-0",
        ] {
            assert!(StreamId::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(a.to_string(), "1700000000000-5");
    }

    #[test]
    fn predecessor_matches_the_publish_script() {
        assert_eq!(
            StreamId::parse("5-0").unwrap().predecessor().to_string(),
            "4-18446744073709551615"
        );
        assert_eq!(
            StreamId::parse("5-3").unwrap().predecessor().to_string(),
            "5-2"
        );
    }
}
