//! How a soak is scaled from `--minutes`: its phases, their shares of the
//! run, the sampling interval, the leaker's step, the process and burst counts.

use std::time::Duration;

const MIN_COOL_DOWN: Duration = Duration::from_secs(70);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    WarmUp,
    ConnectionChurn,
    ProcessChurn,
    Bursts,
    Restart,
    IdleClients,
    CoolDown,
}

/// Each phase's share of the run, in order.
pub const PHASES: [(PhaseKind, &str, f64); 7] = [
    (PhaseKind::WarmUp, "warm-up", 0.10),
    (PhaseKind::ConnectionChurn, "connection churn", 0.15),
    (PhaseKind::ProcessChurn, "process churn", 0.15),
    (PhaseKind::Bursts, "ring bursts", 0.10),
    (PhaseKind::Restart, "kill -9 + restart", 0.15),
    (PhaseKind::IdleClients, "idle + slowloris", 0.15),
    (PhaseKind::CoolDown, "cool-down", 0.20),
];

/// How the run is scaled from `--minutes`.
#[derive(Clone, Debug)]
pub struct Plan {
    pub minutes: u32,
    pub total: Duration,
    pub sample_every: Duration,
    pub leak_step: Duration,
    pub processes: u32,
    pub bursts: u32,
}

impl Plan {
    pub fn new(minutes: u32) -> Self {
        let total = Duration::from_secs(u64::from(minutes) * 60);
        let seconds = total.as_secs_f64();
        Self {
            minutes,
            total,
            // Every 20 s on a 30-minute run; at least ~20 samples on a short one.
            sample_every: Duration::from_secs_f64((seconds / 90.0).clamp(5.0, 20.0)),
            // Every minute on a 30-minute run.
            leak_step: Duration::from_secs_f64((seconds / 30.0).clamp(8.0, 60.0)),
            processes: (50 * minutes).max(300),
            bursts: (minutes / 5).max(2),
        }
    }

    pub fn phase_length(&self, index: usize) -> Duration {
        let share = self.total.mul_f64(PHASES[index].2);
        if PHASES[index].0 == PhaseKind::CoolDown {
            // Past TIME_WAIT (60 s): what the churn left in the kernel's table
            // is gone, so what is left in the tables is serve's own.
            share.max(MIN_COOL_DOWN)
        } else {
            share
        }
    }
}
