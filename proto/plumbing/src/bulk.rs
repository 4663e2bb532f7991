//! Bulk work on its own, lower-priority thread.
//!
//! Encoding or parsing a whole-cluster list costs a few hundred ms of CPU; an HPA query costs
//! tens of µs but must answer within a few ms. On a machine whose cores are busy, the scheduler
//! otherwise shares them fairly, and the short query waits for a time slice behind the bulk
//! work. [`spawn`] runs such work on a fresh thread that first makes itself
//! [`BULK_NICENESS`] steps nicer (Linux nice values are per thread), so a woken query thread
//! preempts it; with idle cores it runs at full speed as before.
//!
//! A fresh thread, not tokio's blocking pool: an unprivileged thread can raise its niceness
//! but not lower it again, so a pooled thread would stay nice for whatever it ran next.

use std::io;
use std::thread::JoinHandle;

/// How many nice steps a bulk thread adds to the process's own niceness (capped at 19, the
/// lowest priority). Ten steps give it about a tenth of a nice-0 thread's CPU share under
/// contention.
pub const BULK_NICENESS: i32 = 10;

/// The lowest priority Linux has (the highest nice value).
const NICEST: i32 = 19;

/// Runs `work` on a new thread named `name` at [`BULK_NICENESS`] steps lower priority.
/// Fails only when no thread can be started (the caller then chooses: run it elsewhere, or
/// report the error). If the priority cannot be changed the work still runs, at the normal one.
pub fn spawn<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        let _ = lower_this_thread();
        work()
    })
}

/// [`spawn`] of `work(value)`, handing `value` back when no thread can be started (so the
/// caller can still do the work elsewhere): the thread is started first and then handed the
/// value.
pub fn spawn_with<V: Send + 'static>(name: &str, value: V, work: impl FnOnce(V) + Send + 'static) -> Result<JoinHandle<()>, V> {
    let (hand_over, handed) = std::sync::mpsc::sync_channel::<V>(1);
    let Ok(thread) = spawn(name, move || {
        if let Ok(value) = handed.recv() {
            work(value);
        }
    }) else {
        return Err(value);
    };
    match hand_over.send(value) {
        Ok(()) => Ok(thread),
        Err(std::sync::mpsc::SendError(value)) => Err(value),
    }
}

/// [`spawn`] for async callers: the value `work` returns, awaited without blocking a runtime
/// worker. `Err` when no thread could be started or `work` panicked, with why.
pub async fn run<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(name, move || {
        let _ = tx.send(work());
    })
    .map_err(|e| format!("starting thread {name}: {e}"))?;
    rx.await.map_err(|_| format!("thread {name} ended without a result (panicked)"))
}

/// Makes the calling thread [`BULK_NICENESS`] steps nicer; returns its new nice value.
pub fn lower_this_thread() -> io::Result<i32> {
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid))?;
    let nicer = (now + BULK_NICENESS).min(NICEST);
    rustix::process::setpriority_process(Some(tid), nicer)?;
    Ok(nicer)
}

/// The calling thread's nice value.
pub fn this_thread_niceness() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_thread_is_nicer_than_its_spawner_and_the_spawner_is_unchanged() {
        let before = this_thread_niceness().expect("niceness");
        let inside = spawn("bulk-test", || this_thread_niceness().expect("niceness")).expect("thread").join().expect("join");
        assert_eq!(inside, (before + BULK_NICENESS).min(NICEST));
        assert_eq!(this_thread_niceness().expect("niceness"), before, "only the bulk thread changed");
    }

    #[test]
    fn spawn_with_runs_the_work_on_the_value_at_the_lower_priority() {
        let before = this_thread_niceness().expect("niceness");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = spawn_with("bulk-test", 41, move |v| {
            let _ = tx.send((v + 1, this_thread_niceness().expect("niceness")));
        })
        .expect("started");
        thread.join().expect("join");
        assert_eq!(rx.recv().expect("ran"), (42, (before + BULK_NICENESS).min(NICEST)));
    }

    #[tokio::test]
    async fn run_returns_the_value_or_says_the_work_panicked() {
        assert_eq!(run("bulk-test", || 6 * 7).await, Ok(42));
        let err = run("bulk-test", || -> u8 { panic!("boom") }).await.expect_err("panicked");
        assert!(err.contains("bulk-test") && err.contains("panicked"), "{err}");
    }
}
