//! The server's CPU scheduling policy (`--cpu-scheduling`, issue 19).
//!
//! A serving process is a throughput job: its session threads run ONNX Runtime for hundreds of
//! microseconds at a time, while its async workers wake for every socket event and reply. Under
//! Linux's default policy a woken async worker preempts a running inference on its core, which
//! then resumes with cold caches, and the switches add up: on the 2-core benchmark machine
//! ResNet-20 at 64 clients spent 7.5% of the server's CPU in the scheduler. `SCHED_BATCH` tells
//! the kernel the threads are CPU-bound: their wake-ups no longer preempt the running thread
//! (it runs until its slice ends or it blocks), everything else about fairness is unchanged, and
//! it needs no privilege. Set on the main thread before any other starts, it is inherited by
//! every thread the server creates (async workers, session threads, ONNX Runtime's pools).

// `unsafe` is one call of `sched_setscheduler` with a parameter struct owned by the caller.
#![allow(unsafe_code)]

/// How the server's threads are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuScheduling {
    /// `SCHED_BATCH` on Linux: no wake-up preemption between the server's threads.
    Batch,
    /// The policy the process was started with.
    Normal,
}

/// Applies `policy` to the calling thread (and so to every thread it starts afterwards).
/// Returns a sentence for the log when the policy could not be applied.
pub fn apply(policy: CpuScheduling) -> Result<(), String> {
    match policy {
        CpuScheduling::Normal => Ok(()),
        CpuScheduling::Batch => set_batch(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> Result<(), String> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the duration of the call; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot set SCHED_BATCH: {}",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> Result<(), String> {
    Err("SCHED_BATCH exists only on Linux; the default policy stays".into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's policy, from the kernel.
    fn policy_of_this_thread() -> i32 {
        // SAFETY: no arguments besides the pid of the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn batch_is_applied_to_the_thread_and_inherited_by_the_threads_it_starts() {
        // A thread of its own, so that the test runner's threads keep their policy.
        std::thread::spawn(|| {
            let before = policy_of_this_thread();
            apply(CpuScheduling::Normal).unwrap();
            assert_eq!(policy_of_this_thread(), before);
            apply(CpuScheduling::Batch).unwrap();
            assert_eq!(policy_of_this_thread(), libc::SCHED_BATCH);
            let child = std::thread::spawn(policy_of_this_thread).join().unwrap();
            assert_eq!(child, libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }
}
