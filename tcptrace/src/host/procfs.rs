//! Which processes hold a socket right now: the same scan of `/proc/*/fd`
//! that `ss -p` and `lsof` do. Exact under fork, dup and fd passing, unlike
//! any "who created it" guess.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use crate::model::holder::{Holder, ProcScan};

/// Whether an error reading `/proc/<pid>/...` only means the process exited
/// (or is a zombie) meanwhile, as opposed to a failure of the reader.
pub fn process_went_away(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(error.kind(), NotFound | PermissionDenied) || error.raw_os_error() == Some(libc::ESRCH)
}

/// Walks every process's fds once: the processes alive and the holders of
/// each socket inode in `inodes`. Processes that exit during the walk are
/// skipped (a walk is a snapshot), but a failure of the reader itself (out
/// of fds, say) is an error: a partial walk would say sockets nobody holds.
pub fn scan_processes(inodes: &HashSet<u64>) -> std::io::Result<ProcScan> {
    let mut scan = ProcScan::default();
    for process in fs::read_dir("/proc")? {
        let process = process?;
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        scan.pids.insert(pid);
        if inodes.is_empty() {
            continue;
        }
        let fds = match fs::read_dir(process.path().join("fd")) {
            Ok(fds) => fds,
            Err(error) if process_went_away(&error) => continue,
            Err(error) => return Err(error),
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target))
                .filter(|inode| inodes.contains(inode))
            else {
                continue;
            };
            let Some(fd_number) = fd.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| process_comm(pid));
            scan.holders.entry(inode).or_default().push(Holder {
                pid,
                comm: comm.clone(),
                fd: fd_number,
            });
        }
    }
    for list in scan.holders.values_mut() {
        list.sort();
    }
    Ok(scan)
}

/// The holders of each socket inode in `inodes`, or the error that stopped the walk.
pub fn socket_holders(inodes: &HashSet<u64>) -> std::io::Result<HashMap<u64, Vec<Holder>>> {
    if inodes.is_empty() {
        return Ok(HashMap::new());
    }
    scan_processes(inodes).map(|scan| scan.holders)
}

/// `socket:[12345]` -> 12345
pub fn socket_inode(link_target: &Path) -> Option<u64> {
    link_target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

pub fn process_comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Open fds of a process and its soft RLIMIT_NOFILE, when readable.
pub fn fd_usage(pid: u32) -> Option<(u64, Option<u64>)> {
    let open = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok();
    let soft_limit = limits.as_deref().and_then(parse_open_files_limit);
    Some((open, soft_limit))
}

/// The soft limit on the "Max open files" line of `/proc/<pid>/limits`.
fn parse_open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::unix::fs::MetadataExt, path::PathBuf};

    use super::*;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode(&PathBuf::from("socket:[4026]")), Some(4026));
        assert_eq!(socket_inode(&PathBuf::from("pipe:[4026]")), None);
        assert_eq!(socket_inode(&PathBuf::from("socket:[x]")), None);
        assert_eq!(socket_inode(&PathBuf::from("/dev/null")), None);
    }

    #[test]
    fn parses_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        assert_eq!(
            parse_open_files_limit("Max open files  unlimited unlimited files"),
            None
        );
    }

    /// Needs no root: a process may read its own fds.
    #[test]
    fn finds_this_process_holding_its_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let found = socket_holders(&HashSet::from([inode])).unwrap();
        let mine: Vec<_> = found[&inode]
            .iter()
            .filter(|h| h.pid == std::process::id())
            .collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert_eq!(mine[0].fd, fd as u32);
        assert!(!mine[0].comm.is_empty());
        let (open, limit) = fd_usage(std::process::id()).unwrap();
        assert!(open >= 1);
        assert!(limit.is_some());
    }
}
