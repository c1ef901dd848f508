//! Gives back the page-table mappings of code and read-only data a process touched while
//! starting up (the agent also after forking a container) and will not run again soon. Those
//! pages belong to the process's binary and the C library, which stay in the page cache,
//! shared; unmapping them frees no memory the host had, but keeps the resident set to what the
//! process goes on using (the kernel maps code in 64 KiB runs around each page it faults in,
//! so start-up alone leaves most of a binary's text resident). Pages that were written (relocations: anonymous copies) are
//! never touched, so nothing the agent needs is lost: a dropped page is read back from the
//! file on its next use.

use std::io::{Read, Seek, SeekFrom};

/// pagemap: bit 63 page present, bit 61 file-backed (or shared anonymous).
const PRESENT: u64 = 1 << 63;
const FILE_PAGE: u64 = 1 << 61;

/// Unmaps the present, file-backed pages of this process's private read-only file mappings.
pub fn drop_clean_file_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let Ok(mut pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return;
    };
    let page = page_size();
    for (start, end) in readonly_file_mappings(&maps) {
        let pages = ((end - start) / page) as usize;
        let mut entries = vec![0u8; pages * 8];
        if pagemap.seek(SeekFrom::Start(start / page * 8)).is_err()
            || pagemap.read_exact(&mut entries).is_err()
        {
            continue;
        }
        // Runs of droppable pages, each given back with one madvise.
        let mut run_start: Option<usize> = None;
        for i in 0..=pages {
            let droppable = i < pages && {
                let e = u64::from_le_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                e & PRESENT != 0 && e & FILE_PAGE != 0
            };
            match (droppable, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(first)) => {
                    let addr = start + first as u64 * page;
                    let len = (i - first) as u64 * page;
                    // SAFETY: the range lies within a private, read-only file mapping of this
                    // process and holds only pages still identical to the file (never written:
                    // the pagemap says they are file pages, not anonymous copies), so dropping
                    // them changes no content: the next access faults them back from the file.
                    unsafe {
                        libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED);
                    }
                    run_start = None;
                }
                _ => {}
            }
        }
    }
}

/// The system's page size (4 KiB on x86-64; 16 or 64 KiB on some arm64 and ppc64le kernels),
/// which the pagemap's entries count.
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; it takes no pointers and touches no memory
    // of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // POSIX guarantees a page size; -1 (never seen on Linux) falls back to the smallest one.
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// (start, end) of mappings that are private, not writable and backed by a file.
fn readonly_file_mappings(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?;
            if !path.starts_with('/')
                || perms.as_bytes().get(1) != Some(&b'-')
                || !perms.ends_with('p')
            {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn picks_private_read_only_file_mappings() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 08:01 123 /usr/bin/crius
55d0a0100000-55d0a0200000 r-xp 00100000 08:01 123 /usr/bin/crius
55d0a0200000-55d0a0210000 rw-p 00200000 08:01 123 /usr/bin/crius
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
7f0000002000-7f0000003000 r--s 00000000 08:01 9 /dev/shm/x
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            super::readonly_file_mappings(maps),
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0200000)
            ]
        );
    }

    #[test]
    fn the_page_size_is_the_systems() {
        let size = super::page_size();
        assert!(size.is_power_of_two() && size >= 4096, "{size}");
        // What the kernel reports as the page size of this process's first mapping.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let kernel_kb: u64 = smaps
            .lines()
            .find_map(|l| l.strip_prefix("KernelPageSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert_eq!(size, kernel_kb * 1024);
    }

    #[test]
    fn dropping_keeps_the_process_working() {
        let before = std::fs::read_to_string("/proc/self/status").unwrap();
        super::drop_clean_file_pages();
        // Code and constants come back on use.
        let after = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(before.contains("VmRSS") && after.contains("VmRSS"));
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
