//! What the probe reports, decoded: a socket's state transition with its
//! owner, a socket the kernel freed, a stack taken for a socket.

use std::{borrow::Cow, fmt, net::SocketAddr};

use tcptrace_common::{StackKind, TASK_COMM_LEN, TcpState};

/// A process as the kernel named it when it was seen owning a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub tgid: u32,
    pub comm: Comm,
}

/// A task's name as the kernel keeps it: up to 16 bytes the process chose,
/// not necessarily UTF-8. Kept as bytes on the event path (no allocation
/// per event); made text only where it is shown.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm([u8; TASK_COMM_LEN]);

impl Comm {
    /// The kernel's bytes up to the first NUL. What follows is zeroed, so
    /// two equal names compare equal whatever the padding held.
    pub fn from_kernel(raw: &[u8; TASK_COMM_LEN]) -> Self {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        let mut bytes = [0; TASK_COMM_LEN];
        bytes[..end].copy_from_slice(&raw[..end]);
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
        &self.0[..end]
    }

    /// As text, each byte sequence that is not UTF-8 shown as U+FFFD.
    /// Borrowed unless there is one.
    pub fn to_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

/// Names from elsewhere (/proc/PID/comm, tests): cut to the kernel's 16
/// bytes at a character boundary, and at a NUL, as the kernel would.
impl From<&str> for Comm {
    fn from(text: &str) -> Self {
        let text = text.split('\0').next().unwrap_or_default();
        let mut end = text.len().min(TASK_COMM_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; TASK_COMM_LEN];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        Self(bytes)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.to_text())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_text(), f)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.to_text() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.to_text() == *other
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub skaddr: u64,
    /// The owner as the kernel knew it; `None` when no process-context
    /// transition of this socket has been seen.
    pub owner: Option<Process>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub old_state: TcpState,
    pub new_state: TcpState,
    /// Only at transitions from or to LISTEN, and SYN_RECV -> ESTABLISHED
    /// (where an accepted socket may first show itself).
    pub netns_inode: Option<u32>,
    /// Only in leak mode, at transitions to CLOSE, while a file still refers to
    /// the socket: the inode of that file.
    pub socket_inode: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Transition(Transition),
    /// The kernel freed the socket with this cookie, which had moved to
    /// CLOSE while a file held it (the probe sends no other).
    Destroyed {
        cookie: u64,
    },
    Stack(StackSample),
}

/// A user stack copy the probe took for a socket: the copy waits in the
/// probe's map under (cookie, kind) until the agent reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackSample {
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub tgid: u32,
    pub kind: StackKind,
    pub copied: Result<(), StackCopyFailure>,
}

/// Why the probe has no copy of a stack it tried to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackCopyFailure {
    /// Not one page at the user stack pointer could be read.
    Unreadable,
    /// The copy map refused it.
    NotStored,
    Other(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comm_is_the_kernels_bytes_up_to_the_first_nul() {
        let mut raw = [0u8; TASK_COMM_LEN];
        raw[..6].copy_from_slice(b"server");
        raw[7..10].copy_from_slice(b"old");
        let comm = Comm::from_kernel(&raw);
        assert_eq!(comm.as_bytes(), b"server");
        assert_eq!(comm, Comm::from("server"), "padding does not count");
        assert_eq!(comm.to_string(), "server");
        assert_eq!(format!("{comm:<8}|"), "server  |");

        let full = Comm::from_kernel(b"0123456789abcdef");
        assert_eq!(full.as_bytes(), b"0123456789abcdef");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_replaced() {
        let mut raw = [0u8; TASK_COMM_LEN];
        raw[..4].copy_from_slice(&[b'a', 0xff, 0xfe, b'b']);
        let comm = Comm::from_kernel(&raw);
        assert_eq!(comm.to_text(), "a\u{fffd}\u{fffd}b");
        assert_eq!(format!("{comm:?}"), "\"a\u{fffd}\u{fffd}b\"");
    }

    #[test]
    fn text_is_cut_at_sixteen_bytes_on_a_character_boundary() {
        assert_eq!(Comm::from("λλλλλλλλλ").as_bytes().len(), 16);
        assert_eq!(Comm::from("aλλλλλλλλ").to_text(), "aλλλλλλλ");
        assert_eq!(Comm::from("a\0b").as_bytes(), b"a");
    }
}
