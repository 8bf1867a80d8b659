//! The sliding window of datagram counters that refuses a second copy of
//! an authenticated datagram, as IPsec ESP (RFC 4303 §3.4.3) and WireGuard
//! do: the highest counter seen, and a bitmap of the [`WINDOW`] before it.

/// Counters this far behind the highest one seen are still told apart;
/// older ones are refused. A sync link reorders little; 1024 datagrams is
/// far more than a burst in flight.
pub(crate) const WINDOW: u64 = 1024;

const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplayWindow {
    /// Highest counter accepted.
    top: u64,
    /// Bit `c % WINDOW` is set when counter `c` (within the window) was
    /// accepted.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    /// A window whose first accepted counter is `first`. Nothing before it
    /// is accepted: it was not tracked, so it may be a recording.
    pub fn new(first: u64) -> ReplayWindow {
        ReplayWindow { top: first, seen: [u64::MAX; WORDS] }
    }

    /// Accept `counter` once: false for a counter seen before or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter > self.top {
            let shift = counter - self.top;
            if shift >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for c in self.top + 1..counter {
                    self.clear(c);
                }
            }
            self.top = counter;
            self.set(counter);
            return true;
        }
        if self.top - counter >= WINDOW || self.is_set(counter) {
            return false;
        }
        self.set(counter);
        true
    }

    fn index(c: u64) -> (usize, u64) {
        let bit = c % WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    fn set(&mut self, c: u64) {
        let (w, b) = Self::index(c);
        self.seen[w] |= b;
    }

    fn clear(&mut self, c: u64) {
        let (w, b) = Self::index(c);
        self.seen[w] &= !b;
    }

    fn is_set(&self, c: u64) -> bool {
        let (w, b) = Self::index(c);
        self.seen[w] & b != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_accepted_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::new(5000);
        assert!(!w.accept(5000));
        assert!(!w.accept(4999), "older than the first is untracked");
        assert!(w.accept(5003));
        assert!(w.accept(5001));
        assert!(!w.accept(5001));
        assert!(!w.accept(5003));
        assert!(w.accept(5002));
        assert!(w.accept(5000 + WINDOW));
        assert!(!w.accept(5000));
        assert!(w.accept(5004));
        assert!(!w.accept(5003));
        // A jump clears what it passes over.
        assert!(w.accept(5000 + 10 * WINDOW));
        assert!(w.accept(5000 + 10 * WINDOW - 1));
        assert!(!w.accept(5000 + 9 * WINDOW));
        assert!(!w.accept(5000 + 10 * WINDOW));
    }

    proptest::proptest! {
        /// Against a set of every counter accepted: a counter is accepted
        /// if and only if it is new and at most WINDOW - 1 behind the top.
        #[test]
        fn matches_a_model(start in 0u64..1 << 40, steps in proptest::collection::vec(-1500i64..1500, 1..400)) {
            let mut w = ReplayWindow::new(start);
            let mut seen = std::collections::HashSet::from([start]);
            let mut top = start;
            let mut c = start as i64;
            for s in steps {
                c = (c + s).max(0);
                let cu = c as u64;
                let want = !seen.contains(&cu) && cu > start && (cu > top || top - cu < WINDOW);
                proptest::prop_assert_eq!(w.accept(cu), want, "counter {}", cu);
                if want {
                    seen.insert(cu);
                    top = top.max(cu);
                }
            }
        }
    }
}
