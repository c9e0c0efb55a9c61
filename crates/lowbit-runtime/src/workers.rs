//! Spinning helper threads for [`crate::engine::Engine::run`]'s batch split.
//!
//! A batch of 256 through the 784-64-10 MLP takes about 100 us on two cores, so the few tens of microseconds a
//! sleeping thread needs to wake up on this VM (a futex wake, then the hypervisor rescheduling an idle vCPU) is a
//! large share of every call. Rayon's workers go to sleep soon after their queue empties; these helpers can instead
//! keep polling for the next batch for a while ([`DEFAULT_SPIN_US`], `LOWBIT_SPIN_US`) before they park, as ONNX
//! Runtime's and OpenMP's thread pools do by default. That polling burns a core of the host process for every
//! batch, so it is opt-in: a caller passes `allow_spinning` (the engine's
//! [`crate::engine::EngineOptions::allow_spinning`], off by default, on in the CLI's `bench` and `eval` and in the
//! benchmarks), and the helpers spin after a batch only if that batch's caller allowed it; otherwise they park as
//! soon as it is done. Measured by the `split_ab` example, which alternates windows between spinning, parking and
//! the whole batch handed to rayon (docs/KERNELS.md, BENCHMARKS.md).
//!
//! One batch at a time uses the helpers: a caller that finds them busy (another thread's batch) runs its tasks alone
//! on its own thread. The calling thread always takes tasks too, so a helper that is slow to wake only loses its
//! share; the caller still waits for a helper that has joined the batch to finish its current task.
//! The helpers are threads of their own beside rayon's pool (`RAYON_NUM_THREADS - 1` of them, counted at first
//! use); parked, they cost nothing.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper keeps polling for the next batch after a batch that allowed spinning, in microseconds
/// (`LOWBIT_SPIN_US` overrides it, read once).
pub const DEFAULT_SPIN_US: u64 = 500;

/// One batch: the caller's task closure and the counter its threads take task indices from. Lives on the caller's
/// stack; helpers reach it through [`Pool::job`] only while the caller waits for them (see [`run_tasks`]).
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.tasks {
                return;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.task)(i))) {
                self.panicked.store(true, SeqCst);
                // Leaked rather than dropped: a payload whose `Drop` panics would unwind out of `work` and break
                // the protocol of `run_tasks` (the caller must not leave while helpers can reach its job).
                std::mem::forget(payload);
            }
        }
    }
}

struct Pool {
    /// The open job (a `*const Job`), or null.
    job: AtomicPtr<()>,
    /// Bumped for every job, so that a polling or parked helper notices it.
    generation: AtomicU64,
    /// Helpers between announcing themselves and leaving a job; the caller waits for zero after closing it.
    active: AtomicUsize,
    /// Per helper: parked (or about to park) and needs an unpark.
    sleeping: Vec<AtomicBool>,
    /// Per helper, the same index as `sleeping`: its thread, or `None` if it could not be spawned.
    threads: OnceLock<Vec<Option<Thread>>>,
    /// Held by the caller whose batch the helpers run.
    busy: Mutex<()>,
    /// Whether the latest batch's caller allowed spinning; written before `generation` is bumped.
    allow_spinning: AtomicBool,
    /// How long helpers poll after a batch that allowed it.
    spin: Duration,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let spin_us = std::env::var("LOWBIT_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_SPIN_US);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            busy: Mutex::new(()),
            allow_spinning: AtomicBool::new(false),
            spin: Duration::from_micros(spin_us),
        }));
        // Without a thread the batch still runs: the caller takes every task itself.
        let threads = (0..helpers)
            .map(|h| {
                std::thread::Builder::new()
                    .name(format!("lowbit-helper-{h}"))
                    .spawn(move || helper(pool, h))
                    .ok()
                    .map(|handle| handle.thread().clone())
            })
            .collect();
        let _ = pool.threads.set(threads);
        pool
    })
}

fn helper(pool: &'static Pool, me: usize) {
    let mut seen = pool.generation.load(SeqCst);
    loop {
        let polled = Instant::now();
        let spin = if pool.allow_spinning.load(SeqCst) {
            pool.spin
        } else {
            Duration::ZERO
        };
        let mut spins = 0u32;
        loop {
            let g = pool.generation.load(SeqCst);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spin.is_zero() || (spins & 255 == 0 && polled.elapsed() >= spin) {
                // The caller reads `sleeping` after bumping `generation` (both SeqCst): either it sees the flag and
                // unparks, or this thread sees the new generation and does not park.
                pool.sleeping[me].store(true, SeqCst);
                if pool.generation.load(SeqCst) == seen {
                    std::thread::park();
                }
                pool.sleeping[me].store(false, SeqCst);
                continue;
            }
            std::hint::spin_loop();
        }
        // Announce, then look: the caller clears `job` before it reads `active`, so either this thread sees null
        // or the caller sees it active and waits until it leaves.
        pool.active.fetch_add(1, SeqCst);
        let job = pool.job.load(SeqCst) as *const Job<'static>;
        // SAFETY: a non-null `job` points to the open job on its caller's stack, which outlives this access because
        // the caller waits for `active` to drop to zero before returning (see above and `run_tasks`); `work` does
        // not unwind (task panics are caught and their payloads leaked).
        if let Some(job) = unsafe { job.as_ref() } {
            job.work();
        }
        pool.active.fetch_sub(1, SeqCst);
    }
}

/// Helper threads available to [`run_tasks`] (rayon's thread count minus the caller; started on first use).
pub fn helpers() -> usize {
    pool()
        .threads
        .get()
        .map_or(0, |t| t.iter().filter(|t| t.is_some()).count())
}

/// Closes the published job and waits until no helper is inside it; in `Drop`, so that it also runs if the
/// caller's own share unwinds (which `Job::work` does not do, but the job must never outlive its frame).
struct Close<'p>(&'p Pool);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        self.0.job.store(std::ptr::null_mut(), SeqCst);
        // Helpers still inside the job finish at most their current task.
        let mut spins = 0u32;
        while self.0.active.load(SeqCst) != 0 {
            spins = spins.wrapping_add(1);
            if spins & 4095 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Runs `task(i)` once for every `i` in `0..tasks`, on the calling thread and the idle helpers, and returns when
/// all have finished. Returns `false` if a task panicked (the other tasks still run). With `allow_spinning`, the
/// helpers that took part keep polling for the next batch for the spin time before they park; without, they park
/// as soon as the batch is done, and the process uses no CPU once this returns.
pub fn run_tasks(tasks: usize, allow_spinning: bool, task: &(dyn Fn(usize) + Sync)) -> bool {
    let job = Job {
        task,
        tasks,
        next: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    let pool = pool();
    let guard = if tasks < 2 || helpers() == 0 {
        None
    } else {
        match pool.busy.try_lock() {
            Ok(g) => Some(g),
            // The lock guards no data, and `Close` has run for whatever unwound while it was held.
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    };
    if guard.is_none() {
        job.work();
        return !job.panicked.load(SeqCst);
    }
    pool.job.store(&job as *const Job<'_> as *mut (), SeqCst);
    pool.allow_spinning.store(allow_spinning, SeqCst);
    let close = Close(pool);
    pool.generation.fetch_add(1, SeqCst);
    if let Some(threads) = pool.threads.get() {
        for (t, sleeping) in threads.iter().zip(&pool.sleeping) {
            if let (Some(t), true) = (t, sleeping.load(SeqCst)) {
                t.unpark();
            }
        }
    }
    job.work();
    drop(close);
    drop(guard);
    !job.panicked.load(SeqCst)
}

thread_local! {
    /// Whether the engine call running on this thread lets the helpers spin (see [`SpinScope`]); read by [`join`].
    static ALLOW_SPIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records, for the engine call on this thread, whether the helpers that [`join`] wakes may keep polling after
/// it ([`run_tasks`]' `allow_spinning`); the previous setting comes back when dropped.
pub struct SpinScope(bool);

impl SpinScope {
    /// Sets the flag [`join`] reads.
    pub fn enter(allow_spinning: bool) -> SpinScope {
        SpinScope(ALLOW_SPIN.replace(allow_spinning))
    }
}

impl Drop for SpinScope {
    fn drop(&mut self) {
        ALLOW_SPIN.set(self.0);
    }
}

/// Runs `a` and `b`, one on the calling thread and one on an idle helper (both here, one after the other, when
/// no helper is free): the two halves of a lone sample's convolution. A helper still polling after the previous
/// step takes its half within a microsecond, where a rayon worker that fell asleep between two 15-us steps takes
/// tens of microseconds to wake on this VM; with rayon's `join` two threads ran ResNet-20 at batch 1 slower than
/// one. Panics if either half panicked (as `rayon::join` would).
pub fn join(a: impl Fn() + Sync, b: impl Fn() + Sync) {
    let both = |i: usize| if i == 0 { a() } else { b() };
    assert!(
        run_tasks(2, ALLOW_SPIN.get(), &both),
        "a half of a split step panicked"
    );
}

thread_local! {
    /// Set while a thread runs tasks of a split batch (the caller or a helper): its convolutions then run their
    /// samples sequentially, like the rayon pool's workers do, instead of splitting them again.
    static IN_SPLIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is running a task of a split batch (see [`SplitTask`]).
pub fn in_split() -> bool {
    IN_SPLIT.get()
}

/// Marks this thread as running a batch task until dropped (also when the task unwinds).
pub struct SplitTask(());

impl SplitTask {
    /// Sets the flag [`in_split`] reads.
    pub fn enter() -> SplitTask {
        IN_SPLIT.set(true);
        SplitTask(())
    }
}

impl Drop for SplitTask {
    fn drop(&mut self) {
        IN_SPLIT.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the process-wide pool; run one at a time so that each one's batches get the helpers.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counts(tasks: usize, spinning: bool) -> (Vec<AtomicUsize>, bool) {
        let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
        let ok = run_tasks(tasks, spinning, &|i| {
            hits[i].fetch_add(1, SeqCst);
        });
        (hits, ok)
    }

    #[test]
    fn every_task_runs_exactly_once() {
        let _serial = serial();
        for tasks in [0usize, 1, 2, 3, 11, 64, 1000] {
            // Alternating: helpers that parked after one batch must be woken for the next.
            for round in 0..50 {
                let (hits, ok) = counts(tasks, round % 2 == 0);
                assert!(ok);
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{tasks} tasks");
            }
        }
    }

    #[test]
    fn helpers_take_tasks_and_wake_after_parking() {
        let _serial = serial();
        if helpers() == 0 {
            // RAYON_NUM_THREADS=1: nothing to take tasks (every_task_runs_exactly_once covers the serial path).
            return;
        }
        let main = std::thread::current().id();
        // Long enough tasks that an awake helper takes some; retried because a loaded machine may starve it.
        // Spinning helpers are awake when the next batch comes; without spinning they have parked.
        let helped = |spinning: bool| {
            (0..20).any(|_| {
                if !spinning {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let others = AtomicUsize::new(0);
                assert!(run_tasks(8, spinning, &|_| {
                    std::thread::sleep(Duration::from_millis(2));
                    if std::thread::current().id() != main {
                        others.fetch_add(1, SeqCst);
                    }
                }));
                others.load(SeqCst) > 0
            })
        };
        assert!(helped(true), "no spinning helper ever took a task");
        assert!(helped(false), "no helper took a task after parking");
    }

    #[test]
    fn join_runs_both_halves_once_and_restores_the_spin_setting() {
        let _serial = serial();
        for allow in [false, true, false] {
            let _spin = SpinScope::enter(allow);
            assert_eq!(ALLOW_SPIN.get(), allow);
            for _ in 0..100 {
                let (a, b) = (AtomicUsize::new(0), AtomicUsize::new(0));
                join(
                    || {
                        a.fetch_add(1, SeqCst);
                    },
                    || {
                        b.fetch_add(1, SeqCst);
                    },
                );
                assert_eq!((a.load(SeqCst), b.load(SeqCst)), (1, 1));
            }
        }
        assert!(!ALLOW_SPIN.get());
        let panicked = catch_unwind(AssertUnwindSafe(|| join(|| (), || panic!("half"))));
        assert!(panicked.is_err(), "a panicking half must panic the caller");
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_others_still_run() {
        let _serial = serial();
        let hits: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
        let ok = run_tasks(16, false, &|i| {
            hits[i].fetch_add(1, SeqCst);
            if i == 5 {
                panic!("task 5");
            }
        });
        assert!(!ok);
        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
        // The pool is still usable.
        let (hits, ok) = counts(16, false);
        assert!(ok && hits.iter().all(|h| h.load(SeqCst) == 1));
    }

    #[test]
    fn concurrent_callers_each_run_all_their_tasks() {
        let _serial = serial();
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for round in 0..200 {
                        let (hits, ok) = counts(3 + (t + round) % 13, round % 3 == 0);
                        assert!(ok);
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn the_caller_returns_only_after_the_helpers_left_its_job() {
        let _serial = serial();
        let main = std::thread::current().id();
        for _ in 0..10 {
            // Helpers' tasks outlast the caller's: returning early would leave them writing into a freed frame.
            let finished: Vec<AtomicBool> = (0..6).map(|_| AtomicBool::new(false)).collect();
            assert!(run_tasks(6, true, &|i| {
                let ms = if std::thread::current().id() == main {
                    1
                } else {
                    6
                };
                std::thread::sleep(Duration::from_millis(ms));
                finished[i].store(true, SeqCst);
            }));
            assert!(finished.iter().all(|f| f.load(SeqCst)));
        }
    }

    #[test]
    fn nested_calls_and_a_panic_payload_that_panics_on_drop_complete() {
        let _serial = serial();
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("payload drop");
            }
        }
        let inner = AtomicUsize::new(0);
        assert!(run_tasks(4, false, &|_| {
            // The helpers are taken: the nested batch runs on this thread.
            assert!(run_tasks(3, true, &|_| {
                inner.fetch_add(1, SeqCst);
            }));
        }));
        assert_eq!(inner.load(SeqCst), 12);
        assert!(!run_tasks(4, false, &|i| {
            if i == 2 {
                std::panic::panic_any(Bomb);
            }
        }));
        let (hits, ok) = counts(8, true);
        assert!(ok && hits.iter().all(|h| h.load(SeqCst) == 1));
    }
}
