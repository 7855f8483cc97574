//! `models/convert/convert.py` end to end: one model of each family (a scikit-learn
//! regressor and classifier, LightGBM, XGBoost), trained, saved the library's own way and
//! converted into a fresh store by `tests/convert_check.py`, then scored through a real
//! `mm-scorer` behind `mm-proxy` and compared with the library's own predictions
//! (rtol 1e-4, atol 1e-5; labels exact). The script also checks the refusals: corrupt and
//! unsupported files exit 1 and write nothing, `--dir` converts the good files and reports
//! the bad ones, and a scikit-learn HistGradientBoosting regressor whose float64 split
//! threshold (1e8 + 60) becomes 1e8 + 64 in float32 sends a training row down the other
//! branch in ONNX (0 where the library says 1): refused, the mismatch and its row named,
//! nothing written. `converted_tree_models_carry_the_library_covers`: the node covers it
//! writes into `nodes_hitrates` (for TreeSHAP) are the library's.

use std::path::Path;
use std::process::Command;

use manymodels_tests::process::Pool;
use manymodels_tests::{TempDir, root};

fn convert_check(store: &Path, extra: &[&str]) {
    let output = Command::new("python3")
        .arg(root().join("tests/convert_check.py"))
        .arg(store)
        .args(extra)
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "tests/convert_check.py {extra:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn converted_models_of_every_family_score_like_their_library() {
    let work = TempDir::new("convert");
    let store = work.path().join("store");
    convert_check(&store, &[]);
    let pool = Pool::local(&store, 1, &[], &[]);
    let host = pool.proxy.url.trim_start_matches("http://").to_string();
    convert_check(&store, &["--check", &host]);
}

/// What `convert.py` writes into `nodes_hitrates` (each tree node's training cover, for
/// TreeSHAP): for a random forest, exactly the library's `tree_.weighted_n_node_samples`
/// of node `nodes_nodeids[i]` of estimator `nodes_treeids[i]`; for LightGBM and XGBoost,
/// whose converters renumber the nodes, each tree's leaf covers are the library's
/// (`dump_model()` leaf counts; the dump's `cover=`) and every split's cover is its
/// children's sum. Converted into a fresh store with the recipe's command line.
const COVERS_CHECK: &str = r#"
import json, re, subprocess, sys
from pathlib import Path
import joblib, numpy as np, onnx
from onnx import helper
import lightgbm, xgboost
from sklearn.datasets import make_regression
from sklearn.ensemble import RandomForestRegressor

root, work = Path(sys.argv[1]), Path(sys.argv[2])
X, y = make_regression(n_samples=300, n_features=5, random_state=3)
X = X.astype(np.float32)
models = {
    "forest": RandomForestRegressor(n_estimators=4, max_depth=6, random_state=3, n_jobs=1).fit(X, y),
    "lgbm": lightgbm.LGBMRegressor(n_estimators=4, num_leaves=8, verbose=-1, n_jobs=1).fit(X, y),
    "xgb": xgboost.XGBRegressor(n_estimators=4, max_depth=3, n_jobs=1).fit(X, y),
}
for name, model in models.items():
    src = work / f"{name}.joblib"
    joblib.dump(model, src)
    done = subprocess.run([sys.executable, str(root / "models/convert/convert.py"), "--store", str(work / "store"),
                           "--id", name, str(src)], capture_output=True, text=True)
    assert done.returncode == 0 and "covers from" in done.stdout, (name, done.stdout, done.stderr)
    onx = onnx.load(str(work / "store" / name / "1" / "model.onnx"))
    (node,) = [n for n in onx.graph.node if n.op_type.startswith("TreeEnsemble")]
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    trees, ids, hit = a["nodes_treeids"], a["nodes_nodeids"], np.asarray(a["nodes_hitrates"])
    modes = [m.decode() for m in a["nodes_modes"]]
    assert len(hit) == len(ids), (name, len(hit), len(ids))
    at = {(t, i): p for p, (t, i) in enumerate(zip(trees, ids))}
    for p in range(len(ids)):
        if modes[p] != "LEAF":
            kids = hit[at[(trees[p], a["nodes_truenodeids"][p])]] + hit[at[(trees[p], a["nodes_falsenodeids"][p])]]
            assert abs(kids - hit[p]) <= 1e-4 * hit[p], (name, p, kids, hit[p])
    if name == "forest":
        want = [model.estimators_[t].tree_.weighted_n_node_samples[i] for t, i in zip(trees, ids)]
        assert np.array_equal(hit, np.asarray(want, dtype=np.float32)), name
        print(f"{name}: {len(ids)} nodes, covers = weighted_n_node_samples")
        continue
    if name == "lgbm":
        def leaves(n):
            return [n["leaf_count"]] if "leaf_value" in n else leaves(n["left_child"]) + leaves(n["right_child"])
        lib = [sorted(leaves(t["tree_structure"])) for t in model.booster_.dump_model()["tree_info"]]
    else:
        lib = [sorted(float(c) for c in re.findall(r"leaf=[^,]+,cover=([0-9.e+-]+)", d))
               for d in model.get_booster().get_dump(with_stats=True)]
    got = [sorted(float(h) for h, t, m in zip(hit, trees, modes) if t == k and m == "LEAF") for k in range(len(lib))]
    assert np.allclose(np.asarray(sum(got, [])), np.asarray(sum(lib, []), dtype=np.float32), rtol=1e-6), name
    print(f"{name}: {len(ids)} nodes, covers as the library's")
print("covers ok")
"#;

#[test]
fn converted_tree_models_carry_the_library_covers() {
    let work = TempDir::new("convert-covers");
    let output = Command::new("python3")
        .arg("-c")
        .arg(COVERS_CHECK)
        .arg(root())
        .arg(work.path())
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "the covers check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
}
