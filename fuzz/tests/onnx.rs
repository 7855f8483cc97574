//! Fuzz target `onnx`: the native engine's ONNX parsing and compilation
//! (`manymodels_native::Model::compile`), and running what compiles.
//!
//! Complementary to `native/tests/hostile.rs`, which feeds the top-level
//! `models/corpus/*.onnx` files' truncations and 6,000 single-byte changes: this target
//! mutates a different corpus (the demo models and the operator models of
//! `models/corpus/ops`, plus a few exported ones) with structural changes hostile.rs does
//! not make: protobuf length fields rewritten (off by one, doubled, 2^31-1/2^32/2^62,
//! zero, overlong varints), deletions, insertions and repeated chunks; it checks the
//! allocation peak against the file size, and runs compiled models on hostile rows (no
//! rows, wrong widths, NaN and infinities).

use std::sync::atomic::{AtomicUsize, Ordering};

use manymodels_fuzz::proptest::prelude::*;
use manymodels_fuzz::{
    Inflate, LengthField, Mutation, generate, inflate, inflation, length_fields, mutate, mutation,
    peak_heap, replay,
};
use manymodels_native::{CompileError, Data, Elem, Model, Tensor};

/// What compiling a file may allocate at its peak: generous for the structs of a tiny
/// model, proportional for a big one (a load peaks at about 1.7x the file on the general
/// path). A mutant that asks for more trusted a declared length.
fn heap_limit(file: usize) -> usize {
    8 * file + (4 << 20)
}

/// Rows to run a compiled model on.
#[derive(Clone, Copy, Debug)]
struct Rows {
    n: usize,
    /// Added to the declared width: 0 is right, anything else must be a run error.
    width_delta: i8,
    fill: f64,
}

fn rows() -> impl Strategy<Value = Rows> {
    (
        0usize..4,
        prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
        prop_oneof![
            Just(0.5),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(1e30),
            Just(f64::MAX),
        ],
    )
        .prop_map(|(n, width_delta, fill)| Rows {
            n,
            width_delta,
            fill,
        })
}

fn tensor(elem: Elem, shape: Vec<usize>, fill: f64) -> Tensor {
    let n = shape.iter().product();
    let data = match elem {
        Elem::F32 => Data::F32(vec![fill as f32; n]),
        Elem::F64 => Data::F64(vec![fill; n]),
        Elem::I64 => Data::I64(vec![fill as i64; n]),
        Elem::I32 => Data::I32(vec![fill as i32; n]),
        Elem::Bool => Data::Bool(vec![fill != 0.0; n]),
        Elem::Str => Data::Str(vec![fill.to_string(); n]),
    };
    Tensor { shape, data }
}

/// Compiles `bytes`; returns an error if the property fails.
fn check(bytes: &[u8], rows: Rows) -> Result<(), String> {
    CHECKED.fetch_add(1, Ordering::Relaxed);
    let (compiled, peak) = peak_heap(|| Model::compile(bytes));
    if peak > heap_limit(bytes.len()) {
        return Err(format!(
            "compiling a {}-byte file peaked at {peak} heap bytes",
            bytes.len()
        ));
    }
    let model = match compiled {
        Ok(model) => {
            COMPILED.fetch_add(1, Ordering::Relaxed);
            model
        }
        Err(CompileError::Invalid(why) | CompileError::Unsupported(why)) if !why.is_empty() => {
            return Ok(());
        }
        Err(e) => return Err(format!("an error without a reason: {e:?}")),
    };
    let inputs: Vec<Tensor> = model
        .inputs()
        .iter()
        .map(|port| {
            let mut shape: Vec<usize> = port
                .shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(rows.n).min(64))
                .collect();
            if let Some(first) = shape.first_mut() {
                *first = rows.n;
            }
            if let Some(last) = shape.last_mut().filter(|_| port.shape.len() > 1) {
                *last = last.saturating_add_signed(isize::from(rows.width_delta));
            }
            tensor(port.elem, shape, rows.fill)
        })
        .collect();
    let (outputs, peak) = peak_heap(|| model.run(inputs));
    if peak > heap_limit(bytes.len()) + (1 << 20) {
        return Err(format!(
            "running on {} rows peaked at {peak} heap bytes",
            rows.n
        ));
    }
    if let Err(e) = outputs
        && e.0.is_empty()
    {
        return Err("a run error without a reason".into());
    }
    Ok(())
}

static CHECKED: AtomicUsize = AtomicUsize::new(0);
static COMPILED: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Debug)]
struct Mutant {
    file: usize,
    inflate: Option<(usize, Inflate)>,
    mutations: Vec<Mutation>,
    rows: Rows,
}

#[test]
fn onnx() {
    let files = replay("onnx", |name, bytes| {
        for rows in [
            Rows {
                n: 3,
                width_delta: 0,
                fill: 0.5,
            },
            Rows {
                n: 0,
                width_delta: 1,
                fill: f64::NAN,
            },
        ] {
            check(bytes, rows)?;
        }
        // The real models of the corpus compile or are refused as uncovered; the cut and
        // hostile ones (named so) need only keep the property.
        if !name.starts_with("cut-")
            && !name.starts_with("hostile-")
            && let Err(CompileError::Invalid(why)) = Model::compile(bytes)
        {
            return Err(format!("a real model is invalid: {why}"));
        }
        Ok(())
    });
    let corpus: Vec<(Vec<u8>, Vec<LengthField>)> = manymodels_fuzz::corpus("onnx")
        .into_iter()
        .map(|(_, bytes)| {
            let fields = length_fields(&bytes);
            (bytes, fields)
        })
        .collect();
    println!("fuzz onnx: {files} corpus files replayed");
    let strategy = (
        0..corpus.len(),
        prop::option::weighted(0.5, inflation()),
        prop::collection::vec(mutation(), 0..4),
        rows(),
    )
        .prop_map(|(file, inflate, mutations, rows)| Mutant {
            file,
            inflate,
            mutations,
            rows,
        });
    generate("onnx", 20_000, strategy, |mutant| {
        let (original, fields) = &corpus[mutant.file];
        let mut bytes = original.clone();
        if let Some((which, how)) = mutant.inflate {
            inflate(&mut bytes, fields, which, how);
        }
        for m in &mutant.mutations {
            mutate(&mut bytes, m);
        }
        check(&bytes, mutant.rows)
    });
    let (checked, compiled) = (
        CHECKED.load(Ordering::Relaxed),
        COMPILED.load(Ordering::Relaxed),
    );
    println!("fuzz onnx: {compiled} of {checked} inputs compiled and ran");
    // Most mutants of real models still compile: the run path was exercised too.
    assert!(
        compiled * 20 > checked,
        "only {compiled} of {checked} compiled"
    );
}
