//! A record file, written around the kernel's page cache where the file
//! system allows it (`O_DIRECT` on Linux): lines are gathered in an
//! aligned window of `WINDOW` bytes and written a whole window at a time,
//! and a flush writes the last partial block padded to a whole one with
//! newlines, then cuts the file back to its true length.
//!
//! Why not a `BufWriter` over an appended file (used until session 13):
//! writing through the page cache cost the writer thread about 3 µs of
//! kernel time per 4.5 KiB recorded POST (`bench/record_threads.py`: page
//! allocation, the copy, ext4's delayed allocation, then freeing the pages
//! again when a rotated file is deleted), and the page cache filled with
//! record pages nobody reads. `dd` on this machine's disk, 1 GB in 1 MiB
//! writes: 1.8 ns of CPU a byte buffered against 0.1 ns direct, both
//! counted machine-wide (`/proc/stat`); 64 KiB direct writes cost 0.7 ns
//! a byte, hence the 1 MiB window.
//!
//! A file system that refuses `O_DIRECT` (at open, or `EINVAL` at the first
//! write or read) is written through the page cache instead, with the same
//! window, in plain unaligned writes. Lines are never written elsewhere
//! than at the window's offset, so the file is not opened for appending:
//! another process appending to the same file, or an outside tool
//! truncating it (`logrotate`'s `copytruncate`), is not supported; the
//! writer rotates files itself (`max_file_bytes`, `max_files`).
//!
//! A crash between a flush's padded write and the cut leaves up to 4095
//! newlines at the file's end: blank lines, which readers skip
//! (`read::Reader`, and JSON lines readers in general).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Direct I/O's unit: offsets, lengths and the buffer's address are whole
/// multiples of it (4 KiB covers devices of 512-byte and 4 KiB logical
/// blocks).
const BLOCK: usize = 4096;

/// Bytes gathered before one write: a multiple of `BLOCK`.
const WINDOW: usize = 1 << 20;

/// What pads a flush's last block: blank lines to a reader.
const PAD: u8 = b'\n';

/// An open record file and its unwritten tail.
pub(super) struct RecordFile {
    file: File,
    /// `WINDOW + BLOCK` bytes; the window is the `BLOCK`-aligned `WINDOW`
    /// bytes within, from `start`.
    mem: Box<[u8]>,
    start: usize,
    /// Bytes in the window. Those before the last flush's whole blocks are
    /// in the file already (the window starts at the last partial block).
    len: usize,
    /// Where the window's first byte goes in the file: a multiple of
    /// `BLOCK`.
    at: u64,
    /// Written with `O_DIRECT`.
    direct: bool,
}

impl RecordFile {
    /// Opens (or creates) `path` to add to its end, around the page cache
    /// when `direct` is asked for and the file system allows it: the file
    /// and its length.
    pub(super) fn open(path: &Path, direct: bool) -> io::Result<(RecordFile, u64)> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        let (file, direct) = match direct.then(|| open_direct(&options, path)) {
            Some(Ok(file)) => (file, true),
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidInput => {
                tracing::info!(file = %path.display(), "direct I/O refused here; the record file is written through the page cache");
                (options.open(path)?, false)
            }
            Some(Err(e)) => return Err(e),
            None => (options.open(path)?, false),
        };
        let size = file.metadata()?.len();
        let mem = vec![0u8; WINDOW + BLOCK].into_boxed_slice();
        let start = mem.as_ptr().align_offset(BLOCK);
        let tail = (size % BLOCK as u64) as usize;
        let mut out = RecordFile {
            file,
            mem,
            start,
            len: tail,
            at: size - tail as u64,
            direct,
        };
        if tail > 0 {
            out.read_tail(tail)?;
        }
        Ok((out, size))
    }

    /// Written around the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + WINDOW]
    }

    /// The file's last partial block (`tail` bytes at `at`) into the
    /// window, so that the next write rewrites it whole.
    fn read_tail(&mut self, tail: usize) -> io::Result<()> {
        let (at, start) = (self.at, self.start);
        let mut n = read_once(&self.file, &mut self.mem[start..start + BLOCK], at);
        if self.direct && matches!(&n, Err(e) if e.kind() == io::ErrorKind::InvalidInput) {
            self.through_page_cache()?;
            n = read_once(&self.file, &mut self.mem[start..start + BLOCK], at);
        }
        if n? != tail {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the record file changed while it was opened",
            ));
        }
        Ok(())
    }

    /// Writes the window's first `end` bytes at `at`; a refusal of direct
    /// I/O (`EINVAL`, e.g. a block size above 4 KiB) turns it off for
    /// this file, and the bytes are written through the page cache.
    fn put(&mut self, end: usize) -> io::Result<()> {
        let at = self.at;
        let start = self.start;
        let res = self.file.write_all_at(&self.mem[start..start + end], at);
        match res {
            Err(e) if self.direct && e.kind() == io::ErrorKind::InvalidInput => {
                self.through_page_cache()?;
                self.file.write_all_at(&self.mem[start..start + end], at)
            }
            res => res,
        }
    }

    fn through_page_cache(&mut self) -> io::Result<()> {
        tracing::info!("direct I/O refused; a record file is written through the page cache");
        clear_direct(&self.file)?;
        self.direct = false;
        Ok(())
    }
}

impl Write for RecordFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(WINDOW - self.len);
        let len = self.len;
        self.window()[len..len + n].copy_from_slice(&data[..n]);
        self.len += n;
        if self.len == WINDOW {
            self.put(WINDOW)?;
            self.at += WINDOW as u64;
            self.len = 0;
        }
        Ok(n)
    }

    /// Everything gathered reaches the file: direct, in whole blocks (the
    /// last padded, then the file cut back to its length); the window then
    /// keeps only the last partial block.
    fn flush(&mut self) -> io::Result<()> {
        let len = self.len;
        if len == 0 {
            return Ok(());
        }
        if !self.direct {
            self.put(len)?;
        } else {
            let padded = len.next_multiple_of(BLOCK);
            self.window()[len..padded].fill(PAD);
            self.put(padded)?;
            if padded != len {
                self.file.set_len(self.at + len as u64)?;
            }
        }
        let whole = len - len % BLOCK;
        self.window().copy_within(whole..len, 0);
        self.at += whole as u64;
        self.len -= whole;
        Ok(())
    }
}

/// One read at `at` (a block at the file's end comes whole in one; a
/// second read would start at an offset direct I/O refuses).
fn read_once(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, at) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            res => return res,
        }
    }
}

#[cfg(target_os = "linux")]
fn open_direct(options: &OpenOptions, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = options.clone();
    options.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    options.open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &OpenOptions, _: &Path) -> io::Result<File> {
    Err(io::ErrorKind::InvalidInput.into())
}

#[cfg(target_os = "linux")]
fn clear_direct(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - rustix::fs::OFlags::DIRECT)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn clear_direct(_: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of varied lengths, `n` of them, numbered.
    fn lines(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i * 37 % 5000)).into_bytes()
            })
            .collect()
    }

    fn both_modes(test: impl Fn(bool)) {
        test(true);
        test(false);
    }

    /// Whether this directory's file system takes `O_DIRECT` at all.
    fn takes_direct(dir: &Path) -> bool {
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        open_direct(&options, &dir.join("probe")).is_ok()
    }

    #[test]
    fn every_flush_leaves_exactly_the_bytes_written() {
        both_modes(|direct| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.jsonl");
            let (mut f, size) = RecordFile::open(&path, direct).unwrap();
            assert_eq!(size, 0);
            if direct && takes_direct(dir.path()) {
                assert!(f.is_direct(), "O_DIRECT works here but was not used");
            }
            let mut expect = Vec::new();
            // Far more than one window, flushed at uneven points.
            for (i, line) in lines(1200).iter().enumerate() {
                f.write_all(line).unwrap();
                expect.extend_from_slice(line);
                if i % 97 == 0 {
                    f.flush().unwrap();
                    assert_eq!(std::fs::read(&path).unwrap(), expect, "after line {i}");
                }
            }
            assert!(expect.len() > 2 * WINDOW);
            f.flush().unwrap();
            f.flush().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expect);
        });
    }

    #[test]
    fn a_reopened_file_is_added_to_after_its_last_byte() {
        both_modes(|direct| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.jsonl");
            // Written by someone else first, to a length in no whole block.
            let mut expect = b"{\"first\":true}\n".repeat(300);
            std::fs::write(&path, &expect).unwrap();
            assert_ne!(expect.len() % BLOCK, 0);
            for round in 0..3 {
                let (mut f, size) = RecordFile::open(&path, direct).unwrap();
                assert_eq!(size, expect.len() as u64, "round {round}");
                for line in lines(40 + round) {
                    f.write_all(&line).unwrap();
                    expect.extend_from_slice(&line);
                }
                f.flush().unwrap();
            }
            assert_eq!(std::fs::read(&path).unwrap(), expect);
        });
    }

    #[test]
    fn a_line_longer_than_the_window_is_written_whole() {
        both_modes(|direct| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.jsonl");
            let (mut f, _) = RecordFile::open(&path, direct).unwrap();
            let mut long = vec![b'a'; 2 * WINDOW + 123];
            long.push(b'\n');
            f.write_all(b"{}\n").unwrap();
            f.write_all(&long).unwrap();
            f.flush().unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got.len(), 3 + long.len());
            assert_eq!(&got[..3], b"{}\n");
            assert!(got[3..] == long[..]);
        });
    }

    #[test]
    fn a_file_that_falls_back_to_the_page_cache_midway_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let (mut f, _) = RecordFile::open(&path, true).unwrap();
        let mut expect = Vec::new();
        for (i, line) in lines(700).iter().enumerate() {
            if i == 350 {
                // What a write refused with EINVAL does.
                f.through_page_cache().unwrap();
                assert!(!f.is_direct());
            }
            f.write_all(line).unwrap();
            expect.extend_from_slice(line);
            if i % 101 == 0 {
                f.flush().unwrap();
            }
        }
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }

    #[test]
    fn unflushed_bytes_are_not_in_the_file_and_nothing_pads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let (mut f, _) = RecordFile::open(&path, true).unwrap();
        f.write_all(b"{\"a\":1}\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        f.flush().unwrap();
        f.write_all(b"{\"b\":2}\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n");
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
    }
}
