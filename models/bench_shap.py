#!/usr/bin/env python3
"""What explaining a prediction costs with the reference implementation: one scikit-learn
model per size class of the realistic store (models/make_realistic.py), exported with its
covers, and shap.TreeExplainer's time per row beside the library's own predict.

    python3 models/bench_shap.py --out DIR [--rows 64] [--classes linear,forest_small,...]

Classes (each model is the first of its kind in make_realistic.py's default store, seed 42,
trained by make_realistic.py's own train_linear/train_forest from its spec: same families,
hyperparameters, data and sizes):

    linear          the first linear model (LinearRegression / Ridge / LogisticRegression)
    forest_small    the first mid forest (RandomForest, unlimited depth) under 300 KB
    forest_medium   the first mid forest of 1 - 3 MB
    forest_heavy    the smallest heavy forest (5 - 32 MB) among the first 200 models

Writes, per class: DIR/<class>.onnx (make_realistic.py's export, covers in nodes_hitrates),
DIR/<class>.rows.json (the rows timed: [[float32 values]], drawn like the model's training
data with another seed), and DIR/shap_times.json:

    {class: {"file", "id" (the store's model id), "family", "bytes", "rows", "features",
             "trees", "nodes" (null for linear), "shap_seconds_per_row", "shap_batch_seconds_per_row",
             "shap_explainer_seconds", "predict_seconds_per_row", "predict_batch_seconds_per_row",
             "shap_version", "sklearn_version"}}

Timing, on one thread (OMP/OpenBLAS/MKL/NUMBA threads = 1, set before the imports), best of 3:
- shap_seconds_per_row: TreeExplainer(model, feature_perturbation="tree_path_dependent")
  .shap_values(x) called on each row alone (one request's row), total / rows;
- shap_batch_seconds_per_row: shap_values(X) on all rows at once, / rows;
- shap_explainer_seconds: building the TreeExplainer (once per model; not in the above);
- predict_seconds_per_row / predict_batch_seconds_per_row: the library's predict, the same two
  ways (predict_proba for classifiers).
Linear classes have no TreeExplainer: their shap fields are null.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_realistic as realistic  # noqa: E402

warnings.filterwarnings("ignore")

SEED = 42  # make_realistic.py's default store
CLASSES = ("linear", "forest_small", "forest_medium", "forest_heavy")
REPEATS = 3


def pick_spec(cls: str) -> dict:
    """The store's model standing for a class (see the module docstring)."""
    if cls == "forest_heavy":
        heavy = [realistic.spec_for(i, SEED) for i in range(200)]
        heavy = [s for s in heavy if s["tier"] == "heavy"]
        return min(heavy, key=lambda s: s["target_bytes"])
    for i in range(10_000):
        s = realistic.spec_for(i, SEED)
        if cls == "linear" and s["tier"] == "linear":
            return s
        if cls == "forest_small" and s["tier"] == "mid" and s["target_bytes"] < 300e3:
            return s
        if cls == "forest_medium" and s["tier"] == "mid" and 1e6 <= s["target_bytes"] <= 3e6:
            return s
    raise SystemExit(f"no model of class {cls} in the first 10,000 of seed {SEED}")


def best_of(fn, repeats=REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(cls: str, out: Path, n_rows: int) -> dict:
    import sklearn

    spec = pick_spec(cls)
    t0 = time.perf_counter()
    if spec["tier"] == "linear":
        model, _, _ = realistic.train_linear(spec)
    else:
        model, _, _ = realistic.train_forest(spec, spec["target_bytes"])
    train_s = time.perf_counter() - t0
    data = realistic.to_onnx(model, spec)
    (out / f"{cls}.onnx").write_bytes(data)
    # Rows like the training data's, from another draw.
    X, _ = realistic.make_data(dict(spec, data_seed=spec["data_seed"] + 1), max(n_rows, 200))
    X = np.ascontiguousarray(X[:n_rows], dtype=np.float32)
    (out / f"{cls}.rows.json").write_text(json.dumps([[float(v) for v in row] for row in X]) + "\n")

    predict = model.predict_proba if spec["task"] == "classification" else model.predict
    predict(X[:1])  # warm
    pred_row = best_of(lambda: [predict(X[r:r + 1]) for r in range(len(X))]) / len(X)
    pred_batch = best_of(lambda: predict(X)) / len(X)

    rec = {"file": f"{cls}.onnx", "id": spec["id"], "family": spec["family"], "bytes": len(data),
           "rows": len(X), "features": spec["features"], "trees": None, "nodes": None,
           "shap_seconds_per_row": None, "shap_batch_seconds_per_row": None, "shap_explainer_seconds": None,
           "predict_seconds_per_row": pred_row, "predict_batch_seconds_per_row": pred_batch,
           "shap_version": None, "sklearn_version": sklearn.__version__, "train_seconds": train_s}
    if hasattr(model, "estimators_"):
        import shap

        rec["trees"] = len(model.estimators_)
        rec["nodes"] = int(sum(e.tree_.node_count for e in model.estimators_))
        rec["shap_version"] = shap.__version__
        t0 = time.perf_counter()
        explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        rec["shap_explainer_seconds"] = time.perf_counter() - t0
        explainer.shap_values(X[:1], check_additivity=False)  # warm (numba, caches)
        rec["shap_seconds_per_row"] = best_of(
            lambda: [explainer.shap_values(X[r:r + 1], check_additivity=False) for r in range(len(X))]) / len(X)
        rec["shap_batch_seconds_per_row"] = best_of(
            lambda: explainer.shap_values(X, check_additivity=False)) / len(X)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated, of {', '.join(CLASSES)}")
    args = ap.parse_args()
    classes = [c for c in args.classes.split(",") if c]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        ap.error(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    times = {}
    for cls in classes:
        rec = bench(cls, args.out, args.rows)
        times[cls] = rec
        shap_ms = "-" if rec["shap_seconds_per_row"] is None else f"{rec['shap_seconds_per_row'] * 1e3:.3f} ms"
        print(f"{cls:<14} {rec['id']} {rec['family']:<26} {rec['bytes']:>10} B  trees {rec['trees']}  "
              f"nodes {rec['nodes']}  shap/row {shap_ms}  predict/row {rec['predict_seconds_per_row'] * 1e3:.3f} ms "
              f"(trained in {rec['train_seconds']:.1f} s)", flush=True)
    (args.out / "shap_times.json").write_text(json.dumps(times, indent=1) + "\n")
    print(f"wrote {args.out / 'shap_times.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
