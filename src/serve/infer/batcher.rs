//! Dynamic batching: the pure decision ([`BatchPolicy`]) and the queue that applies it
//! ([`BatchQueue`]). No model and no I/O, so both are unit-tested here.
//!
//! Rule (after TGI's queue): a batch closes when it holds `max_batch_size` entries or when its
//! oldest entry has waited `max_queue_delay` since it was enqueued; until then it takes whatever
//! is already queued and waits for more only within that budget, and only while more are on
//! their way: requests announce their entries before decoding them ([`BatchQueue::announce`]).
//! With nothing announced, waiting could only delay the batch: at one client every request
//! waited out the whole delay (0.16 ms of 0.87 on an H200, docs/BENCHMARKS.md). With a zero
//! delay batching is greedy: entries that piled up while the sessions were busy run together,
//! nothing waits. Entries whose client is gone are dropped before they cost a run.
//!
//! Why a queue of our own rather than `std::sync::mpsc`: several session threads consume it. A
//! shared `Receiver` needs a mutex that one idle thread holds while blocked in `recv`, so every
//! batch woke two threads (the receiver, then the mutex waiter, which only went back to sleep).
//! Thread wake-ups dominated the server's profile on a small VM; here a push wakes at most one
//! idle consumer per entry, and none when all are busy (the common case under load).
//!
//! Idle consumers are woken last-in, first-out: the session that finished most recently takes
//! the next batch, so at low load one session (its weights and buffers in its core's caches)
//! runs every request. A condition variable wakes its waiters first-in, first-out, which made
//! two idle sessions take turns: EfficientNet-Lite0's run at one client took 7.86 ms against
//! 7.13 ms with one session (docs/BENCHMARKS.md, session 16).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::runtime::Device;

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

/// The batching defaults of a device, used wherever the operator set no flag.
///
/// CPU: a run costs about linearly in the batch size, so nothing is gained by waiting for more
/// images: greedy batches of at most 32, two sessions (the defaults before GPUs were served).
/// CUDA: a small run is bound by kernel launches, not arithmetic (ResNet-20 at batch 1 and at
/// batch 64 take about the same time on an H200), so larger batches (128) are nearly free and a
/// short queue delay (100 us: well under the 0.3 ms a single client may lose) lets a second
/// session gather a batch instead of launching a run of one image beside a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDefaults {
    /// Most images per run.
    pub max_batch_size: usize,
    /// Longest wait for a batch to fill.
    pub max_queue_delay: Duration,
    /// Sessions (one thread each) per model.
    pub sessions_per_model: usize,
}

impl DeviceDefaults {
    /// The defaults for `device`.
    pub fn for_device(device: Device) -> Self {
        match device {
            // On the CPU a larger batch saves nothing once the per-run overhead is amortised
            // (LeNet and ResNet-20 are flat per image from batch 4-8), and on a 224x224 model it
            // costs: the activations of 32 images overflow the caches, 8,304 us per image at 32
            // against 7,508 at 8 for EfficientNet-Lite0, and three times the peak memory
            // (docs/BENCHMARKS.md, session 12).
            Device::Cpu => DeviceDefaults {
                max_batch_size: 8,
                max_queue_delay: Duration::ZERO,
                sessions_per_model: 2,
            },
            Device::Cuda(_) => DeviceDefaults {
                max_batch_size: 128,
                max_queue_delay: Duration::from_micros(100),
                sessions_per_model: 2,
            },
        }
    }
}

/// The batch sizes a session runs on `device` with batches of at most `max_batch_size`: on a
/// GPU every batch is padded up to the next of these sizes (powers of two, then the maximum),
/// so that warm-up can run each shape once before the server is ready. A new input shape costs
/// the CUDA provider a cuDNN algorithm search and arena growth (tens of ms to seconds for a
/// large model), which would otherwise land on the first request of each size; the padded rows
/// cost little on a device whose small runs are launch-bound. On the CPU a padded row costs as
/// much as a real one and a new shape costs nothing, so batches run at their own size (empty
/// list) and warm-up runs one image.
pub fn padded_sizes(device: Device, max_batch_size: usize) -> Vec<usize> {
    if !device.is_cuda() {
        return Vec::new();
    }
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |s| s.checked_mul(2))
        .take_while(|&s| s < max_batch_size)
        .collect();
    sizes.push(max_batch_size.max(1));
    sizes
}

/// The size a batch of `len` entries runs at: the smallest of `sizes` that holds it, or `len`
/// itself without padding (`sizes` empty, or `len` above them all).
pub fn padded_len(sizes: &[usize], len: usize) -> usize {
    sizes.iter().copied().find(|&s| s >= len).unwrap_or(len)
}

/// Why entries were not queued; they are handed back.
#[derive(Debug)]
pub enum PushError<T> {
    /// The queue holds `capacity` entries already.
    Full(Vec<T>),
    /// The queue was closed (the model is being dropped).
    Closed(Vec<T>),
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Consumers blocked for entries, the most recently idle last: a push wakes from the end,
    /// and only when someone is there to wake.
    idle: Vec<Arc<Waiter>>,
}

/// A consumer parked in [`BatchQueue::next_batch`].
struct Waiter {
    thread: Thread,
    /// Set, under the queue's lock, by whoever takes the waiter off the idle stack to wake it;
    /// parking can also end spuriously or on a timeout, which this tells apart.
    woken: AtomicBool,
}

impl<T> State<T> {
    /// Takes the most recently idle consumer off the stack, to be unparked once the lock is
    /// released.
    fn wake_one(&mut self) -> Option<Arc<Waiter>> {
        let w = self.idle.pop()?;
        w.woken.store(true, Ordering::Release);
        Some(w)
    }
}

/// A bounded multi-producer, multi-consumer queue of entries that consumers take in batches.
pub struct BatchQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Outstanding [`Announced`]s.
    announced: AtomicUsize,
}

/// A request's word that entries for the queue are on their way (its images are being
/// decoded): while any is outstanding, a consumer filling a batch waits for them within the
/// queue delay. Given up by [`BatchQueue::push_all`] together with the entries, or by dropping
/// it when the request fails first.
#[must_use = "a dropped announcement announces nothing"]
pub struct Announced<'a>(&'a AtomicUsize);

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Announced<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Announced")
    }
}

impl<T> std::fmt::Debug for BatchQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<T: Queued> BatchQueue<T> {
    /// An open, empty queue holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
                idle: Vec::new(),
            }),
            capacity,
            announced: AtomicUsize::new(0),
        }
    }

    /// Announces entries that will be pushed soon (see [`Announced`]).
    pub fn announce(&self) -> Announced<'_> {
        self.announced.fetch_add(1, Ordering::AcqRel);
        Announced(&self.announced)
    }

    // A panic while the lock is held cannot leave `State` half-updated (every update is a
    // single push, pop or flag write), so a poisoned lock is still consistent.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases the lock and parks this thread on top of the idle stack until a push or a close
    /// wakes it, or `timeout` passes; returns with the lock held again.
    fn wait<'a>(
        &'a self,
        mut s: MutexGuard<'a, State<T>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State<T>> {
        let me = Arc::new(Waiter {
            thread: std::thread::current(),
            woken: AtomicBool::new(false),
        });
        s.idle.push(Arc::clone(&me));
        drop(s);
        let deadline = timeout.map(|t| Instant::now() + t);
        while !me.woken.load(Ordering::Acquire) {
            match deadline {
                None => std::thread::park(),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                    _ => break,
                },
            }
        }
        let mut s = self.lock();
        // Timed out: leave the stack, unless a push took this waiter off it meanwhile.
        if let Some(i) = s.idle.iter().position(|w| Arc::ptr_eq(w, &me)) {
            s.idle.remove(i);
        }
        s
    }

    /// Queues all of `entries` or none of them (a request's images are never split between a
    /// 429 and a run), ending their announcement if they had one.
    pub fn push_all(
        &self,
        entries: Vec<T>,
        announced: Option<Announced<'_>>,
    ) -> Result<(), PushError<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed(entries));
        }
        if s.items.len() + entries.len() > self.capacity {
            return Err(PushError::Full(entries));
        }
        let n = entries.len();
        s.items.extend(entries);
        // Under the lock: a consumer that finds these entries finds their announcement gone.
        drop(announced);
        let wake: Vec<Arc<Waiter>> = (0..n).map_while(|_| s.wake_one()).collect();
        drop(s);
        for w in wake {
            w.thread.unpark();
        }
        Ok(())
    }

    /// Closes the queue: pushes fail, and consumers get `None` once it is drained.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        let wake: Vec<Arc<Waiter>> = std::iter::from_fn(|| s.wake_one()).collect();
        drop(s);
        for w in wake {
            w.thread.unpark();
        }
    }

    /// Most entries the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries waiting now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// True when no entry waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True while some request has announced entries it has not pushed.
    fn more_announced(&self) -> bool {
        self.announced.load(Ordering::Acquire) > 0
    }

    /// Consumers parked for entries.
    #[cfg(test)]
    fn idle_consumers(&self) -> usize {
        self.lock().idle.len()
    }

    /// Blocks for the first live entry, then fills a batch by `policy`. Abandoned entries are
    /// handed to `on_abandoned` (for counting) and never returned. `None` when the queue is
    /// closed and empty. The lock is held only while taking entries, never while waiting.
    pub fn next_batch(
        &self,
        policy: &BatchPolicy,
        mut on_abandoned: impl FnMut(T),
    ) -> Option<Vec<T>> {
        let mut s = self.lock();
        let first = loop {
            match s.items.pop_front() {
                Some(e) if e.is_abandoned() => on_abandoned(e),
                Some(e) => break e,
                None if s.closed => return None,
                None => s = self.wait(s, None),
            }
        };
        let oldest = first.enqueued_at();
        let mut batch = Vec::with_capacity(policy.max_batch_size.min(s.items.len() + 1));
        batch.push(first);
        loop {
            while batch.len() < policy.max_batch_size {
                match s.items.pop_front() {
                    Some(e) if e.is_abandoned() => on_abandoned(e),
                    Some(e) => batch.push(e),
                    None => break,
                }
            }
            match policy.wait_budget(batch.len(), oldest, Instant::now()) {
                Some(wait) if !wait.is_zero() && !s.closed && self.more_announced() => {
                    s = self.wait(s, Some(wait))
                }
                _ => break,
            }
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    fn ids(b: Vec<Entry>) -> Vec<u32> {
        b.into_iter().map(|e| e.id).collect()
    }

    const GREEDY: Duration = Duration::ZERO;

    fn policy(max_batch_size: usize, max_queue_delay: Duration) -> BatchPolicy {
        BatchPolicy {
            max_batch_size,
            max_queue_delay,
        }
    }

    #[test]
    fn devices_plan_their_own_batches() {
        let cpu = DeviceDefaults::for_device(Device::Cpu);
        let gpu = DeviceDefaults::for_device(Device::Cuda(0));
        assert_eq!(
            (cpu.max_batch_size, cpu.max_queue_delay),
            (8, Duration::ZERO)
        );
        assert!(gpu.max_batch_size > cpu.max_batch_size);
        assert!(gpu.max_queue_delay > Duration::ZERO);
        // Under the 0.3 ms a lone client may lose to batching (issue 20).
        assert!(gpu.max_queue_delay < Duration::from_micros(300));
        assert_eq!(padded_sizes(Device::Cpu, 32), Vec::<usize>::new());
        assert_eq!(padded_sizes(Device::Cuda(0), 1), [1]);
        assert_eq!(padded_sizes(Device::Cuda(0), 8), [1, 2, 4, 8]);
        assert_eq!(
            padded_sizes(Device::Cuda(1), 100),
            [1, 2, 4, 8, 16, 32, 64, 100]
        );
        let sizes = padded_sizes(Device::Cuda(0), 128);
        assert_eq!(sizes.len(), 8);
        assert_eq!(padded_len(&sizes, 1), 1);
        assert_eq!(padded_len(&sizes, 3), 4);
        assert_eq!(padded_len(&sizes, 65), 128);
        assert_eq!(padded_len(&sizes, 128), 128);
        assert_eq!(padded_len(&[], 7), 7);
        assert_eq!(padded_len(&sizes, 200), 200);
    }

    #[test]
    fn budget_closes_on_size_and_on_age() {
        let p = policy(4, Duration::from_millis(10));
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
        let q = BatchQueue::new(16);
        q.push_all((0..5).map(|i| entry(i, false)).collect(), None)
            .unwrap();
        let p = policy(3, GREEDY);
        assert_eq!(ids(q.next_batch(&p, |_| ()).unwrap()), [0, 1, 2]);
        assert_eq!(ids(q.next_batch(&p, |_| ()).unwrap()), [3, 4]);
        q.close();
        assert!(q.next_batch(&p, |_| ()).is_none());
    }

    #[test]
    fn abandoned_entries_are_skipped_and_reported() {
        let q = BatchQueue::new(16);
        let entries = [(0, true), (1, false), (2, true), (3, false)];
        q.push_all(entries.map(|(i, gone)| entry(i, gone)).into(), None)
            .unwrap();
        let mut dropped = Vec::new();
        let b = q
            .next_batch(&policy(8, GREEDY), |e| dropped.push(e.id))
            .unwrap();
        assert_eq!(ids(b), [1, 3]);
        assert_eq!(dropped, [0, 2]);
    }

    #[test]
    fn pushes_are_all_or_nothing_within_capacity() {
        let q = BatchQueue::new(3);
        q.push_all(vec![entry(0, false), entry(1, false)], None)
            .unwrap();
        match q.push_all(vec![entry(2, false), entry(3, false)], None) {
            Err(PushError::Full(back)) => assert_eq!(ids(back), [2, 3]),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(q.len(), 2);
        q.push_all(vec![entry(2, false)], None).unwrap();
        q.close();
        assert!(matches!(
            q.push_all(vec![entry(4, false)], None),
            Err(PushError::Closed(_))
        ));
        // Closing still lets consumers drain what was queued.
        assert_eq!(
            ids(q.next_batch(&policy(8, GREEDY), |_| ()).unwrap()),
            [0, 1, 2]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn waits_within_the_delay_for_an_announced_entry() {
        let q = BatchQueue::new(16);
        q.push_all(vec![entry(0, false)], None).unwrap();
        // Generous: the late entry is pushed right away; the batch closes as soon as it is full.
        let p = policy(2, Duration::from_secs(30));
        let started = Instant::now();
        let b = std::thread::scope(|scope| {
            let announced = q.announce();
            scope.spawn(|| q.push_all(vec![entry(1, false)], Some(announced)).unwrap());
            q.next_batch(&p, |_| ()).unwrap()
        });
        assert_eq!(ids(b), [0, 1]);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(!q.more_announced());
    }

    #[test]
    fn a_batch_runs_at_once_when_nothing_more_is_announced() {
        let q = BatchQueue::new(1);
        let p = policy(4, Duration::from_secs(30));
        q.push_all(vec![entry(0, false)], Some(q.announce()))
            .unwrap();
        let started = Instant::now();
        assert_eq!(ids(q.next_batch(&p, |_| ()).unwrap()), [0]);
        // A request turned away gives its announcement up too.
        q.push_all(vec![entry(1, false)], None).unwrap();
        assert!(matches!(
            q.push_all(vec![entry(2, false)], Some(q.announce())),
            Err(PushError::Full(_))
        ));
        assert_eq!(ids(q.next_batch(&p, |_| ()).unwrap()), [1]);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_idle_consumer_wakes_for_a_push_and_on_close() {
        let q = Arc::new(BatchQueue::<Entry>::new(16));
        let consumer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(b) = q.next_batch(&policy(4, GREEDY), |_| ()) {
                    seen.extend(ids(b));
                }
                seen
            })
        };
        q.push_all(vec![entry(7, false)], None).unwrap();
        q.push_all(vec![entry(8, false), entry(9, false)], None)
            .unwrap();
        // The consumer drains before it sees the close, whatever the interleaving.
        q.close();
        assert_eq!(consumer.join().unwrap(), [7, 8, 9]);
    }

    /// Spins until `n` consumers are parked (each test thread parks within microseconds).
    fn until_idle(q: &BatchQueue<Entry>, n: usize) {
        let start = Instant::now();
        while q.idle_consumers() != n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "consumers never parked"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_most_recently_idle_consumer_takes_the_next_batch() {
        let q = Arc::new(BatchQueue::<Entry>::new(16));
        let consumer = |name: &'static str| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(b) = q.next_batch(&policy(4, GREEDY), |_| ()) {
                    seen.extend(ids(b));
                }
                (name, seen)
            })
        };
        let first = consumer("first");
        until_idle(&q, 1);
        let second = consumer("second");
        until_idle(&q, 2);
        // Each push wakes the consumer on top of the stack; it takes the entry and parks on top
        // again, so the consumer that went idle first is never woken.
        for id in 0..3 {
            q.push_all(vec![entry(id, false)], None).unwrap();
            until_idle(&q, 2);
        }
        q.close();
        assert_eq!(second.join().unwrap(), ("second", vec![0, 1, 2]));
        assert_eq!(first.join().unwrap(), ("first", vec![]));
    }

    #[test]
    fn a_consumer_whose_wait_times_out_leaves_the_idle_stack() {
        let q = BatchQueue::new(16);
        q.push_all(vec![entry(0, false)], None).unwrap();
        // Another request is decoding, so the consumer waits; it never arrives.
        let _decoding = q.announce();
        let b = q.next_batch(&policy(4, Duration::from_millis(20)), |_| ());
        assert_eq!(ids(b.unwrap()), [0]);
        assert_eq!(q.idle_consumers(), 0);
        // A later push finds nobody to wake and stays queued.
        q.push_all(vec![entry(1, false)], None).unwrap();
        assert_eq!(q.len(), 1);
    }
}
