//! A memory cgroup with a pod's limit, for tests and benches that hold a scorer to the
//! memory contract as Kubernetes does: page cache and mapped files count against the
//! limit, and past it the kernel reclaims or OOM-kills.
//!
//! cgroup v1 (`/sys/fs/cgroup/memory`: `memory.limit_in_bytes`, `memory.usage_in_bytes`,
//! `memory.max_usage_in_bytes`, `memory.oom_control`'s `oom_kill`) and v2 (the unified
//! hierarchy at `/sys/fs/cgroup`: `memory.max`, `memory.current`, `memory.peak`,
//! `memory.events`' `oom_kill`; the memory controller must be enabled in the parent's
//! `cgroup.subtree_control`, which [`MemoryCgroup::create`] does) are both supported.
//! On v1 a process moved in brings its charges (`memory.move_charge_at_immigrate`); on v2
//! charges stay where they were made, so a process should move in early.

use std::path::{Path, PathBuf};

/// Which hierarchy the machine has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A child memory cgroup, removed (its processes moved back to the root) on drop.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    version: Version,
    limit: u64,
}

/// What the cgroup's counters say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Everything charged now: anonymous memory and page cache.
    pub current: u64,
    /// The high-water mark of `current`.
    pub peak: u64,
    /// Anonymous memory (the processes' heaps and stacks).
    pub anon: u64,
    /// Page cache (files read or written, mapped or not).
    pub file: u64,
    /// Processes the kernel killed for this cgroup's limit.
    pub oom_kills: u64,
}

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const V2_ROOT: &str = "/sys/fs/cgroup";

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of `key` in a flat keyed file (`memory.stat`, `memory.events`,
/// `memory.oom_control`).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

impl MemoryCgroup {
    /// The memory cgroup hierarchy this machine has, if this process may create groups
    /// in it.
    pub fn version() -> Option<Version> {
        if Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
            Some(Version::V1)
        } else if read(&Path::new(V2_ROOT).join("cgroup.controllers"))
            .split_whitespace()
            .any(|c| c == "memory")
        {
            Some(Version::V2)
        } else {
            None
        }
    }

    /// Creates `manymodels-<name>-<pid>` with a memory limit of `limit` bytes (and no
    /// swap to escape into).
    pub fn create(name: &str, limit: u64) -> std::io::Result<MemoryCgroup> {
        let version = Self::version().ok_or_else(|| {
            std::io::Error::other("no memory cgroup controller (v1 or v2) on this machine")
        })?;
        let leaf = format!("manymodels-{name}-{}", std::process::id());
        let dir = match version {
            Version::V1 => Path::new(V1_ROOT).join(leaf),
            Version::V2 => {
                let root = Path::new(V2_ROOT);
                // Children of the root get the memory controller only when it is enabled.
                let _ = write(&root.join("cgroup.subtree_control"), "+memory");
                root.join(leaf)
            }
        };
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir)?;
        let group = MemoryCgroup {
            dir,
            version,
            limit,
        };
        match version {
            Version::V1 => {
                write(&group.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                // A process moved in brings what it has charged so far.
                let _ = write(&group.dir.join("memory.move_charge_at_immigrate"), "3");
                // Swap off for this group, as on a Kubernetes node.
                let _ = write(&group.dir.join("memory.swappiness"), "0");
            }
            Version::V2 => {
                write(&group.dir.join("memory.max"), &limit.to_string())?;
                let _ = write(&group.dir.join("memory.swap.max"), "0");
            }
        }
        Ok(group)
    }

    /// The group's `cgroup.procs` file: a process that writes its pid there joins.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn version_of(&self) -> Version {
        self.version
    }

    /// The group's counters now.
    pub fn usage(&self) -> Usage {
        let num = |file: &str| {
            read(&self.dir.join(file))
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        };
        let stat = read(&self.dir.join("memory.stat"));
        match self.version {
            Version::V1 => Usage {
                current: num("memory.usage_in_bytes"),
                peak: num("memory.max_usage_in_bytes"),
                anon: keyed(&stat, "rss"),
                file: keyed(&stat, "cache"),
                oom_kills: keyed(&read(&self.dir.join("memory.oom_control")), "oom_kill"),
            },
            Version::V2 => Usage {
                current: num("memory.current"),
                // `memory.peak` exists from Linux 5.19; before it the current value is
                // the best there is.
                peak: num("memory.peak").max(num("memory.current")),
                anon: keyed(&stat, "anon"),
                file: keyed(&stat, "file"),
                oom_kills: keyed(&read(&self.dir.join("memory.events")), "oom_kill"),
            },
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Processes still inside (a test that failed before stopping its scorer) go back
        // to the root, so the group can be removed.
        let root = match self.version {
            Version::V1 => Path::new(V1_ROOT),
            Version::V2 => Path::new(V2_ROOT),
        };
        for pid in read(&self.dir.join("cgroup.procs")).split_whitespace() {
            let _ = write(&root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_key() {
        let text = "cache 4096\nrss 8192\nrss_huge 0\n";
        assert_eq!(keyed(text, "rss"), 8192);
        assert_eq!(keyed(text, "cache"), 4096);
        assert_eq!(keyed(text, "swap"), 0);
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            2
        );
    }
}
