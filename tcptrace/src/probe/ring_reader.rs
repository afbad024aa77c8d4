//! The consumer side of the probe's BPF ring buffer, read in batches.
//!
//! aya's reader publishes the consumer position after every record. The
//! producer reads that position at every reserve, on another CPU, so each
//! record moved its cache line twice. Here the position is published once
//! per batch (and every `PUBLISH_EVERY` records of a long one, so the
//! producer regains space while a backlog drains).

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;
use thiserror::Error;

/// The kernel's record header (`BPF_RINGBUF_HDR_SZ`): the length word with
/// these two flags, then the page offset.
const HEADER: usize = 8;
const BUSY: u32 = 1 << 31;
const DISCARDED: u32 = 1 << 30;
const PUBLISH_EVERY: u32 = 1024;

#[derive(Debug, Error)]
pub enum RingError {
    #[error("the ring buffer's size {0} is not a power of two pages")]
    Size(u32),
    #[error("cannot map the ring buffer's {part}: {source}")]
    Map {
        part: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One mapping of the kernel's pages, unmapped on drop.
struct Mapping {
    start: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: RawFd,
        len: usize,
        protection: i32,
        offset: usize,
        part: &'static str,
    ) -> Result<Self, RingError> {
        let offset = libc::off_t::try_from(offset).map_err(|_| RingError::Map {
            part,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the length and offset against the ring buffer's layout.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(RingError::Map {
                part,
                source: std::io::Error::last_os_error(),
            });
        }
        let start = NonNull::new(start.cast::<u8>()).ok_or(RingError::Map {
            part,
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        Ok(Self { start, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region mmap returned; nothing borrows it past
        // the reader's own borrows, which end before the reader drops.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

pub struct RingReader {
    // Declared first: the mappings go before the map's fd.
    consumer: Mapping,
    producer: Mapping,
    mask: usize,
    page: usize,
    map: MapData,
}

// SAFETY: the mappings are owned by the reader; records are read and the
// consumer position written only through `&mut self`, and a shared
// reference reads nothing but the fd and (atomically) the positions.
unsafe impl Send for RingReader {}
// SAFETY: as above.
unsafe impl Sync for RingReader {}

impl RingReader {
    /// Maps the ring buffer `map` of `bytes` (the size it was created with).
    pub fn new(map: MapData, bytes: u32) -> Result<Self, RingError> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let size = bytes as usize;
        if !bytes.is_power_of_two() || size < page {
            return Err(RingError::Size(bytes));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        // The data pages are mapped twice in a row, so a record that wraps
        // around the end reads as one slice.
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page, "data pages")?;
        Ok(Self {
            consumer,
            producer,
            mask: size - 1,
            page,
            map,
        })
    }

    fn consumer_position(&self) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page is the kernel's
        // `consumer_pos`, aligned and alive as long as the mapping.
        unsafe { self.consumer.start.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_position(&self) -> &AtomicUsize {
        // SAFETY: as for the consumer; the producer page's first word.
        unsafe { self.producer.start.cast::<AtomicUsize>().as_ref() }
    }

    /// Where the producer is now: every record reserved before this point
    /// is handed over once the reader has consumed up to it.
    pub fn produced(&self) -> usize {
        self.producer_position().load(Ordering::Acquire)
    }

    /// Where the reader is: every record before it has been handed over.
    pub fn consumed(&self) -> usize {
        self.consumer_position().load(Ordering::Acquire)
    }

    /// Hands every committed record to `each`, oldest first; returns how
    /// many. Stops at the first record still being written.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> u64 {
        let mut position = self.consumer_position().load(Ordering::Relaxed);
        let mut produced = self.producer_position().load(Ordering::Acquire);
        let mut drained = 0u64;
        let mut unpublished = 0u32;
        // SAFETY: the data pages start one page into the producer mapping.
        let data = unsafe { self.producer.start.as_ptr().add(self.page) };
        while position < produced {
            let offset = position & self.mask;
            // SAFETY: offset < size, and the header is 8-byte aligned inside
            // the first copy of the data pages.
            let word = unsafe { &*data.add(offset).cast::<AtomicU32>() };
            // Acquire: pairs with the kernel's release of the length at
            // commit, so the record's bytes are seen whole.
            let length_word = word.load(Ordering::Acquire);
            if length_word & BUSY != 0 {
                break;
            }
            let length = (length_word & !(BUSY | DISCARDED)) as usize;
            if length_word & DISCARDED == 0 {
                // SAFETY: a committed record of `length` bytes after its
                // header; it may run into the second copy of the data pages,
                // which the mapping covers (a record is at most the size).
                let record =
                    unsafe { std::slice::from_raw_parts(data.add(offset + HEADER), length) };
                each(record);
                drained += 1;
            }
            position += (length + HEADER + 7) & !7;
            unpublished += 1;
            if unpublished >= PUBLISH_EVERY {
                self.consumer_position().store(position, Ordering::Release);
                unpublished = 0;
            }
            if position >= produced {
                produced = self.producer_position().load(Ordering::Acquire);
            }
        }
        if unpublished > 0 {
            // Release: the kernel may reuse the space only after it was read.
            self.consumer_position().store(position, Ordering::Release);
        }
        drained
    }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
