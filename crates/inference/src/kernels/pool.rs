//! One thread pool for every packed matmul of the forward pass.
//!
//! A decode step of SmolLM3-3B makes about 200 matmul hand-offs; parking and waking threads
//! for each (rayon's pool, candle's barrier pool beside it) costs more than the smaller
//! matmuls themselves on two cores. Here the caller runs share 0 of every job itself, the
//! workers spin on an epoch counter between jobs (then yield, then sleep after about a
//! millisecond without work, so an idle server burns nothing), and each job gets its worker
//! index, so there is no queue: a job shares out its own work (the matmuls claim pieces of
//! their rows, see `Chunks`).

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;

/// Spins of `spin_loop` before a worker starts yielding, then yields before it sleeps.
const SPINS: u32 = 20_000;
const YIELDS: u32 = 200;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    epoch: AtomicU64,
    /// The job of the current epoch; written only while no worker runs one.
    job: UnsafeCell<Option<*const Job>>,
    pending: AtomicUsize,
    panicked: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

// SAFETY: `job` is written by the one caller holding `Pool::caller` before the epoch is
// published (release) and read by workers after they observe it (acquire); the caller waits
// until every worker is done with it before returning or writing it again.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// Workers plus the calling thread: `threads()` shares per job.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    caller: Mutex<()>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        for index in 1..threads {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("smolbot-kernel-{index}"))
                .spawn(move || work(&shared, index))
                .expect("spawning a kernel thread");
        }
        Self {
            shared,
            threads,
            caller: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(i)` for every share `i` in `0..threads()`, share 0 on this thread, and
    /// returns when all are done. Callers from several threads take turns.
    pub fn run<F: Fn(usize) + Sync>(&self, job: F) {
        if self.threads == 1 {
            job(0);
            return;
        }
        let _turn = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        let erased: &(dyn Fn(usize) + Sync) = &job;
        // SAFETY: no worker reads `job` until the epoch below changes, and this function
        // does not return (so `job` stays alive) until `pending` says every worker is done.
        unsafe {
            *shared.job.get() = Some(
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(erased) as *const Job,
            );
        }
        shared.pending.store(self.threads - 1, Ordering::Relaxed);
        {
            let sleepers = shared.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            shared.epoch.fetch_add(1, Ordering::Release);
            if *sleepers > 0 {
                shared.wake.notify_all();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every worker has finished with the job.
        unsafe { *shared.job.get() = None };
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel worker thread panicked");
        }
    }
}

fn work(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            if shared.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else if spins < SPINS + YIELDS {
                thread::yield_now();
            } else {
                let mut sleepers = shared.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while shared.epoch.load(Ordering::Acquire) == seen {
                    sleepers = shared
                        .wake
                        .wait(sleepers)
                        .unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
                break;
            }
        }
        seen = shared.epoch.load(Ordering::Acquire);
        // SAFETY: the caller published this job before the epoch we observed and keeps it
        // alive until `pending` reaches zero.
        let job = unsafe { (*shared.job.get()).expect("a job is published with its epoch") };
        if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// The process's pool, sized at first use from `--threads` (`RAYON_NUM_THREADS`), else
/// `CANDLE_NUM_THREADS`, else the number of cores — the same rule candle uses.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_job() {
        let pool = Pool::new(3);
        let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn a_panicking_share_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(result.is_err());
        let hits = AtomicUsize::new(0);
        pool.run(|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
