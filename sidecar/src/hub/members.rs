//! A group's local clients, known by their queues.
//!
//! Most groups have one member (every `user:{sub}` group), so one is kept inline, in the
//! hub's map entry: a list is allocated only from the second member on, and given up again
//! when one is left.

use std::sync::Arc;

/// Members by their shared handle (the hub's: a client's queue), compared by address.
pub(super) enum Members<Q> {
    One(Arc<Q>),
    Many(Vec<Arc<Q>>),
}

impl<Q> Members<Q> {
    pub(super) fn add(&mut self, queue: Arc<Q>) {
        match self {
            Self::One(first) => *self = Self::Many(vec![first.clone(), queue]),
            Self::Many(all) => all.push(queue),
        }
    }

    /// Removes `queue`; false once the group has no member left.
    pub(super) fn remove(&mut self, queue: &Arc<Q>) -> bool {
        match self {
            Self::One(only) => !Arc::ptr_eq(only, queue),
            Self::Many(all) => {
                all.retain(|q| !Arc::ptr_eq(q, queue));
                match all.len() {
                    0 => false,
                    1 => {
                        *self = Self::One(all.pop().expect("one left"));
                        true
                    }
                    _ => true,
                }
            }
        }
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Arc<Q>> {
        match self {
            Self::One(only) => std::slice::from_ref(only).iter(),
            Self::Many(all) => all.iter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<u8> {
        Arc::new(0)
    }

    #[test]
    fn one_member_inline_a_list_from_the_second_and_back() {
        let (a, b, c) = (queue(), queue(), queue());
        let mut m = Members::One(a.clone());
        assert_eq!(m.iter().count(), 1);
        m.add(b.clone());
        m.add(c.clone());
        assert!(matches!(m, Members::Many(_)));
        assert_eq!(m.iter().count(), 3);
        assert!(m.remove(&b));
        assert!(m.remove(&c));
        assert!(matches!(&m, Members::One(q) if Arc::ptr_eq(q, &a)));
        // A queue that is not a member changes nothing.
        assert!(m.remove(&b));
        assert!(!m.remove(&a), "the last member left");
    }
}
