//! Loopback ports for the processes tests and benches start, handed out so that no other
//! process is ever given the same one, and a check that the process on a port is the one
//! that was started there.
//!
//! The usual trick, binding port 0 and closing the socket, finds a port that is free only
//! for a moment: it comes from the kernel's ephemeral range, which every `bind(...:0)` on
//! the machine draws from (on Linux, with `SO_REUSEADDR`, from the odd ports of the range's
//! lower half: about 7,000). Tests pick ports before they start processes (three scorers'
//! ports before the first starts, two pods' ports that join a pool later) and restart a
//! killed scorer on its old port; another test's process could be given such a port in
//! between. A scorer that then answered on it looked ready to the harness while the
//! test's own scorer failed to bind and exited, and once the other test ended, the proxy
//! in front waited for the missing scorer until its 30 s timed out.
//!
//! So each process claims blocks of ports below the ephemeral range, each behind a lock
//! file (`flock`, which the kernel releases when the process exits, however it exits), and
//! hands their ports out one at a time, never twice, each checked free by binding it. No
//! other process of the harness, and no port the kernel picks for a `bind(0)` or a
//! `connect`, can land on one.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::net::TcpListener;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The lowest port handed out: above the ports people run things on by hand (Azurite's
/// 10000, `cargo xtask up`'s 8080, CI's smoke pool at 18400).
const FIRST: u16 = 20_000;

/// Ports per block. One run of the integration tests uses about 200; a process that needs
/// more claims another block.
const BLOCK: u16 = 250;

/// A port on 127.0.0.1 that no other process of the harness will be given and the kernel
/// does not hand out, free when it is returned and never returned twice by this process:
/// a test may pick it long before it starts a process on it, and start another process on
/// it after killing the first.
pub fn free_port() -> u16 {
    static PORTS: OnceLock<Mutex<Ports>> = OnceLock::new();
    PORTS
        .get_or_init(|| Mutex::new(Ports::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .next()
}

/// This process's blocks of ports.
struct Ports {
    /// Where blocks are cut from.
    range: Range<u16>,
    /// The lock files of the blocks held (closing one would release its block), by the
    /// block's first port.
    held: Vec<(u16, File)>,
    /// What is left of the newest block.
    left: Range<u16>,
}

impl Ports {
    fn new() -> Self {
        Ports {
            range: usable_range(),
            held: Vec::new(),
            left: 0..0,
        }
    }

    fn next(&mut self) -> u16 {
        loop {
            // A port something else already listens on (a developer's server) is skipped.
            // `SO_REUSEADDR`, as every server here sets it, so a port whose last connections
            // wait in TIME_WAIT counts as free.
            if let Some(port) = self
                .left
                .by_ref()
                .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
            {
                return port;
            }
            self.left = self.claim();
        }
    }

    /// Locks a block no other process holds; its ports.
    fn claim(&mut self) -> Range<u16> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let blocks = (self.range.end - self.range.start) / BLOCK;
        // Start at a block picked by the process id, so processes starting together
        // rarely try the same locks first.
        let offset = (std::process::id() % u32::from(blocks)) as u16;
        for i in 0..blocks {
            let start = self.range.start + (offset + i) % blocks * BLOCK;
            if self.held.iter().any(|(held, _)| *held == start) {
                continue;
            }
            let path = dir.join(format!("{start}-{}", start + BLOCK - 1));
            let mut file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            match file.try_lock() {
                Ok(()) => {
                    // Who holds it, for whoever looks.
                    let _ = file.set_len(0);
                    let _ = writeln!(file, "{}", std::process::id());
                    self.held.push((start, file));
                    return start..start + BLOCK;
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => panic!("locking {}: {e}", path.display()),
            }
        }
        panic!(
            "every block of test ports in {:?} is held by another process (locks in {})",
            self.range,
            dir.display()
        );
    }
}

/// The lock files of the blocks, shared by every process of the harness on the machine.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("manymodels-test-ports")
}

/// Ports from [`FIRST`] up to the kernel's ephemeral range (`ip_local_port_range`, 32768
/// by default), or above the range when it leaves no room below.
fn usable_range() -> Range<u16> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32768, 60999));
    let room = 4 * BLOCK;
    if low >= FIRST + room {
        FIRST..low
    } else if high <= u16::MAX - room {
        high + 1..u16::MAX
    } else {
        panic!(
            "the ephemeral port range {low}-{high} leaves no room for the tests' ports: \
             narrow net.ipv4.ip_local_port_range"
        )
    }
}

/// Whether process `pid` itself listens on 127.0.0.1:`port`: one of its open files is a
/// listening socket on that port (`/proc/net/tcp`, `/proc/<pid>/fd`). A ready answer on
/// the port says nothing about which process gave it.
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        // No /proc: nothing to tell them apart by.
        return true;
    };
    // The address as the kernel prints it: the 32-bit value in host byte order, in hex.
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
    const LISTEN: &str = "0A";
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&LISTEN))
                .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
                .flatten()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_free_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..usize::from(BLOCK) + 50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port handed out twice");
        let range = usable_range();
        assert!(ports.iter().all(|p| range.contains(p)), "{ports:?}");
        // More than one block's worth: a second block was claimed.
        assert!(ports.len() > usize::from(BLOCK));
        for &port in &ports[..10] {
            assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
        }
    }

    #[test]
    fn a_block_held_by_this_process_is_locked_for_every_other_open_file() {
        let port = free_port();
        let dir = lock_dir();
        let held = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let (first, last) = name.split_once('-').unwrap();
                (first.parse::<u16>().unwrap()..=last.parse::<u16>().unwrap()).contains(&port)
                    && std::fs::read_to_string(path)
                        .is_ok_and(|pid| pid.trim() == std::process::id().to_string())
            })
            .expect("the lock file of this process's block");
        // flock conflicts between open files, even within one process: another process
        // could not take it either.
        let other = File::open(&held).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }

    #[test]
    fn only_the_process_that_listens_on_a_port_is_said_to() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens(std::process::id(), port));
        // pid 1 does not hold this test's socket.
        assert!(!listens(1, port));
        drop(listener);
        assert!(!listens(std::process::id(), port));
    }
}
