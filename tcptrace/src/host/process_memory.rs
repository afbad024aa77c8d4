//! Reads another process's memory, as debuggers and py-spy do:
//! `process_vm_readv`, one syscall per read, no file to open per process.

use std::io;

/// One process's memory.
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pid: u32,
}

impl ProcessMemory {
    pub fn of(pid: u32) -> Self {
        Self { pid }
    }

    /// Fills `buffer` from `address`; an error when any byte could not be
    /// read (unmapped, or the process is gone).
    pub fn read(&self, address: u64, buffer: &mut [u8]) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let remote = libc::iovec {
            iov_base: address as usize as *mut libc::c_void,
            iov_len: buffer.len(),
        };
        // SAFETY: `local` describes `buffer`, which is valid for writes of
        // its length; the remote side is checked by the kernel.
        let read =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        match read {
            -1 => Err(io::Error::last_os_error()),
            n if n as usize == buffer.len() => Ok(()),
            n => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {n} of {} bytes at {address:#x}", buffer.len()),
            )),
        }
    }

    pub fn u64(&self, address: u64) -> io::Result<u64> {
        let mut bytes = [0; 8];
        self.read(address, &mut bytes)?;
        Ok(u64::from_ne_bytes(bytes))
    }

    pub fn u32(&self, address: u64) -> io::Result<u32> {
        let mut bytes = [0; 4];
        self.read(address, &mut bytes)?;
        Ok(u32::from_ne_bytes(bytes))
    }

    pub fn bytes(&self, address: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.read(address, &mut bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_refuses_unmapped_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let memory = ProcessMemory::of(std::process::id());
        assert_eq!(memory.u64(&raw const value as u64).unwrap(), value);
        assert!(memory.u64(8).is_err());
    }
}
