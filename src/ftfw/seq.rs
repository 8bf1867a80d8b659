//! Sequence numbers that wrap at 2^32.

use std::cmp::Ordering;
use std::fmt;

/// A 32-bit sequence number. Two numbers compare by their wrapping
/// difference, so the order is only meaningful for numbers less than 2^31
/// apart; distances are checked and return `Option` because the peer
/// controls these values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// `self + n`, wrapping.
    pub fn plus(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }

    /// `self - n`, wrapping.
    pub fn minus(self, n: u32) -> Seq {
        Seq(self.0.wrapping_sub(n))
    }

    /// The next number.
    pub fn next(self) -> Seq {
        self.plus(1)
    }

    /// Signed distance `self - other`: positive when `self` is after.
    pub fn diff(self, other: Seq) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// How far `self` is after `earlier`, or `None` when it is before it.
    pub fn distance_from(self, earlier: Seq) -> Option<u32> {
        u32::try_from(self.diff(earlier)).ok()
    }
}

impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Seq) -> Option<Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_across_the_wrap() {
        let a = Seq(u32::MAX - 1);
        let b = a.plus(3);
        assert_eq!(b, Seq(1));
        assert!(a < b);
        assert_eq!(b.diff(a), 3);
        assert_eq!(b.distance_from(a), Some(3));
        assert_eq!(a.distance_from(b), None);
        assert_eq!(b.minus(3), a);
    }
}
