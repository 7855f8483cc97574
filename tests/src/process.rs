//! Processes on 127.0.0.1: `mm-scorer` and `mm-proxy` as children of the test or bench,
//! each on its own port ([`free_port`]) with its log in a temp dir, killed when its handle
//! drops; and what `/proc` says about a process (memory, CPU time).

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;
use crate::metrics::{Metrics, scrape};
pub use crate::ports::free_port;
use crate::ports::listens;
use crate::store::{TempDir, root};

/// How long a process may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A built binary of the workspace, in the profile the harness was built with (so a
/// release build of xtask runs release servers).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds the binaries first",
        path.display()
    );
    path
}

/// A `kB` field of `/proc/<process>/status` (`process`: a pid or `self`; `field`:
/// `VmRSS`, `VmHWM`, ...), in bytes.
pub fn status_bytes(process: &str, field: &str) -> u64 {
    let path = format!("/proc/{process}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {path}"));
    kib * 1024
}

/// User plus system CPU seconds of process `pid` so far (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap_or_else(|| panic!("{path}: no command name"))
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> f64 { fields[i].parse().expect("numeric stat field") };
    (ticks(11) + ticks(12)) / 100.0
}

/// A child process serving HTTP on 127.0.0.1, killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its standard error.
    pub log: PathBuf,
    _logs: TempDir,
}

impl Process {
    /// Starts binary `name` with `--listen 127.0.0.1:<port>`, `args` and extra `env`;
    /// its stderr goes to a log file. With `cgroup` (a group's `cgroup.procs` file) a shell
    /// joins the group and then becomes the binary, so every byte the process ever charges
    /// is the group's.
    fn spawn_in(
        name: &str,
        port: u16,
        args: &[String],
        env: &[(&str, &str)],
        cgroup: Option<&Path>,
    ) -> Self {
        let logs = TempDir::new(&format!("{name}-log"));
        let log = logs.path().join(format!("{name}.log"));
        let mut command = match cgroup {
            None => Command::new(binary(name)),
            Some(procs) => {
                let mut shell = Command::new("sh");
                shell
                    .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .arg(binary(name));
                shell
            }
        };
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _logs: logs,
        }
    }

    /// Polls `/v2/health/ready` until `ready` accepts its answer (status, body) and the
    /// answer is this process's own; panics with the log if the process exits or `timeout`
    /// passes first (with what `explain` says then).
    ///
    /// Another process that holds the port (a port taken before this one bound it) answers
    /// just as well, so an answer counts only while this process listens on the port
    /// itself; the other one's keeps the wait going until this process fails to bind and
    /// exits, and the panic shows why.
    fn wait_until(
        &mut self,
        timeout: Duration,
        ready: impl Fn(u16, &str) -> bool,
        explain: impl Fn() -> String,
    ) {
        let started = Instant::now();
        let url = format!("{}/v2/health/ready", self.url);
        let mut last = None;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.url, self.logs());
            }
            if let Some((status, body)) = http::poll(&url) {
                let own = listens(self.pid(), self.port);
                if own && ready(status, &body) {
                    return;
                }
                let whose = if own { "" } else { ", from another process" };
                last = Some(format!("{status} {body}{whose}"));
            }
            assert!(
                started.elapsed() < timeout,
                "{} not ready after {timeout:?} (last answer: {}){}:\n{}",
                self.url,
                last.as_deref().unwrap_or("none"),
                explain(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:PORT`: the name a scorer reports in `x-mm-scorer` by default.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_term();
        self.child.wait().unwrap()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) and panics if it could not be sent: `STOP`
    /// freezes the process with its port still accepting, as a stalled node would.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill -{signal} {}",
            self.pid()
        );
    }

    /// Sends SIGTERM and returns at once (see [`Process::exited`]).
    pub fn send_term(&self) {
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still
    /// runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All samples of the Prometheus text exposition, keyed by `name{labels}`.
    pub async fn metrics(&self) -> Metrics {
        scrape(&self.url).await
    }

    /// The same, without a runtime (benches).
    pub fn metrics_blocking(&self) -> Metrics {
        let (status, text) = http::request("GET", &format!("{}/metrics", self.url), "")
            .unwrap_or_else(|e| panic!("{}/metrics: {e}", self.url));
        assert_eq!(status, 200, "{}/metrics", self.url);
        Metrics::parse(&text)
    }

    /// Resident set size of the process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        status_bytes(&self.pid().to_string(), "VmRSS")
    }

    /// The process's peak resident set size so far (`VmHWM`): the kernel's own high-water
    /// mark, so no sampling can miss a spike.
    pub fn peak_rss_bytes(&self) -> u64 {
        status_bytes(&self.pid().to_string(), "VmHWM")
    }

    /// User plus system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }
}

/// The `host:port` of each process, as `mm-proxy --scorers` takes them.
pub fn addrs<P: Deref<Target = Process>>(processes: &[P]) -> Vec<&str> {
    processes.iter().map(|p| p.addr()).collect()
}

/// The sum of the sample `name` over `processes` (a pool's scorers).
pub async fn metric_total<P: Deref<Target = Process>>(processes: &[P], name: &str) -> f64 {
    let mut total = 0.0;
    for process in processes {
        total += process.metrics().await.get(name);
    }
    total
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A handle that is a [`Process`] with its own constructors: it dereferences to it.
macro_rules! process_handle {
    ($name:ident) => {
        impl Deref for $name {
            type Target = Process;
            fn deref(&self) -> &Process {
                &self.0
            }
        }

        impl DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Process {
                &mut self.0
            }
        }
    };
}

/// `--set key=value` arguments.
fn set_args<S: AsRef<str>>(sets: &[S]) -> impl Iterator<Item = String> + '_ {
    sets.iter()
        .flat_map(|s| ["--set".to_string(), s.as_ref().to_string()])
}

/// A running `mm-scorer` process.
pub struct ScorerProcess(Process);

impl ScorerProcess {
    /// Starts `mm-scorer` on a free loopback port with `--set` overrides and extra env,
    /// and waits until it is ready.
    pub fn start(sets: &[String], env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), sets, env)
    }

    /// Starts `mm-scorer` on `port` (to restart one where a proxy expects it).
    pub fn start_on<S: AsRef<str>>(port: u16, sets: &[S], env: &[(&str, &str)]) -> Self {
        Self::start_on_in(port, sets, env, None)
    }

    /// `start_on`, inside the cgroup whose `cgroup.procs` file is `cgroup`
    /// (`cgroup::MemoryCgroup::procs`) from its first instruction.
    pub fn start_on_in<S: AsRef<str>>(
        port: u16,
        sets: &[S],
        env: &[(&str, &str)],
        cgroup: Option<&Path>,
    ) -> Self {
        let mut scorer = Self::spawn_on_in(port, sets, env, cgroup);
        scorer.wait_ready(READY_TIMEOUT);
        scorer
    }

    /// Starts `mm-scorer` on `port` without waiting for it to be ready. Scorers report
    /// ready at once unless `sets` gives `warmup.ready_timeout` (tests that have no proxy
    /// pushing statistics must not wait for a warm-up).
    pub fn spawn_on<S: AsRef<str>>(port: u16, sets: &[S], env: &[(&str, &str)]) -> Self {
        Self::spawn_on_in(port, sets, env, None)
    }

    fn spawn_on_in<S: AsRef<str>>(
        port: u16,
        sets: &[S],
        env: &[(&str, &str)],
        cgroup: Option<&Path>,
    ) -> Self {
        let defaults = [
            "shutdown.grace=2s",
            "shutdown.drain=300ms",
            "warmup.ready_timeout=0s",
        ];
        let args: Vec<String> = set_args(&defaults).chain(set_args(sets)).collect();
        ScorerProcess(Process::spawn_in("mm-scorer", port, &args, env, cgroup))
    }

    /// A scorer serving a local store directory.
    pub fn local(store: &Path, sets: &[&str]) -> Self {
        Self::local_on(free_port(), store, sets)
    }

    /// A scorer serving a local store directory, started inside `cgroup` (its
    /// `cgroup.procs` file, `MemoryCgroup::procs`).
    pub fn local_in(cgroup: &Path, store: &Path, sets: &[&str]) -> Self {
        let mut all: Vec<String> = vec![format!("store.path={}", store.display())];
        all.extend(sets.iter().map(|s| s.to_string()));
        Self::start_on_in(free_port(), &all, &[], Some(cgroup))
    }

    /// A scorer serving a local store directory on `port`.
    pub fn local_on(port: u16, store: &Path, sets: &[&str]) -> Self {
        let mut all = vec![format!("store.path={}", store.display())];
        all.extend(sets.iter().map(|s| s.to_string()));
        Self::start_on(port, &all, &[])
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        self.0
            .wait_until(timeout, |status, _| status == 200, String::new);
    }
}

process_handle!(ScorerProcess);

/// A running `mm-proxy` process in front of scorers.
pub struct ProxyProcess(Process);

impl ProxyProcess {
    /// Starts `mm-proxy` on a free port in front of `scorers` (`host:port`), with fast
    /// health checks for tests, and waits until every scorer passed the proxy's health check.
    pub fn start(scorers: &[&str], sets: &[&str]) -> Self {
        let tuning = [
            "shutdown.grace=1s",
            "health.interval=200ms",
            "health.eject_for=1s",
            "pool.refresh=1s",
            // A loopback connect that takes seconds means the proxy's own thread was
            // starved (debug builds, parallel tests, two cores), not a dead scorer: those
            // are refused at once. The 1 s default would eject a healthy owner and move
            // its models.
            "upstream.connect_timeout=5s",
        ];
        Self::launch(free_port(), scorers, &tuning, sets)
    }

    /// Starts `mm-proxy` on `port` with the production defaults (benches measure those)
    /// but for `sets` and a short shutdown grace, and waits as [`ProxyProcess::start`] does.
    pub fn with_defaults<S: AsRef<str>>(port: u16, scorers: &[S], sets: &[&str]) -> Self {
        let scorers: Vec<&str> = scorers.iter().map(AsRef::as_ref).collect();
        Self::launch(port, &scorers, &["shutdown.grace=1s"], sets)
    }

    fn launch(port: u16, scorers: &[&str], tuning: &[&str], sets: &[&str]) -> Self {
        let args: Vec<String> = ["--scorers".to_string(), scorers.join(",")]
            .into_iter()
            .chain(set_args(tuning))
            .chain(set_args(sets))
            .collect();
        let mut proxy = ProxyProcess(Process::spawn_in("mm-proxy", port, &args, &[], None));
        // Ready means every scorer passed the proxy's health check: a test that starts
        // while one is still unchecked would see its models routed elsewhere.
        let expected = scorers.len() as u64;
        // Should one never pass: how each answers the test itself.
        let scorers_now = || {
            let answers: Vec<String> = scorers
                .iter()
                .map(|scorer| {
                    let answer = http::poll(&format!("http://{scorer}/v2/health/ready"))
                        .map_or("no answer".to_string(), |(status, _)| status.to_string());
                    format!("{scorer} {answer}")
                })
                .collect();
            format!("; its scorers' readiness now: {}", answers.join(", "))
        };
        proxy.0.wait_until(
            READY_TIMEOUT,
            |status, body| {
                status == 200
                    && serde_json::from_str::<Value>(body)
                        .ok()
                        .and_then(|v| v["healthy_scorers"].as_u64())
                        == Some(expected)
            },
            scorers_now,
        );
        proxy
    }
}

process_handle!(ProxyProcess);

/// A pool: scorers behind one proxy.
pub struct Pool {
    pub scorers: Vec<ScorerProcess>,
    pub proxy: ProxyProcess,
}

impl Pool {
    /// `scorers` scorers serving the local `store` with `scorer_sets`, behind one test
    /// proxy ([`ProxyProcess::start`]) with `proxy_sets`.
    pub fn local(store: &Path, scorers: usize, scorer_sets: &[&str], proxy_sets: &[&str]) -> Self {
        let scorers: Vec<ScorerProcess> = (0..scorers)
            .map(|_| ScorerProcess::local(store, scorer_sets))
            .collect();
        let proxy = ProxyProcess::start(&addrs(&scorers), proxy_sets);
        Pool { scorers, proxy }
    }
}
