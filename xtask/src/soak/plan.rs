//! How a soak is scaled from `--minutes`: its phases, their shares of the
//! run, the sampling interval, the leaker's step, the process and burst counts.

use std::time::Duration;

const MIN_COOL_DOWN: Duration = Duration::from_secs(70);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    WarmUp,
    /// The sustained load alone.
    Steady,
    /// The same with CPU hogs beside serve on every core: the busy node.
    Starved,
    Bursts,
    Restart,
    IdleClients,
    CoolDown,
}

/// Each phase's share of the run, in order.
pub const PHASES: [(PhaseKind, &str, f64); 7] = [
    (PhaseKind::WarmUp, "warm-up", 0.10),
    (PhaseKind::Steady, "steady load", 0.25),
    (PhaseKind::Starved, "steady load, serve starved", 0.25),
    (PhaseKind::Bursts, "ring bursts", 0.08),
    (PhaseKind::Restart, "kill -9 + restart", 0.10),
    (PhaseKind::IdleClients, "idle + slowloris", 0.10),
    (PhaseKind::CoolDown, "cool-down", 0.12),
];

/// The phase of `kind`.
pub fn phase_index(kind: PhaseKind) -> usize {
    PHASES
        .iter()
        .position(|(k, ..)| *k == kind)
        .expect("every kind is a phase")
}

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

    /// From the start until the cool-down: how long the sustained load runs.
    pub fn loaded(&self) -> Duration {
        (0..PHASES.len())
            .filter(|i| PHASES[*i].0 != PhaseKind::CoolDown)
            .map(|i| self.phase_length(i))
            .sum()
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
