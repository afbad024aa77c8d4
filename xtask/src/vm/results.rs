//! What the serial log says: per test binary, the counts, the failing tests and their panic messages.

use std::{path::PathBuf, process::ExitStatus, time::Duration};

use super::{MARK_BINARY, MARK_DONE, MARK_EXIT, MARK_KERNEL, MARK_START, TESTS};

#[derive(Default)]
struct BinaryResult {
    name: String,
    exit: Option<i32>,
    passed: u32,
    failed: u32,
    summary_seen: bool,
    failures: Vec<Failure>,
}

#[derive(Default)]
struct Failure {
    test: String,
    /// `file:line:col` of the panic.
    location: Option<String>,
    /// The panic message, without the backtrace.
    message: Vec<String>,
}

impl Failure {
    /// The message's first line and its `left:`/`right:` lines (assertions
    /// often print a whole report between the two), cut short.
    fn brief(&self) -> String {
        let cut = |line: &str| line.trim().chars().take(300).collect::<String>();
        let mut parts: Vec<String> = self.location.iter().map(|at| format!("at {at}")).collect();
        parts.extend(self.message.first().map(|line| cut(line)));
        let rest = self.message.iter().skip(1);
        let sides: Vec<String> = rest
            .clone()
            .filter(|line| {
                let line = line.trim_start();
                line.starts_with("left:") || line.starts_with("right:")
            })
            .map(|line| cut(line))
            .collect();
        if sides.is_empty() {
            parts.extend(rest.take(2).map(|line| cut(line)));
        } else {
            parts.extend(sides);
        }
        parts.join(" | ")
    }
}

#[derive(Default)]
pub(super) struct Outcome {
    pub(super) release: String,
    pub(super) log: PathBuf,
    pub(super) elapsed: Duration,
    pub(super) timeout: Duration,
    /// None when it was killed at the timeout.
    pub(super) qemu: Option<ExitStatus>,
    /// What the guest's tcptrace said of itself (`--version`, lines
    /// joined by " | "), and what the dist binary says: they must match.
    pub(super) binary: Option<String>,
    pub(super) expected_binary: String,
    booted: bool,
    done: bool,
    finished: Vec<BinaryResult>,
    /// Started but never reported its exit.
    running: Option<BinaryResult>,
}

impl Outcome {
    /// Reads what /init and libtest printed on the serial console.
    pub(super) fn parse(log: &str) -> Self {
        let mut outcome = Self::default();
        // The test whose `---- name stdout ----` block is being read, and
        // whether its panic message has started / ended.
        let mut block: Option<(String, bool, bool)> = None;
        for line in log.lines().map(|line| line.trim_end_matches('\r')) {
            if after(line, MARK_KERNEL).is_some() {
                outcome.booted = true;
            } else if let Some(version) = after(line, MARK_BINARY) {
                outcome.binary = Some(version.trim().to_owned());
            } else if let Some(name) = after(line, MARK_START) {
                outcome.running = Some(BinaryResult {
                    name: name.trim().to_owned(),
                    ..BinaryResult::default()
                });
                block = None;
            } else if let Some(rest) = after(line, MARK_EXIT) {
                if let Some(mut binary) = outcome.running.take() {
                    binary.exit = rest
                        .rsplit_once("exit=")
                        .and_then(|(_, code)| code.trim().parse().ok());
                    outcome.finished.push(binary);
                }
                block = None;
            } else if line.contains(MARK_DONE) {
                outcome.done = true;
            } else if let Some(binary) = outcome.running.as_mut() {
                parse_test_line(binary, line, &mut block);
            }
        }
        outcome
    }

    /// The kernel matrix proves the binary operators install, or nothing.
    fn ran_the_dist_binary(&self) -> bool {
        self.binary.as_deref() == Some(self.expected_binary.as_str())
    }

    pub(super) fn passed(&self) -> bool {
        self.ran_the_dist_binary()
            && self.done
            && self.qemu.is_some()
            && self.running.is_none()
            && self.finished.len() == TESTS.len()
            && self.finished.iter().all(|binary| binary.exit == Some(0))
    }

    /// One line for the kernel, then one per failing test.
    pub(super) fn summary(&self) -> Vec<String> {
        let counts: Vec<String> = self
            .finished
            .iter()
            .chain(&self.running)
            .map(|binary| {
                if binary.summary_seen {
                    format!(
                        "{} {}/{}",
                        binary.name,
                        binary.passed,
                        binary.passed + binary.failed
                    )
                } else if let Some(code) = binary.exit {
                    format!("{} exit {code} without a test summary", binary.name)
                } else {
                    format!("{} unfinished", binary.name)
                }
            })
            .collect();
        let verdict = if self.passed() {
            "passed".to_owned()
        } else if self.qemu.is_none() {
            match &self.running {
                Some(binary) => format!(
                    "TIMED OUT after {} s while running {}",
                    self.timeout.as_secs(),
                    binary.name
                ),
                None => format!("TIMED OUT after {} s", self.timeout.as_secs()),
            }
        } else if !self.booted {
            "FAILED: the guest never reached /init's first line".to_owned()
        } else if !self.done {
            "FAILED: the guest stopped before the end of the tests".to_owned()
        } else if !self.ran_the_dist_binary() {
            format!(
                "FAILED: the guest ran tcptrace {:?}, not the dist binary {:?}",
                self.binary.as_deref().unwrap_or("(it said no version)"),
                self.expected_binary
            )
        } else {
            "FAILED".to_owned()
        };
        let mut lines = vec![format!(
            "linux {}: {verdict} ({}) in {} s, with {}",
            self.release,
            counts.join(", "),
            self.elapsed.as_secs(),
            self.binary.as_deref().unwrap_or("no tcptrace version said")
        )];
        for binary in self.finished.iter().chain(&self.running) {
            for failure in &binary.failures {
                lines.push(format!(
                    "    {}::{}: {}",
                    binary.name,
                    failure.test,
                    failure.brief()
                ));
            }
        }
        if !self.passed() {
            lines.push(format!("    serial log: {}", self.log.display()));
        }
        lines
    }
}

/// Takes from libtest's output: the summary counts, the failing tests, and
/// the panic message in each failure's captured output.
fn parse_test_line(
    binary: &mut BinaryResult,
    line: &str,
    block: &mut Option<(String, bool, bool)>,
) {
    if let Some(counts) = line.strip_prefix("test result: ") {
        binary.summary_seen = true;
        for part in counts.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(word), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u32>() else {
                continue;
            };
            match word {
                "passed" => binary.passed = number,
                "failed" => binary.failed = number,
                _ => {}
            }
        }
        *block = None;
        return;
    }
    if let Some(test) = line
        .strip_prefix("test ")
        .and_then(|rest| rest.strip_suffix(" ... FAILED"))
    {
        if !binary.failures.iter().any(|failure| failure.test == test) {
            binary.failures.push(Failure {
                test: test.to_owned(),
                ..Failure::default()
            });
        }
        return;
    }
    if let Some(test) = line
        .strip_prefix("---- ")
        .and_then(|rest| rest.strip_suffix(" stdout ----"))
    {
        *block = Some((test.to_owned(), false, false));
        return;
    }
    let Some((test, started, ended)) = block.as_mut() else {
        return;
    };
    if *ended {
        return;
    }
    if !*started {
        // `thread 'name' (tid) panicked at file:line:col:` then the message.
        if line.contains("panicked at") {
            *started = true;
            let location = line.split("panicked at").nth(1).unwrap_or_default();
            failure_mut(binary, test).location =
                Some(location.trim().trim_end_matches(':').to_owned());
        }
        return;
    }
    if line.is_empty()
        || line.starts_with("stack backtrace:")
        || line.starts_with("note: ")
        || line == "failures:"
    {
        *ended = true;
        return;
    }
    // Bounded: a message can be a whole pretty-printed report.
    let message = &mut failure_mut(binary, test).message;
    if message.len() < 400 {
        message.push(line.to_owned());
    }
}

fn failure_mut<'a>(binary: &'a mut BinaryResult, test: &str) -> &'a mut Failure {
    let index = match binary
        .failures
        .iter()
        .position(|failure| failure.test == test)
    {
        Some(index) => index,
        None => {
            binary.failures.push(Failure {
                test: test.to_owned(),
                ..Failure::default()
            });
            binary.failures.len() - 1
        }
    };
    &mut binary.failures[index]
}

/// What follows `mark` in a serial line. Not only at the start: the
/// firmware's and the console's escape sequences can come first.
pub(super) fn after<'a>(line: &'a str, mark: &str) -> Option<&'a str> {
    line.find(mark).map(|at| &line[at + mark.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_log_gives_counts_failures_and_messages() {
        let log = "\
\x1bc\x1b[2JTCPTRACE-VM-KERNEL 6.1.0-56-amd64\r
TCPTRACE-VM-START leaks\r
test a ... ok\r
test b ... FAILED\r
failures:\r
\r
---- b stdout ----\r
some output\r
thread 'b' (77) panicked at tcptrace/tests/leaks.rs:10:5:\r
assertion `left == right` failed: {\r
  \"health\": 3\r
}\r
  left: 1\r
 right: 2\r
stack backtrace:\r
   0: foo\r
\r
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r
TCPTRACE-VM: leaks exit=101\r
TCPTRACE-VM-START watch\r
test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r
TCPTRACE-VM: watch exit=0\r
TCPTRACE-VM-START kernel_table\r
";
        let outcome = Outcome::parse(log);
        assert!(outcome.booted && !outcome.done);
        assert_eq!(outcome.finished.len(), 2);
        let leaks = &outcome.finished[0];
        assert_eq!((leaks.exit, leaks.passed, leaks.failed), (Some(101), 1, 1));
        assert_eq!(leaks.failures.len(), 1);
        assert_eq!(
            leaks.failures[0].brief(),
            "at tcptrace/tests/leaks.rs:10:5 | assertion `left == right` failed: { | left: 1 | right: 2"
        );
        assert_eq!(outcome.finished[1].passed, 9);
        assert_eq!(outcome.running.as_ref().unwrap().name, "kernel_table");
        assert!(!outcome.passed());
    }

    /// Every test passing proves nothing of the dist binary unless the
    /// guest ran it: a guest that names another build fails.
    #[test]
    fn a_guest_that_ran_another_binary_fails() {
        let mut log = String::from(
            "TCPTRACE-VM-KERNEL 6.12.1\nTCPTRACE-VM-BINARY tcptrace 0.1.0 | commit aaa\n",
        );
        for test in TESTS {
            log.push_str(&format!(
                "TCPTRACE-VM-START {test}\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\nTCPTRACE-VM: {test} exit=0\n"
            ));
        }
        log.push_str("TCPTRACE-VM-DONE\n");
        let mut outcome = Outcome::parse(&log);
        outcome.qemu = Some(std::process::ExitStatus::default());
        outcome.expected_binary = "tcptrace 0.1.0 | commit aaa".to_owned();
        assert!(outcome.passed());
        outcome.expected_binary = "tcptrace 0.1.0 | commit bbb".to_owned();
        assert!(!outcome.passed());
        assert!(
            outcome.summary()[0].contains("not the dist binary"),
            "{:?}",
            outcome.summary()
        );
    }
}
