//! Model files are untrusted input. Malformed, truncated, mutated and deliberately hostile
//! files must give an error (never a panic, a hang or an allocation out of proportion to
//! the file), and a compiled model must never panic when it runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manymodels_native::{CompileError, Data, Elem, Model, Tensor};

// ---------------------------------------------------------------------------------------
// A tiny ONNX writer for hand-made models
// ---------------------------------------------------------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn int(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, v as u64);
}

enum A<'a> {
    I(i64),
    S(&'a str),
    Ints(&'a [i64]),
    Floats(&'a [f32]),
    Strs(&'a [&'a str]),
}

fn attribute(name: &str, value: A<'_>) -> Vec<u8> {
    let mut a = Vec::new();
    bytes(&mut a, 1, name.as_bytes());
    match value {
        A::I(v) => {
            int(&mut a, 3, v);
            int(&mut a, 20, 2);
        }
        A::S(s) => {
            bytes(&mut a, 4, s.as_bytes());
            int(&mut a, 20, 3);
        }
        A::Ints(v) => {
            let mut p = Vec::new();
            v.iter().for_each(|&x| varint(&mut p, x as u64));
            bytes(&mut a, 8, &p);
            int(&mut a, 20, 7);
        }
        A::Floats(v) => {
            let p: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
            bytes(&mut a, 7, &p);
            int(&mut a, 20, 6);
        }
        A::Strs(v) => {
            v.iter().for_each(|s| bytes(&mut a, 9, s.as_bytes()));
            int(&mut a, 20, 8);
        }
    }
    a
}

fn value_info(name: &str, dims: &[i64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        if d >= 0 {
            int(&mut dim, 1, d);
        } else {
            bytes(&mut dim, 2, b"N");
        }
        bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    int(&mut tensor, 1, 1); // FLOAT
    bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes(&mut ty, 1, &tensor);
    let mut vi = Vec::new();
    bytes(&mut vi, 1, name.as_bytes());
    bytes(&mut vi, 2, &ty);
    vi
}

/// A one-node model `X [N, features] -> op -> Y`.
fn model(op: &str, domain: &str, attrs: Vec<Vec<u8>>, features: i64, out_width: i64) -> Vec<u8> {
    let mut node = Vec::new();
    bytes(&mut node, 1, b"X");
    bytes(&mut node, 2, b"Y");
    bytes(&mut node, 3, b"n");
    bytes(&mut node, 4, op.as_bytes());
    for a in &attrs {
        bytes(&mut node, 5, a);
    }
    bytes(&mut node, 7, domain.as_bytes());
    let mut graph = Vec::new();
    bytes(&mut graph, 1, &node);
    bytes(&mut graph, 2, b"g");
    bytes(&mut graph, 11, &value_info("X", &[-1, features]));
    bytes(&mut graph, 12, &value_info("Y", &[-1, out_width]));
    let mut m = Vec::new();
    int(&mut m, 1, 8);
    bytes(&mut m, 7, &graph);
    for (domain, version) in [("", 17), ("ai.onnx.ml", 3)] {
        let mut opset = Vec::new();
        bytes(&mut opset, 1, domain.as_bytes());
        int(&mut opset, 2, version);
        bytes(&mut m, 8, &opset);
    }
    m
}

/// A tree-ensemble regressor over explicit node columns.
struct Trees<'a> {
    tree: &'a [i64],
    node: &'a [i64],
    feature: &'a [i64],
    mode: &'a [&'a str],
    value: &'a [f32],
    yes: &'a [i64],
    no: &'a [i64],
    leaves: &'a [(i64, i64, f32)],
    n_targets: i64,
}

fn regressor(t: &Trees<'_>) -> Vec<u8> {
    regressor_with(t, Vec::new())
}

fn regressor_with(t: &Trees<'_>, extra: Vec<Vec<u8>>) -> Vec<u8> {
    let (lt, ln): (Vec<i64>, Vec<i64>) = t.leaves.iter().map(|l| (l.0, l.1)).unzip();
    let lw: Vec<f32> = t.leaves.iter().map(|l| l.2).collect();
    let zeros = vec![0i64; t.leaves.len()];
    let mut attrs = vec![
        attribute("n_targets", A::I(t.n_targets)),
        attribute("nodes_treeids", A::Ints(t.tree)),
        attribute("nodes_nodeids", A::Ints(t.node)),
        attribute("nodes_featureids", A::Ints(t.feature)),
        attribute("nodes_modes", A::Strs(t.mode)),
        attribute("nodes_values", A::Floats(t.value)),
        attribute("nodes_truenodeids", A::Ints(t.yes)),
        attribute("nodes_falsenodeids", A::Ints(t.no)),
        attribute("target_treeids", A::Ints(&lt)),
        attribute("target_nodeids", A::Ints(&ln)),
        attribute("target_ids", A::Ints(&zeros)),
        attribute("target_weights", A::Floats(&lw)),
        attribute("post_transform", A::S("NONE")),
    ];
    attrs.extend(extra);
    model("TreeEnsembleRegressor", "ai.onnx.ml", attrs, 2, 1)
}

fn stump() -> Trees<'static> {
    Trees {
        tree: &[0, 0, 0],
        node: &[0, 1, 2],
        feature: &[1, 0, 0],
        mode: &["BRANCH_LEQ", "LEAF", "LEAF"],
        value: &[0.5, 0.0, 0.0],
        yes: &[1, 0, 0],
        no: &[2, 0, 0],
        leaves: &[(0, 1, 10.0), (0, 2, -3.0)],
        n_targets: 1,
    }
}

fn floats(n: usize, width: usize) -> Vec<f32> {
    (0..n * width)
        .map(|i| [0.25f32, 0.75, f32::NAN, -1e30, 0.5][i % 5])
        .collect()
}

fn rows(n: usize, width: usize) -> Tensor {
    Tensor {
        shape: vec![n, width],
        data: Data::F32(floats(n, width)),
    }
}

fn invalid(bytes: &[u8]) -> String {
    match Model::compile(bytes) {
        Err(CompileError::Invalid(message)) => message,
        other => panic!("expected an invalid-model error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Hand-made models
// ---------------------------------------------------------------------------------------

#[test]
fn a_well_formed_stump_compiles_and_predicts() {
    let model = Model::compile(&regressor(&stump())).expect("compiles");
    let out = model
        .run(vec![Tensor {
            shape: vec![2, 2],
            data: Data::F32(vec![0.0, 0.75, 0.0, 0.25]),
        }])
        .unwrap();
    // Row 0: x1 = 0.75 > 0.5 -> false leaf (-3). Row 1: x1 = 0.25 <= 0.5 -> true leaf (10).
    assert_eq!(out[0].data, Data::F32(vec![-3.0, 10.0]));
    assert_eq!(out[0].shape, vec![2, 1]);
}

#[test]
fn a_cycle_or_a_shared_false_child_is_refused() {
    // Node 1's false child is node 2, already placed as node 0's false subtree... no:
    // node 0's false child is 1 and its true child 2; node 1's true child is node 0.
    let t = Trees {
        tree: &[0, 0, 0, 0],
        node: &[0, 1, 2, 3],
        feature: &[0, 0, 0, 0],
        mode: &["BRANCH_LEQ", "BRANCH_LEQ", "LEAF", "LEAF"],
        value: &[0.5; 4],
        yes: &[2, 0, 0, 0],
        no: &[1, 3, 0, 0],
        leaves: &[(0, 2, 1.0), (0, 3, 2.0)],
        n_targets: 1,
    };
    assert!(invalid(&regressor(&t)).contains("cycle"));
    // Both splits send their false branch to leaf 2.
    let t = Trees {
        tree: &[0, 0, 0],
        node: &[0, 1, 2],
        feature: &[0, 0, 0],
        mode: &["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"],
        value: &[0.5, 0.5, 0.0],
        yes: &[1, 2, 0],
        no: &[2, 2, 0],
        leaves: &[(0, 2, 1.0)],
        n_targets: 1,
    };
    assert!(invalid(&regressor(&t)).contains("shared"));
}

#[test]
fn a_node_pointing_to_itself_or_nowhere_is_refused() {
    let mut t = stump();
    t.yes = &[0, 0, 0];
    assert!(invalid(&regressor(&t)).contains("itself"));
    let mut t = stump();
    t.no = &[7, 0, 0];
    assert!(invalid(&regressor(&t)).contains("does not exist"));
}

#[test]
fn mismatched_columns_and_bad_modes_are_refused() {
    let mut t = stump();
    t.feature = &[1, 0];
    assert!(invalid(&regressor(&t)).contains("nodes_featureids"));
    let mut t = stump();
    t.mode = &["BRANCH_SOMETIMES", "LEAF", "LEAF"];
    assert!(invalid(&regressor(&t)).contains("mode"));
    let mut t = stump();
    t.n_targets = 1 << 40;
    assert!(invalid(&regressor(&t)).contains("n_targets"));
    let mut t = stump();
    t.leaves = &[(0, 1, 1.0), (0, 9, 1.0)];
    assert!(invalid(&regressor(&t)).contains("does not exist"));
}

#[test]
fn a_feature_past_the_input_is_a_run_error_not_a_panic() {
    let mut t = stump();
    t.feature = &[100_000, 0, 0];
    let model = Model::compile(&regressor(&t)).expect("compiles: ONNX Runtime checks at run time");
    let error = model.run(vec![rows(1, 2)]).unwrap_err();
    assert!(error.0.contains("feature"), "{error}");
    // Past the packed layout's 28 bits: ONNX Runtime's to judge.
    t.feature = &[4_000_000_000, 0, 0];
    assert!(matches!(
        Model::compile(&regressor(&t)),
        Err(CompileError::Unsupported(_))
    ));
}

#[test]
fn a_million_deep_tree_compiles_without_recursion() {
    // A chain: split i sends x < -i to leaf depth + i, everything else to split i + 1; the
    // last split's false child is the last leaf.
    let depth = 1_000_000usize;
    let n = 2 * depth + 1;
    let (mut node, mut feature, mut mode, mut value, mut yes, mut no) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut leaves = Vec::new();
    for i in 0..depth {
        node.push(i as i64);
        feature.push(0);
        mode.push("BRANCH_LT");
        value.push(-(i as f32));
        yes.push((depth + 1 + i) as i64);
        no.push((i + 1) as i64);
    }
    for i in depth..n {
        node.push(i as i64);
        feature.push(0);
        mode.push("LEAF");
        value.push(0.0);
        yes.push(0);
        no.push(0);
        leaves.push((0, i as i64, i as f32));
    }
    let tree = vec![0i64; n];
    let bytes = regressor(&Trees {
        tree: &tree,
        node: &node,
        feature: &feature,
        mode: &mode,
        value: &value,
        yes: &yes,
        no: &no,
        leaves: &leaves,
        n_targets: 1,
    });
    let started = Instant::now();
    let model = Model::compile(&bytes).expect("a deep tree is valid");
    let out = model
        .run(vec![Tensor {
            shape: vec![1, 2],
            data: Data::F32(vec![1.0, 0.0]),
        }])
        .unwrap();
    // x = 1 is never < -i: the walk takes every false branch to leaf `depth`.
    assert_eq!(out[0].data, Data::F32(vec![depth as f32]));
    assert!(started.elapsed() < Duration::from_secs(60));
    // The compact form stays well under the file.
    assert!(
        model.heap_bytes() < bytes.len(),
        "{} vs {}",
        model.heap_bytes(),
        bytes.len()
    );
}

#[test]
fn lengths_past_the_end_and_garbage_are_invalid_not_allocations() {
    assert!(Model::compile(&[]).is_err());
    assert!(Model::compile(b"not an onnx file at all").is_err());
    // ModelProto.graph with a declared length of 2^60 bytes.
    let mut m = Vec::new();
    key(&mut m, 7, 2);
    varint(&mut m, 1 << 60);
    m.extend_from_slice(&[0; 16]);
    assert!(matches!(Model::compile(&m), Err(CompileError::Invalid(_))));
}

#[test]
fn uncovered_operators_are_unsupported_not_invalid() {
    let bytes = model("SVMRegressor", "ai.onnx.ml", vec![], 2, 1);
    assert!(matches!(
        Model::compile(&bytes),
        Err(CompileError::Unsupported(_))
    ));
    let bytes = model("Exp", "", vec![], 2, 2);
    assert!(matches!(
        Model::compile(&bytes),
        Err(CompileError::Unsupported(_))
    ));
    // A covered operator with an attribute the engine does not know: a newer operator
    // version, perhaps; ONNX Runtime decides.
    let bytes = regressor_with(&stump(), vec![attribute("shiny_new_option", A::I(1))]);
    assert!(matches!(
        Model::compile(&bytes),
        Err(CompileError::Unsupported(_))
    ));
    assert!(Model::compile(&regressor(&stump())).is_ok());
}

// ---------------------------------------------------------------------------------------
// Truncated and mutated real models
// ---------------------------------------------------------------------------------------

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(p).unwrap())
        })
        .collect()
}

/// Compiles `bytes`; if that works, runs three rows of each declared width.
fn exercise(bytes: &[u8]) {
    if let Ok(model) = Model::compile(bytes) {
        let inputs: Vec<Tensor> = model
            .inputs()
            .iter()
            .map(|p| {
                let width = p
                    .shape
                    .get(1)
                    .copied()
                    .filter(|&d| d > 0)
                    .unwrap_or(3)
                    .min(64) as usize;
                let n = 3 * width;
                let data = match p.elem {
                    Elem::F32 => Data::F32(floats(3, width)),
                    Elem::F64 => Data::F64(vec![0.5; n]),
                    Elem::I64 => Data::I64(vec![1; n]),
                    Elem::I32 => Data::I32(vec![1; n]),
                    Elem::Bool => Data::Bool(vec![true; n]),
                    Elem::Str => Data::Str(vec![String::new(); n]),
                };
                Tensor {
                    shape: vec![3, width],
                    data,
                }
            })
            .collect();
        let _ = model.run(inputs);
    }
}

#[test]
fn every_truncation_of_real_models_is_an_error_or_a_model() {
    for (name, bytes) in corpus().into_iter().step_by(3) {
        let step = (bytes.len() / 150).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            let result = std::panic::catch_unwind(|| exercise(&bytes[..cut]));
            assert!(result.is_ok(), "{name} cut at {cut} panicked");
        }
    }
}

#[test]
fn random_mutations_of_real_models_never_panic() {
    // SplitMix64; 6,000 mutants in all: a bounded loop.
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let files = corpus();
    let started = Instant::now();
    let mut compiled = 0;
    for round in 0..6_000 {
        let (name, original) = &files[round % files.len()];
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes[at] ^= 1 << (next() % 8),
                _ => bytes[at] = [0x00, 0x7f, 0x80, 0xff][(next() % 4) as usize],
            }
        }
        compiled += usize::from(Model::compile(&bytes).is_ok());
        let result = std::panic::catch_unwind(|| exercise(&bytes));
        assert!(result.is_ok(), "{name}: mutant {round} panicked");
    }
    // Most single-byte changes land in weights and thresholds and still compile: the run
    // path was exercised, not just the parser.
    assert!(compiled > 300, "only {compiled} mutants compiled");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}
