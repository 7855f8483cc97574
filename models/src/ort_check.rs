//! Cross-check against real ONNX Runtime, in Python: it needs an interpreter with `onnx`
//! and `onnxruntime`, `MM_PYTHON` if set, else `python3`. `cargo xtask test` (the test
//! command CI runs) installs both into `python3` first (`setup::python_test_deps`, at the
//! versions `models/requirements.txt` pins), so the test runs there; without them it fails
//! and says so rather than skipping. On its own:
//!
//! ```text
//! cargo test -p manymodels-models onnx_runtime_agrees -- --nocapture
//! ```
//!
//! It writes a handful of models (every forest shape, a ~1 MB and a ~5 MB forest) with
//! random rows and this crate's predictions into a temp dir, then runs
//! `check_generated.py`, which loads each model with `onnx.checker` and ONNX Runtime and
//! compares outputs (batched and row by row). Set `MM_ORT_CHECK_KEEP=1` to keep the files.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use crate::forest::Shape;
use crate::rng::Rng;
use crate::{Mix, Spec, build, spec_for};

fn row(rng: &mut Rng, features: usize, nan_rate: f64) -> Vec<f32> {
    (0..features)
        .map(|_| {
            if nan_rate > 0.0 && rng.chance(nan_rate) {
                f32::NAN
            } else {
                rng.signed_f32() * 2.5
            }
        })
        .collect()
}

fn describe(spec: &Spec) -> String {
    match *spec {
        Spec::Linear { .. } => format!("{spec:?}"),
        Spec::Forest { seed, .. } => {
            let s = Shape::from_seed(seed);
            format!(
                "{spec:?} {} prune={:.2} missing_tracks={}",
                if s.average { "AVERAGE" } else { "SUM" },
                s.prune,
                s.missing_tracks
            )
        }
    }
}

fn specs() -> Vec<Spec> {
    let mut specs = vec![
        Spec::Linear {
            features: 1,
            seed: 1,
        },
        Spec::Linear {
            features: 4,
            seed: 2,
        },
        Spec::Linear {
            features: 32,
            seed: 3,
        },
        Spec::Linear {
            features: 13,
            seed: 8,
        },
        Spec::Linear {
            features: 300,
            seed: 4,
        },
        Spec::Linear {
            features: 2500,
            seed: 9,
        }, // more than one MLAS K block
        Spec::Forest {
            features: 3,
            trees: 1,
            depth: 0,
            seed: 5,
        },
        Spec::Forest {
            features: 3,
            trees: 1,
            depth: 1,
            seed: 6,
        },
    ];
    // Small forests covering all 8 shape combinations.
    let mut seen = Vec::new();
    for seed in 100..400u64 {
        let s = Shape::from_seed(seed);
        let key = (s.average, s.prune > 0.0, s.missing_tracks);
        if !seen.contains(&key) {
            seen.push(key);
            specs.push(Spec::Forest {
                features: 12,
                trees: 30,
                depth: 6,
                seed,
            });
        }
    }
    assert_eq!(seen.len(), 8);
    // Many trees (ORT parallelises over trees above ~80) and large leaf sums.
    specs.push(Spec::Forest {
        features: 20,
        trees: 3000,
        depth: 3,
        seed: 7,
    });
    // The realistic tiers: a ~1 MB and a large (~3-6 MB) forest, plus a few small ones.
    let mut want = [
        (512u64 << 10, 2u64 << 20, 1),
        (4_500_000, 6_500_000, 1),
        (0, 512 << 10, 3),
    ];
    for i in 0..100_000 {
        let spec = spec_for(i, Mix::Realistic, 2024);
        if let Spec::Forest { .. } = spec {
            let len = build(&spec).bytes.len() as u64;
            for (lo, hi, left) in &mut want {
                if *left > 0 && (*lo..*hi).contains(&len) {
                    *left -= 1;
                    specs.push(spec);
                    break;
                }
            }
        }
        if want.iter().all(|w| w.2 == 0) {
            break;
        }
    }
    assert!(
        want.iter().all(|w| w.2 == 0),
        "did not find all forest sizes"
    );
    specs
}

/// The interpreter the check runs with, after checking that it has what the script needs.
fn python() -> String {
    let python = std::env::var("MM_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_modules = Command::new(&python)
        .args(["-c", "import numpy, onnx, onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_modules,
        "`{python}` cannot import numpy, onnx and onnxruntime: run the tests with `cargo xtask \
         test`, which installs them, or set MM_PYTHON to an interpreter that has them"
    );
    python
}

#[test]
fn onnx_runtime_agrees() {
    let python = python();
    let dir = std::env::temp_dir().join(format!("manymodels-ort-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(31337);
    let mut json = String::from("[\n");
    for (k, spec) in specs().iter().enumerate() {
        let model = build(spec);
        let file = format!("model-{k:02}.onnx");
        std::fs::write(dir.join(&file), &model.bytes).unwrap();
        let nan_rate = if matches!(spec, Spec::Forest { .. }) {
            0.05
        } else {
            0.0
        };
        let rows: Vec<Vec<f32>> = (0..256)
            .map(|_| row(&mut rng, spec.features(), nan_rate))
            .collect();
        let bits = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_bits().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let rows_json: Vec<String> = rows.iter().map(|r| format!("[{}]", bits(r))).collect();
        let expected: Vec<f32> = rows.iter().map(|r| model.predict(r)).collect();
        let expected_batch = model.predict_batch(&rows.concat());
        let _ = write!(
            json,
            "{}{{\"name\": \"{}\", \"file\": \"{file}\", \"bytes\": {}, \"nodes\": {}, \"rows\": [{}], \"expected\": [{}], \"expected_batch\": [{}]}}",
            if k == 0 { "" } else { ",\n" },
            describe(spec),
            model.bytes.len(),
            model.tree_nodes(),
            rows_json.join(","),
            bits(&expected),
            bits(&expected_batch),
        );
    }
    json.push_str("\n]\n");
    std::fs::write(dir.join("cases.json"), json).unwrap();

    let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "check_generated.py"]
        .iter()
        .collect();
    let output = Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run python");
    if std::env::var_os("MM_ORT_CHECK_KEEP").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "check_generated.py failed:\n{log}");
    println!("{log}");
}
