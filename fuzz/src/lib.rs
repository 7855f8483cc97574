//! Bounded fuzzing of the parsers that take untrusted input, on stable Rust.
//!
//! One test file per target in `fuzz/tests/`, so `cargo test` (and `cargo xtask test`)
//! runs every target:
//!
//! | target | file | code under test |
//! |---|---|---|
//! | `oip` | `tests/oip.rs` | `manymodels_scorer::oip::{parse_infer_request, validate_inputs, select_outputs}` |
//! | `route` | `tests/route.rs` | `manymodels_proxy::route::classify`, `Action::path`, `manymodels_contract::{parse_version, valid_model_id, bearer}` |
//! | `stats` | `tests/stats.rs` | `manymodels_contract::StatsReport` decoding, `manymodels_policy::{PoolView, Policy::set_pool_rates}` |
//! | `config` | `tests/config.rs` | `ScorerConfig::load`/`ProxyConfig::load` from TOML text, `--set` pairs and environment variables; `parse_bytes`, `parse_duration` |
//! | `onnx` | `tests/onnx.rs` | `manymodels_native::Model::compile` (and `run` on what compiles) |
//!
//! Each target first replays every file of its seed corpus `fuzz/corpus/<target>/` (real
//! inputs: the demo request bodies, the helm chart's configuration, real model files,
//! plus the regressions fuzzing found), then runs a bounded number of generated inputs:
//! structure-aware where that is cheap (OIP-shaped JSON with hostile numbers, shapes and
//! nesting; paths built from route fragments, percent escapes and NUL; reports with
//! negative, huge and duplicate rates; TOML and `--set` pairs over the real keys; ONNX
//! files mutated by bit flips, truncation, splices and inflated protobuf length fields).
//!
//! The property, for every input: no panic, no hang (each input within
//! [`PER_INPUT_LIMIT`]; a watchdog aborts the process if one runs past [`HANG_LIMIT`]),
//! no allocation out of proportion to the input (a counting global allocator), and a bad
//! input is an error that says what is wrong.
//!
//! # Why proptest
//!
//! Nightly is not available where this runs, so cargo-fuzz (libFuzzer, `-Z` flags) is
//! out. bolero runs on stable only as a property-test driver too (its coverage-guided
//! engines need cargo-bolero and nightly sanitizers), so it buys nothing over proptest
//! here, and proptest brings what matters for these targets: composable strategies for
//! structure-aware inputs, shrinking of a failure to a small input, and a runner with a
//! fixed seed (`RngSeed::Fixed`) so CI runs the same cases every time.
//!
//! # Running longer
//!
//! - `MM_FUZZ_CASES=N`: generated cases per target (default: each target's own, a few
//!   hundred to a few thousand, sized to stay within seconds in a debug build).
//! - `MM_FUZZ_SEED=N`: another seed (default fixed).
//! - `MM_FUZZ_SECONDS=N`: the time budget per target (default 10 s); cases past it are
//!   skipped and counted as such.
//!
//! `MM_FUZZ_CASES=200000 MM_FUZZ_SECONDS=3600 MM_FUZZ_SEED=$RANDOM cargo test --release -p
//! manymodels-fuzz -- --nocapture` fuzzes for up to an hour a target. A failure is shrunk,
//! printed and written to `$CARGO_TARGET_TMPDIR`-style `target/tmp/fuzz-failures/`; add
//! the input to the target's corpus as a regression.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

pub use proptest;

/// The longest one input may take, in a debug build on a busy 2-core machine.
pub const PER_INPUT_LIMIT: Duration = Duration::from_secs(5);

/// An input still running after this long is a hang: the watchdog aborts the process.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// The default seed: CI runs the same cases every time.
pub const DEFAULT_SEED: u64 = 0x6d6d_5f66_757a_7a31;

// ---------------------------------------------------------------------------------------
// Allocation accounting
// ---------------------------------------------------------------------------------------

/// Every test binary of this crate counts its heap, so a target can check that an input
/// did not allocate out of proportion to its size (`peak_heap`).
#[global_allocator]
static ALLOCATOR: manymodels_tests::alloc::Counting = manymodels_tests::alloc::Counting;

pub use manymodels_tests::alloc::peak_heap;

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={text:?} is not a number"),
    }
}

/// `MM_FUZZ_SEED`, or the fixed default.
pub fn seed() -> u64 {
    env_number("MM_FUZZ_SEED").unwrap_or(DEFAULT_SEED)
}

/// `MM_FUZZ_CASES`, or the target's default.
pub fn cases(default: u32) -> u32 {
    env_number("MM_FUZZ_CASES").map_or(default, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// `MM_FUZZ_SECONDS`, or 10 s: the time budget of one target's generated cases.
pub fn time_budget() -> Duration {
    Duration::from_secs(env_number("MM_FUZZ_SECONDS").unwrap_or(10))
}

// ---------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------

type Running = HashMap<ThreadId, (Instant, String)>;

fn running() -> &'static Mutex<Running> {
    static RUNNING: OnceLock<Mutex<Running>> = OnceLock::new();
    RUNNING.get_or_init(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let hung = running()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .find(|(started, _)| started.elapsed() > HANG_LIMIT)
                    .map(|(_, what)| what.clone());
                if let Some(what) = hung {
                    eprintln!("fuzz: {what} has run for more than {HANG_LIMIT:?}: a hang");
                    std::process::abort();
                }
            }
        });
        Mutex::new(HashMap::new())
    })
}

/// Runs one input under the watchdog and the per-input time limit. `what` names it in a
/// hang report (a corpus file, or the target, seed and case number, which reproduce it).
pub fn timed<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T, String> {
    let started = Instant::now();
    let me = std::thread::current().id();
    let slot = running();
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(me, (started, what()));
    let out = f();
    slot.lock().unwrap_or_else(|p| p.into_inner()).remove(&me);
    let took = started.elapsed();
    if took > PER_INPUT_LIMIT {
        return Err(format!("took {took:?}, more than {PER_INPUT_LIMIT:?}"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Corpus and runner
// ---------------------------------------------------------------------------------------

/// `fuzz/corpus/<target>/`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Every file of the target's seed corpus, sorted by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

/// Replays every corpus file of `target` through `property`; panics naming the first file
/// that fails the property, panics, or takes too long.
pub fn replay(target: &str, property: impl Fn(&str, &[u8]) -> Result<(), String>) -> usize {
    let files = corpus(target);
    for (name, bytes) in &files {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            timed(
                || format!("{target} corpus file {name}"),
                || property(name, bytes),
            )
        }));
        match outcome {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why)) | Err(why)) => panic!("{target}: corpus file {name}: {why}"),
            Err(_) => panic!("{target}: corpus file {name} panicked"),
        }
    }
    files.len()
}

/// Runs `default_cases` (or `MM_FUZZ_CASES`) inputs from `strategy` through `property`
/// with the fixed (or `MM_FUZZ_SEED`) seed, within the time budget. A failing input is
/// shrunk, written to `target/tmp/fuzz-failures/` and reported in the panic.
pub fn generate<S>(
    target: &str,
    default_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), String>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let seed = seed();
    let cases = cases(default_cases);
    let budget = time_budget();
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 2_000,
        max_shrink_time: 30_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let ran = AtomicUsize::new(0);
    let skipped = AtomicUsize::new(0);
    let result = runner.run(&strategy, |value| {
        if started.elapsed() > budget {
            skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let case = ran.fetch_add(1, Ordering::Relaxed);
        match timed(
            || format!("{target} case {case} (MM_FUZZ_SEED={seed})"),
            || property(value),
        ) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) | Err(why) => Err(TestCaseError::fail(why)),
        }
    });
    let ran = ran.into_inner();
    let skipped = skipped.into_inner();
    println!(
        "fuzz {target}: {ran} generated cases in {:.1?} (seed {seed}){}",
        started.elapsed(),
        if skipped > 0 {
            format!(", {skipped} skipped past the {budget:?} budget")
        } else {
            String::new()
        }
    );
    match result {
        Ok(()) => {}
        Err(TestError::Abort(why)) => panic!("{target}: aborted: {why}"),
        Err(TestError::Fail(why, value)) => {
            let text = format!("{value:#?}");
            let saved = save_failure(target, &text);
            panic!("{target}: {why}\nminimal input (saved to {saved}):\n{text}");
        }
    }
}

fn save_failure(target: &str, text: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/fuzz-failures");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("tmp/fuzz-failures"))
        .unwrap_or(dir);
    let path = dir.join(format!("{target}-{}.txt", seed()));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("nowhere: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Byte mutations
// ---------------------------------------------------------------------------------------

/// One change to a byte string. Positions are taken modulo the length, so any mutation
/// applies to any input and shrinks independently of it.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    Flip { at: usize, bit: u8 },
    /// Overwrite one byte with a boundary value (0, 0x7f, 0x80, 0xff, ...).
    Boundary { at: usize, value: u8 },
    /// Cut everything from `at` on.
    Truncate { at: usize },
    /// Remove `len` bytes at `at`.
    Delete { at: usize, len: usize },
    /// Insert bytes at `at`.
    Insert { at: usize, bytes: Vec<u8> },
    /// Copy `len` bytes from `from` and insert them at `to` (repeats structure).
    Duplicate { from: usize, len: usize, to: usize },
}

const BOUNDARIES: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'0', b'-', b'"'];

/// Any one [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<usize>(), prop::sample::select(&BOUNDARIES[..]))
            .prop_map(|(at, value)| Mutation::Boundary { at, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..256, any::<usize>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
    ]
}

/// Applies `mutation` to `bytes`.
pub fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let n = bytes.len();
    match *mutation {
        Mutation::Flip { at, bit } if n > 0 => bytes[at % n] ^= 1 << (bit % 8),
        Mutation::Boundary { at, value } if n > 0 => bytes[at % n] = value,
        Mutation::Truncate { at } => bytes.truncate(at % (n + 1)),
        Mutation::Delete { at, len } if n > 0 => {
            let at = at % n;
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Insert {
            at,
            bytes: ref extra,
        } => {
            let at = at % (n + 1);
            bytes.splice(at..at, extra.iter().copied());
        }
        Mutation::Duplicate { from, len, to } if n > 0 => {
            let from = from % n;
            let chunk = bytes[from..(from + len).min(n)].to_vec();
            let to = to % (n + 1);
            bytes.splice(to..to, chunk);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Protobuf structure (for ONNX files)
// ---------------------------------------------------------------------------------------

/// A length-delimited protobuf field: where its length varint starts, how many bytes it
/// takes, and the length it declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthField {
    pub at: usize,
    pub width: usize,
    pub len: u64,
}

fn read_varint(bytes: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(i)?;
        i += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value, i));
        }
    }
    None
}

/// Appends the varint encoding of `v`.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Every length-delimited field of a protobuf message, nested ones included (a field
/// whose contents parse as a message is walked too, up to 16 deep and 100,000 fields).
/// Iterative: nothing here recurses on the data.
pub fn length_fields(bytes: &[u8]) -> Vec<LengthField> {
    let mut out = Vec::new();
    let mut work = vec![(0usize, bytes.len(), 0u32)];
    while let Some((start, end, depth)) = work.pop() {
        let mut found = Vec::new();
        let mut i = start;
        let mut whole = true;
        while i < end {
            let Some((key, next)) = read_varint(&bytes[..end], i) else {
                whole = false;
                break;
            };
            i = next;
            match key & 7 {
                0 => match read_varint(&bytes[..end], i) {
                    Some((_, next)) => i = next,
                    None => {
                        whole = false;
                        break;
                    }
                },
                1 => i += 8,
                5 => i += 4,
                2 => {
                    let Some((len, next)) = read_varint(&bytes[..end], i) else {
                        whole = false;
                        break;
                    };
                    let body_end = (next as u64).saturating_add(len);
                    if body_end > end as u64 {
                        whole = false;
                        break;
                    }
                    found.push(LengthField {
                        at: i,
                        width: next - i,
                        len,
                    });
                    i = body_end as usize;
                }
                _ => {
                    whole = false;
                    break;
                }
            }
        }
        if !whole || i != end || key_field_zero(bytes, start, end) {
            continue;
        }
        for field in found {
            if out.len() >= 100_000 {
                return out;
            }
            out.push(field);
            let body = field.at + field.width;
            if depth < 16 && field.len > 0 {
                work.push((body, body + field.len as usize, depth + 1));
            }
        }
    }
    out.sort_by_key(|f| f.at);
    out
}

/// A message never starts with field number 0: such bytes are a string or packed data.
fn key_field_zero(bytes: &[u8], start: usize, end: usize) -> bool {
    start < end && read_varint(&bytes[..end], start).is_none_or(|(key, _)| key >> 3 == 0)
}

/// How to rewrite one length field.
#[derive(Clone, Copy, Debug)]
pub enum Inflate {
    /// One more or one less than the bytes that follow.
    OffByOne(bool),
    /// Twice the declared length.
    Double,
    /// 2^31 - 1, 2^32 and 2^62: past the file, and past what a naive reader allocates.
    Huge(u8),
    /// Zero.
    Zero,
    /// The same length in the longest (10-byte) varint form, which protobuf allows.
    Overlong,
}

/// An [`Inflate`] for the `which`-th length field (modulo their number).
pub fn inflation() -> impl Strategy<Value = (usize, Inflate)> {
    let how = prop_oneof![
        any::<bool>().prop_map(Inflate::OffByOne),
        Just(Inflate::Double),
        (0u8..3).prop_map(Inflate::Huge),
        Just(Inflate::Zero),
        Just(Inflate::Overlong),
    ];
    (any::<usize>(), how)
}

/// Rewrites the `which`-th length field of `bytes` (modulo their number), if it has any.
pub fn inflate(bytes: &mut Vec<u8>, fields: &[LengthField], which: usize, how: Inflate) {
    if fields.is_empty() {
        return;
    }
    let field = fields[which % fields.len()];
    let mut encoded = Vec::new();
    match how {
        Inflate::OffByOne(up) => write_varint(
            &mut encoded,
            if up {
                field.len + 1
            } else {
                field.len.saturating_sub(1)
            },
        ),
        Inflate::Double => write_varint(&mut encoded, field.len.saturating_mul(2).max(1)),
        Inflate::Huge(k) => write_varint(
            &mut encoded,
            [(1 << 31) - 1, 1 << 32, 1 << 62][k as usize % 3],
        ),
        Inflate::Zero => write_varint(&mut encoded, 0),
        Inflate::Overlong => {
            let mut v = field.len;
            for _ in 0..9 {
                encoded.push(v as u8 | 0x80);
                v >>= 7;
            }
            encoded.push(v as u8);
        }
    }
    bytes.splice(field.at..field.at + field.width, encoded);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_fields_finds_nested_messages_and_inflate_rewrites_them() {
        // field 1 (LEN) { field 2 (LEN) "ab" }
        let bytes = [0x0a, 0x04, 0x12, 0x02, b'a', b'b'];
        let fields = length_fields(&bytes);
        assert_eq!(
            fields,
            [
                LengthField {
                    at: 1,
                    width: 1,
                    len: 4
                },
                LengthField {
                    at: 3,
                    width: 1,
                    len: 2
                }
            ]
        );
        let mut out = bytes.to_vec();
        inflate(&mut out, &fields, 1, Inflate::Huge(1));
        assert_eq!(&out[..3], &[0x0a, 0x04, 0x12]);
        assert_eq!(read_varint(&out, 3), Some((1 << 32, 8)));
        let mut out = bytes.to_vec();
        inflate(&mut out, &fields, 0, Inflate::Overlong);
        assert_eq!(out.len(), bytes.len() + 9);
        assert_eq!(read_varint(&out, 1), Some((4, 11)));
    }

    #[test]
    fn the_allocation_peak_is_measured() {
        let (v, peak) = peak_heap(|| vec![1u8; 1 << 20]);
        assert!(peak >= 1 << 20 && v.len() == 1 << 20, "{peak}");
        // Another thread's 8 MiB, allocated and freed while `f` runs, is not `f`'s (nor
        // are the frees of the tests running beside this one).
        let (v, peak) = peak_heap(|| {
            std::thread::spawn(|| vec![2u8; 8 << 20].len())
                .join()
                .unwrap();
            vec![1u8; 1 << 20]
        });
        assert!(
            (1 << 20..2 << 20).contains(&peak) && v.len() == 1 << 20,
            "{peak}"
        );
    }

    #[test]
    fn mutations_stay_in_bounds() {
        let mut empty = Vec::new();
        for m in [
            Mutation::Flip { at: 5, bit: 9 },
            Mutation::Delete { at: 3, len: 10 },
            Mutation::Duplicate {
                from: 1,
                len: 4,
                to: 9,
            },
            Mutation::Truncate { at: 7 },
        ] {
            mutate(&mut empty, &m);
        }
        assert!(empty.is_empty());
        let mut bytes = b"abc".to_vec();
        mutate(
            &mut bytes,
            &Mutation::Duplicate {
                from: 1,
                len: 100,
                to: 3,
            },
        );
        assert_eq!(bytes, b"abcbc");
    }
}
