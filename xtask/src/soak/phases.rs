//! The load of each soak phase, on top of the sustained load: CPU hogs
//! that starve serve, ring bursts, the `kill -9` and restart, idle and
//! slowloris HTTP clients; and, as the cool-down begins, the end of the
//! sustained load.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    SERVE_INTERVAL, Soak,
    outcomes::PhaseSpan,
    plan::{PHASES, PhaseKind},
    sample::SCRAPE_TIMEOUT,
};
use crate::{
    harness::{Proc, http_get},
    step,
};

/// A burst: this many processes, each opening and then closing this many
/// connections at once: about 200,000 transitions of 104 bytes in well under
/// a second, several times what the default 4 MiB ring holds. (Four such
/// processes did not overflow it here; eight did.)
const BURST_PROCESSES: usize = 8;
const BURST_CONNECTIONS: u32 = 4000;
pub(super) const IDLE_CONNECTIONS: u32 = 2000;
pub(super) const SLOWLORIS_BYTE_EVERY_MS: u64 = 3000;
/// CPU hogs while serve is starved: one per core, each a process spinning
/// on a cheap syscall.
pub(super) fn hogs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Soak {
    pub(super) fn run_phase(&mut self, index: usize) -> Result<()> {
        let (kind, name, _) = PHASES[index];
        let length = self.plan.phase_length(index);
        let phase_started = Instant::now();
        let deadline = phase_started + length;
        let seconds = length.as_secs_f64();
        self.shared.set_phase(index);
        step(&format!(
            "soak: {name} for {seconds:.0} s (at {:.0} s)",
            self.now()
        ));
        let span_start = self.now();
        // Loads that end by themselves before the phase does.
        let mut loads: Vec<Proc> = Vec::new();
        match kind {
            PhaseKind::WarmUp | PhaseKind::Steady => {}
            PhaseKind::Starved => {
                for _ in 0..hogs() {
                    loads.push(Proc::spawn(
                        &self.bin.peer,
                        &[
                            "syscall-loop",
                            "--seconds",
                            &format!("{:.1}", (seconds - 1.0).max(1.0)),
                        ],
                    )?);
                }
            }
            PhaseKind::Restart => self.restart()?,
            PhaseKind::Bursts => self.bursts(deadline)?,
            PhaseKind::IdleClients => self.idle_clients(deadline)?,
            PhaseKind::CoolDown => self.end_background()?,
        }
        self.wait_until(deadline, kind == PhaseKind::CoolDown)?;
        for load in &loads {
            load.expect_within("done", Duration::from_secs(30))?;
        }
        drop(loads);
        let check = self.check_leaks(name);
        self.outcomes.checks.push(check);
        self.outcomes.spans.push(PhaseSpan {
            start: span_start,
            end: self.now(),
        });
        Ok(())
    }

    /// The sustained load ends as the cool-down begins: what the churn
    /// clients said.
    fn end_background(&mut self) -> Result<()> {
        let background = std::mem::take(&mut self.background);
        for load in &background {
            let done = load.expect_within("done", Duration::from_secs(60))?;
            if let Some(processes) = done.get("processes") {
                self.outcomes.process_churn_report = Some(format!(
                    "{processes} processes forked, {} failed, in {} s",
                    done["failed"], done["seconds"]
                ));
            } else {
                self.outcomes.churn_report = Some(format!(
                    "{} connections ({} failed) in {} s, {} a second",
                    done["connections"], done["failed"], done["seconds"], done["per_second"]
                ));
            }
        }
        Ok(())
    }

    /// `kill -9` of serve, a new one, and at once the leak check.
    fn restart(&mut self) -> Result<()> {
        self.drain_serve_log();
        self.shared.set_serve(None, self.instance);
        // Dropping kills with SIGKILL and reaps.
        self.serve = None;
        self.outcomes.restart_at = Some(self.now());
        self.instance += 1;
        step("soak: serve killed with SIGKILL; starting it again");
        self.start_serve()?;
        let check = self.check_leaks("the restart");
        self.outcomes.checks.push(check);
        Ok(())
    }

    fn bursts(&mut self, deadline: Instant) -> Result<()> {
        self.outcomes.burst_drops.0 = self.drops_now();
        // Leave the end of the phase for serve to catch up and count.
        let room = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(SERVE_INTERVAL + Duration::from_secs(1));
        let spacing = room / self.plan.bursts;
        for burst in 0..self.plan.bursts {
            let next = Instant::now() + spacing;
            let mut peers = (0..BURST_PROCESSES)
                .map(|_| {
                    Proc::spawn(
                        &self.bin.peer,
                        &[
                            "ring-burst",
                            "--addr",
                            "127.0.0.1:0",
                            "--connections",
                            &BURST_CONNECTIONS.to_string(),
                        ],
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            for peer in &peers {
                peer.expect_within("open", Duration::from_secs(60))?;
            }
            for peer in &mut peers {
                peer.tell("go")?;
            }
            let mut slowest = 0.0f64;
            for peer in &peers {
                slowest = slowest.max(peer.expect("done")?["seconds"].parse()?);
            }
            self.outcomes.burst_reports.push(format!(
                "burst {}: {} connections opened, then closed at once in {:.0} ms",
                burst + 1,
                BURST_PROCESSES as u32 * BURST_CONNECTIONS,
                slowest * 1e3
            ));
            drop(peers);
            self.wait_until(next, false)?;
        }
        self.wait_until(deadline, false)?;
        self.outcomes.burst_drops.1 = self.drops_now();
        Ok(())
    }

    fn idle_clients(&mut self, deadline: Instant) -> Result<()> {
        let address = self.address()?;
        // Over before the phase ends, so its closing shows in the samples.
        let seconds = (deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            - 2.0)
            .max(2.0);
        let clients = Proc::spawn(
            &self.bin.peer,
            &[
                "idle-http",
                "--connect",
                &address,
                "--connections",
                &IDLE_CONNECTIONS.to_string(),
                "--seconds",
                &format!("{seconds:.1}"),
                "--byte-every-ms",
                &SLOWLORIS_BYTE_EVERY_MS.to_string(),
            ],
        )?;
        let opened = clients.expect_within("opened", Duration::from_secs(60))?;
        step(&format!(
            "soak: {} idle and slowloris connections open ({} failed)",
            opened["connected"], opened["failed"]
        ));
        let window_start = Instant::now();
        let window = (window_start + Duration::from_secs_f64(seconds - 1.0))
            .saturating_duration_since(window_start);
        // Three GETs spread over the time the connections are open.
        for i in 0..3u32 {
            self.wait_until(window_start + window * i / 3, false)?;
            let timer = Instant::now();
            let answer = http_get(&address, "/metrics", SCRAPE_TIMEOUT)
                .map(|_| timer.elapsed().as_secs_f64() * 1e3)
                .map_err(|e| format!("{e:#}"));
            self.outcomes.metrics_under_idle.push((self.now(), answer));
        }
        self.wait_until(deadline, false)?;
        let done = clients.expect_within("done", Duration::from_secs(30))?;
        self.outcomes.idle_report = Some(format!(
            "{} connected ({} failed to connect); closed by serve within {:.0} s: {} of the idle (the last {} s after all were open), {} of the slowloris (the last after {} s); {} still open",
            done["connected"],
            opened["failed"],
            seconds,
            done["idle_closed"],
            done["idle_last_closed_s"],
            done["slow_closed"],
            done["slow_last_closed_s"],
            done["open"]
        ));
        Ok(())
    }
}
