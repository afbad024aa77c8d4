//! One fd that is readable when either of the probe's rings woke its reader:
//! an epoll instance holding both, for the event loop's single `AsyncFd`.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Each `fd` registered level-triggered for input: the instance is readable
/// while any of them has unread records it was woken for.
pub fn either_readable(fds: &[RawFd]) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the returned fd is checked before use.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd this function owns from here on.
    let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
    for &fd in fds {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: both fds are open, and `event` outlives the call.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(epoll)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn readable_when_either_is() {
        let pipes: Vec<[RawFd; 2]> = (0..2)
            .map(|_| {
                let mut ends = [0; 2];
                // SAFETY: two ints for the two ends.
                assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
                ends
            })
            .collect();
        let epoll = either_readable(&[pipes[0][0], pipes[1][0]]).unwrap();
        assert!(!readable(epoll.as_raw_fd()));
        for [read, write] in &pipes {
            // SAFETY: one byte from a live buffer into an open pipe.
            assert_eq!(unsafe { libc::write(*write, b"x".as_ptr().cast(), 1) }, 1);
            assert!(readable(epoll.as_raw_fd()));
            let mut byte = 0u8;
            // SAFETY: one byte into a live buffer.
            assert_eq!(unsafe { libc::read(*read, (&raw mut byte).cast(), 1) }, 1);
            assert!(!readable(epoll.as_raw_fd()));
        }
        for fd in pipes.iter().flatten() {
            // SAFETY: the test's own fds, closed once.
            unsafe { libc::close(*fd) };
        }
    }
}
