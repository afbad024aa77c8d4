//! The thread that finds Python processes: the agent names the processes
//! it sees, this thread reads their mappings and interpreters (ELF files,
//! tens of MiB for a libpython with symbols) off the drain thread, and
//! hands back what each is.

use std::{
    fs,
    sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel},
    time::Duration,
};

use crate::host::{
    python_runtime::{Detection, Detector},
    thread_priority::run_in_background,
    worker_queue::send_and_wait,
};

/// Processes waiting to be looked at; past this a notice is dropped, and
/// the process is named again at its next socket.
const QUEUE_DEPTH: usize = 1024;

enum Job {
    Look(u32),
    /// Every process now running: at start, for those older than tcptrace.
    /// Answered once all were looked at.
    LookAtAll(Sender<()>),
    /// The files read so far may go: their processes exited.
    ClearFiles,
}

pub struct PythonWatch {
    jobs: SyncSender<Job>,
    done: Receiver<(u32, Detection)>,
}

impl PythonWatch {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE_DEPTH);
        let (results, done) = channel();
        std::thread::Builder::new()
            .name("python".into())
            .spawn(move || {
                run_in_background();
                let mut detector = Detector::default();
                while let Ok(job) = queue.recv() {
                    let (pids, done) = match job {
                        Job::Look(pid) => (vec![pid], None),
                        Job::LookAtAll(done) => (running_processes(), Some(done)),
                        Job::ClearFiles => {
                            detector.clear_files();
                            continue;
                        }
                    };
                    for pid in pids {
                        if results.send((pid, detector.detect(pid))).is_err() {
                            return;
                        }
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(Self { jobs, done })
    }

    /// Queues a process to look at; false when the thread is too far behind.
    pub fn look(&self, pid: u32) -> bool {
        self.jobs.try_send(Job::Look(pid)).is_ok()
    }

    /// Looks at every process now running, and waits at most `timeout`
    /// for it: at start, so that the frames of Python processes older than
    /// tcptrace are copied from their first socket on.
    pub fn look_at_all(&self, timeout: Duration) -> bool {
        let (done, finished) = channel();
        send_and_wait(&self.jobs, Job::LookAtAll(done), finished, timeout)
    }

    pub fn clear_files(&self) {
        let _ = self.jobs.try_send(Job::ClearFiles);
    }

    /// What the processes looked at since the last call are.
    pub fn found(&self) -> Vec<(u32, Detection)> {
        self.done.try_iter().collect()
    }
}

/// Every process now running; one whose mappings name no Python is told
/// apart by reading them once, as any other.
fn running_processes() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}
