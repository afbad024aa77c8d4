//! Waiting on a worker thread: queue a job that answers when done, and
//! wait for the answer, all within one deadline.

use std::{
    sync::mpsc::{Receiver, SyncSender, TrySendError},
    time::{Duration, Instant},
};

/// Queues `job` on `jobs` (retrying while the queue is full) and waits for
/// `finished`; false if either did not happen within `timeout`.
pub(crate) fn send_and_wait<J>(
    jobs: &SyncSender<J>,
    mut job: J,
    finished: Receiver<()>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match jobs.try_send(job) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                job = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
    finished
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}
