//! Where loads run and what they cost.
//!
//! - **Load threads.** Every compile or session creation runs on one of a fixed set of
//!   `cache.max_concurrent_loads` threads (default: the CPUs the process may use, from its
//!   cgroup quota on Kubernetes) started at nice +10. Hot hits run on the async workers at
//!   normal priority, so on a busy machine the kernel gives a hit's few microseconds to the
//!   hit and the rest to the loads; loads never queue behind each other beyond the slots.
//! - **Cost.** A load costs the CPU time of its thread (`CLOCK_THREAD_CPUTIME_ID`) plus the
//!   wall time of the store read: the work it takes, not the time it spent waiting for a
//!   core on a contended machine. That is what the policy ranks with, the same quantity
//!   the simulator's cost model predicts.
//! - **Reservations.** What a load may hold before it ends, reserved in the resident set
//!   before it starts (`reservation`), from peaks measured per engine (BENCHMARKS.md).

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

/// Niceness of load threads (0 is normal, 19 the lowest).
const LOAD_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of low-priority threads for loads.
pub struct LoadThreads {
    jobs: Mutex<Sender<Job>>,
}

impl LoadThreads {
    /// `threads` load threads at nice +10, for compiles and session creations.
    pub fn new(threads: usize) -> Self {
        Self::with_nice(threads, "mm-load", LOAD_NICE)
    }

    /// `threads` threads at normal priority for loads from native images: a few
    /// milliseconds at most, the same order as a batch of hits, so a miss is not left
    /// waiting behind the hit traffic as a compile is on purpose.
    pub fn for_images(threads: usize) -> Self {
        Self::with_nice(threads, "mm-image", 0)
    }

    fn with_nice(threads: usize, name: &str, nice: i32) -> Self {
        let (sender, receiver) = channel::<Job>();
        let receiver = std::sync::Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || work(&receiver, nice))
                .expect("a load thread starts");
        }
        LoadThreads {
            jobs: Mutex::new(sender),
        }
    }

    /// Runs `f` on a load thread; returns its value and the CPU seconds it used. `trim`:
    /// give the heap back to the OS afterwards (`trims_after`). (The cache's loads all
    /// hold something: they use `run_holding`.)
    #[cfg(test)]
    pub async fn run<T: Send + 'static>(
        &self,
        trim: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(T, f64), String> {
        self.run_holding(trim, (), f)
            .await
            .map(|(value, cpu, ())| (value, cpu))
    }

    /// `run`, with `hold` (a load's memory reservation) kept by the job and given back
    /// with its value. A caller that stops waiting (`cache.load_timeout`) cannot stop the
    /// thread, so what the load holds must live as long as the work, not as long as the
    /// wait: if nobody takes the value, `hold` is released when the job ends.
    pub async fn run_holding<T: Send + 'static, H: Send + 'static>(
        &self,
        trim: bool,
        hold: H,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(T, f64, H), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Made on the asking side (a child of its load span), entered on the load thread.
        let span = if manymodels_boot::telemetry::traced_here() {
            tracing::debug_span!("load.thread", trim)
        } else {
            tracing::Span::none()
        };
        let job: Job = Box::new(move || {
            let _entered = span.enter();
            let started = thread_cpu_seconds();
            let value = f();
            let cpu = (thread_cpu_seconds() - started).max(0.0);
            // What the load freed (the file's parse, the engine's scratch) goes back to
            // the OS before the next load: otherwise each load thread's allocator arena
            // keeps its largest load's transient memory resident for good.
            if trim {
                super::trim_heap();
            }
            let _ = tx.send((value, cpu, hold));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| "the load threads are gone".to_string())?;
        rx.await.map_err(|_| "the load panicked".to_string())
    }
}

fn work(jobs: &Mutex<Receiver<Job>>, nice: i32) {
    if nice != 0 {
        lower_priority(nice);
    }
    loop {
        // An error means the pool was dropped.
        let Ok(job) = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() else {
            return;
        };
        // A panicking load drops its reply (the caller sees an error); the thread lives on.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id only changes this thread's niceness (Linux
    // applies PRIO_PROCESS to a single thread).
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower a load thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

/// CPU seconds the calling thread has used.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// The niceness of the calling thread (for tests).
#[cfg(all(test, target_os = "linux"))]
fn own_nice() -> i32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: getpriority only reads the niceness of our own thread.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
}

/// Memory a load may hold before it ends: the file buffer, what the engine allocates
/// while it works, and the model itself. From the peaks `cargo xtask bench engines`
/// measures as process RSS growth during a load (BENCHMARKS.md), with margin: a native
/// compile grows RSS by at most 0.5x the file (heap peak 0.6x on the one-pass path, 2.0x
/// on the general one), ONNX Runtime by up to 12.6x for the realistic heavy forests, 18x
/// for mid-size ones and 20x for the deep generated forests of the burst test (a fixed
/// part covers small models).
///
/// A load from a native image (`Phase::Image`, `file_bytes` the image's length) holds the
/// model and nothing else: its large arrays are the image's own bytes (mapped, or read into
/// one buffer when small), and the model is charged the whole image.
pub fn reservation(engine: Phase, file_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    match engine {
        Phase::Native => file_bytes + file_bytes * 5 / 2 + 64 * 1024,
        Phase::OnnxRuntime => file_bytes + file_bytes * ONNX_PEAK + 2 * MIB,
        Phase::Image => file_bytes + IMAGE_OVERHEAD,
    }
}

/// What a model read from an image keeps beyond the image's bytes: the structs around its
/// arrays (ports, steps, boxed operators).
pub const IMAGE_OVERHEAD: u64 = 16 * 1024;

/// Whether a load reserving `reservation` bytes is worth a heap trim afterwards: small
/// loads (most of a store's linear models) free too little to pay for a walk of every
/// allocator arena.
pub fn trims_after(reservation: u64) -> bool {
    reservation >= 4 << 20
}

/// ONNX Runtime's peak RSS growth during a session creation, as a multiple of the file.
pub const ONNX_PEAK: u64 = 20;

/// Which engine a reservation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Native,
    OnnxRuntime,
    /// A native model read from its image.
    Image,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_run_on_low_priority_threads_and_report_their_cpu_time() {
        let threads = LoadThreads::new(2);
        let (nice, cpu) = threads
            .run(true, || {
                // Spin about 30 ms of CPU.
                let started = thread_cpu_seconds();
                let mut x = 0u64;
                while thread_cpu_seconds() - started < 0.03 {
                    x = x.wrapping_add(1);
                }
                std::hint::black_box(x);
                own_nice()
            })
            .await
            .unwrap();
        assert_eq!(nice, LOAD_NICE);
        // Image loads run at normal priority.
        let images = LoadThreads::for_images(1);
        let (nice, _) = images.run(true, own_nice).await.unwrap();
        assert_eq!(nice, 0);
        assert!((0.03..0.5).contains(&cpu), "{cpu}");
        // A sleeping load costs (almost) no CPU: waiting is not work.
        let ((), idle) = threads
            .run(true, || {
                std::thread::sleep(std::time::Duration::from_millis(50))
            })
            .await
            .unwrap();
        assert!(idle < 0.01, "{idle}");
        // A panic is an error for its caller; the threads keep serving.
        assert!(threads.run(false, || panic!("boom")).await.is_err());
        assert_eq!(threads.run(false, || 7).await.unwrap().0, 7);
        assert_eq!(own_nice(), 0, "the caller's priority is untouched");
    }

    #[test]
    fn reservations_cover_the_file_and_the_engine_peak() {
        let mb = 1 << 20;
        assert!(reservation(Phase::Native, 30 * mb) >= 30 * mb * 3);
        assert!(reservation(Phase::OnnxRuntime, 30 * mb) > reservation(Phase::Native, 30 * mb));
        assert!(reservation(Phase::Native, 0) > 0);
    }
}
