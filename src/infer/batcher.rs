//! Dynamic batching: the pure decision ([`BatchPolicy`]) and the loop that applies it to a queue
//! ([`collect_batch`]). No model and no I/O besides the channel, so both are unit-tested here.
//!
//! Rule (after TGI's queue): a batch closes when it holds `max_batch_size` entries or when its
//! oldest entry has waited `max_queue_delay` since it was enqueued; until then it takes whatever
//! is already queued and waits for more only within that budget. With a zero delay batching is
//! greedy: entries that piled up while the sessions were busy run together, nothing waits.
//! Entries whose client is gone are dropped before they cost a run.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// An entry the batcher can schedule.
pub trait Queued {
    /// When the entry entered the queue.
    fn enqueued_at(&self) -> Instant;
    /// True when nobody waits for the result any more (the client disconnected or timed out).
    fn is_abandoned(&self) -> bool;
}

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most entries per batch (>= 1).
    pub max_batch_size: usize,
    /// Longest time the oldest entry may wait for the batch to fill.
    pub max_queue_delay: Duration,
}

impl BatchPolicy {
    /// How long to keep waiting for more entries, or `None` when the batch must close now.
    /// `Some(ZERO)` means: take what is already queued, but do not wait.
    pub fn wait_budget(&self, len: usize, oldest: Instant, now: Instant) -> Option<Duration> {
        if len >= self.max_batch_size {
            return None;
        }
        Some(
            self.max_queue_delay
                .saturating_sub(now.saturating_duration_since(oldest)),
        )
    }
}

/// Blocks for the first live entry, then fills a batch by `policy`. Abandoned entries are handed
/// to `on_abandoned` (for counting) and never returned. `None` when the queue is closed and empty.
pub fn collect_batch<T: Queued>(
    rx: &Receiver<T>,
    policy: &BatchPolicy,
    mut on_abandoned: impl FnMut(T),
) -> Option<Vec<T>> {
    let first = loop {
        let entry = rx.recv().ok()?;
        if entry.is_abandoned() {
            on_abandoned(entry);
        } else {
            break entry;
        }
    };
    let oldest = first.enqueued_at();
    let mut batch = vec![first];
    while let Some(wait) = policy.wait_budget(batch.len(), oldest, Instant::now()) {
        let next = match rx.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Empty) if !wait.is_zero() => rx.recv_timeout(wait).ok(),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        };
        match next {
            Some(e) if e.is_abandoned() => on_abandoned(e),
            Some(e) => batch.push(e),
            None => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    #[derive(Debug)]
    struct Entry {
        id: u32,
        at: Instant,
        gone: bool,
    }

    impl Queued for Entry {
        fn enqueued_at(&self) -> Instant {
            self.at
        }
        fn is_abandoned(&self) -> bool {
            self.gone
        }
    }

    fn entry(id: u32, gone: bool) -> Entry {
        Entry {
            id,
            at: Instant::now(),
            gone,
        }
    }

    #[test]
    fn budget_closes_on_size_and_on_age() {
        let p = BatchPolicy {
            max_batch_size: 4,
            max_queue_delay: Duration::from_millis(10),
        };
        let t0 = Instant::now();
        assert_eq!(p.wait_budget(4, t0, t0), None);
        assert_eq!(p.wait_budget(1, t0, t0), Some(Duration::from_millis(10)));
        assert_eq!(
            p.wait_budget(2, t0, t0 + Duration::from_millis(4)),
            Some(Duration::from_millis(6))
        );
        // Past the deadline: take what is queued, wait no more.
        assert_eq!(
            p.wait_budget(2, t0, t0 + Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn greedy_batches_take_what_is_queued_up_to_the_limit() {
        let (tx, rx) = channel();
        for i in 0..5 {
            tx.send(entry(i, false)).unwrap();
        }
        let p = BatchPolicy {
            max_batch_size: 3,
            max_queue_delay: Duration::ZERO,
        };
        let ids = |b: Vec<Entry>| b.into_iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(collect_batch(&rx, &p, |_| ()).unwrap()), [0, 1, 2]);
        assert_eq!(ids(collect_batch(&rx, &p, |_| ()).unwrap()), [3, 4]);
        drop(tx);
        assert!(collect_batch(&rx, &p, |_| ()).is_none());
    }

    #[test]
    fn abandoned_entries_are_skipped_and_reported() {
        let (tx, rx) = channel();
        for (i, gone) in [(0, true), (1, false), (2, true), (3, false)] {
            tx.send(entry(i, gone)).unwrap();
        }
        let p = BatchPolicy {
            max_batch_size: 8,
            max_queue_delay: Duration::ZERO,
        };
        let mut dropped = Vec::new();
        let b = collect_batch(&rx, &p, |e| dropped.push(e.id)).unwrap();
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(dropped, [0, 2]);
    }

    #[test]
    fn waits_within_the_delay_for_a_late_entry() {
        let (tx, rx) = channel();
        tx.send(entry(0, false)).unwrap();
        let p = BatchPolicy {
            max_batch_size: 2,
            // Generous: the late entry is sent right away; the batch closes as soon as it is full.
            max_queue_delay: Duration::from_secs(30),
        };
        let sender = std::thread::spawn(move || tx.send(entry(1, false)).unwrap());
        let started = Instant::now();
        let b = collect_batch(&rx, &p, |_| ()).unwrap();
        sender.join().unwrap();
        assert_eq!(b.len(), 2);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
