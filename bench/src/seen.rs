//! Exact loss accounting: every event carries its group's sequence number within its step, and
//! each client remembers which numbers of its group it has seen.
//!
//! ```text
//! publisher: step k, event i -> group i % G, seq i / G      (counts what each group was sent)
//! client:    (k, seq) new -> Step::distinct += 1             missing    = sent x members - distinct
//!            (k, seq) seen -> Step::duplicates += 1          duplicates = counted as they come
//! ```
//!
//! A client keeps one bitset per step for its last few steps (steps do not overlap, but a late
//! event of the previous step must still find its bitset), each bounded by [`MAX_SEQ`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Highest sequence number a client tracks (a 128 KiB bitset at most); a number above it is
/// counted as out of range, never stored.
pub const MAX_SEQ: u64 = 1 << 20;

/// Steps a client remembers at once.
const KEEP: usize = 4;

/// Counters one step shares among every client.
#[derive(Default)]
pub struct Counts {
    /// Events received for the first time (per client).
    pub distinct: AtomicU64,
    /// Events a client had already received.
    pub duplicates: AtomicU64,
    /// Events whose sequence number is above [`MAX_SEQ`] (a tool bug if ever non-zero).
    pub out_of_range: AtomicU64,
}

impl Counts {
    pub fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Relaxed)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    pub fn out_of_range(&self) -> u64 {
        self.out_of_range.load(Ordering::Relaxed)
    }
}

/// What one client has seen, per step.
#[derive(Default)]
pub struct Seen {
    /// `(step, bitset)`, oldest first.
    steps: Vec<(usize, Vec<u64>)>,
}

/// Whether an event was new to this client.
#[derive(Debug, PartialEq, Eq)]
pub enum Mark {
    New,
    Duplicate,
    OutOfRange,
}

impl Seen {
    /// Records `(step, seq)` and counts it into `counts`.
    pub fn mark(&mut self, step: usize, seq: u64, counts: &Counts) -> Mark {
        let mark = self.mark_only(step, seq);
        let counter = match mark {
            Mark::New => &counts.distinct,
            Mark::Duplicate => &counts.duplicates,
            Mark::OutOfRange => &counts.out_of_range,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        mark
    }

    fn mark_only(&mut self, step: usize, seq: u64) -> Mark {
        if seq >= MAX_SEQ {
            return Mark::OutOfRange;
        }
        let pos = match self.steps.iter().position(|(s, _)| *s == step) {
            Some(p) => p,
            None => {
                if self.steps.len() == KEEP {
                    self.steps.remove(0);
                }
                self.steps.push((step, Vec::new()));
                self.steps.len() - 1
            }
        };
        let bits = &mut self.steps[pos].1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            return Mark::Duplicate;
        }
        bits[word] |= 1 << bit;
        Mark::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_new_and_duplicate_per_step() {
        let counts = Counts::default();
        let mut seen = Seen::default();
        assert_eq!(seen.mark(1, 5, &counts), Mark::New);
        assert_eq!(seen.mark(1, 0, &counts), Mark::New);
        assert_eq!(seen.mark(1, 5, &counts), Mark::Duplicate);
        // The same number in another step is another event.
        assert_eq!(seen.mark(2, 5, &counts), Mark::New);
        assert_eq!(seen.mark(1, MAX_SEQ, &counts), Mark::OutOfRange);
        assert_eq!(counts.distinct(), 3);
        assert_eq!(counts.duplicates(), 1);
        assert_eq!(counts.out_of_range(), 1);
    }

    #[test]
    fn keeps_only_recent_steps() {
        let counts = Counts::default();
        let mut seen = Seen::default();
        for step in 0..10 {
            seen.mark(step, 0, &counts);
        }
        assert_eq!(seen.steps.len(), KEEP);
        // The previous step is still remembered.
        assert_eq!(seen.mark(8, 0, &counts), Mark::Duplicate);
    }
}
