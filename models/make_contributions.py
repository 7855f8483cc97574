#!/usr/bin/env python3
"""Reference feature contributions (TreeSHAP, linear) for the corpus models, from the
libraries' own implementations, for the native engine's explanation tests.

    python3 models/make_contributions.py [--out models/corpus/contributions] [--only NAME,...]

Writes models/corpus/contributions/<name>.json for every tree and linear model of the corpus
(models/corpus/manifest.json) that has a reference, index.json (every model: its reference
and family, or why it has none) and README.md (the same, for people). Deterministic: two runs
write the same bytes. Takes well under a minute (numba compiles shap's kernels once).

The models are re-trained exactly as models/make_corpus.py trains them (its builders and
seeds), re-exported, and each export must be byte-identical to the committed
models/corpus/<name>.onnx, so the references explain the very files the engine loads.

References:
- scikit-learn forests, extra trees, GradientBoosting, HistGradientBoosting:
  shap.TreeExplainer(model, feature_perturbation="tree_path_dependent", model_output="raw")
  (a GradientBoosting model TreeExplainer refuses, multiclass or init='zero', is explained
  per estimators_ column with TreeExplainer over those trees passed as shap's dict model,
  the init's raw prediction as base offset: same algorithm, the library's trees, values and
  weighted_n_node_samples);
- XGBoost: Booster.predict(DMatrix(rows), pred_contribs=True) (last column: the bias);
- LightGBM: Booster.predict(rows, pred_contrib=True) (last column of each class: the bias);
- linear models (an ai.onnx.ml LinearRegressor/LinearClassifier): coef_[k][i] * x[i] with
  expected value intercept_[k] (zero baseline: the engine's definition).

Each reference output (one per class or target the library explains) is matched to the
ONNX ensemble target k (class_ids/target_ids) and sign s with s * raw_k(x) equal to the
reference's raw score (expected value + sum of contributions) within 1e-4 relative
(|a - b| <= 1e-4 * max(1, |b|)), where raw_k is computed here from the ONNX file's own
attributes by a small numpy evaluator: the sum over trees of the reached leaf's weights for
k (divided by the tree count for AVERAGE) plus base_values[k] (base_values[0] for a
single-target ensemble), honouring BRANCH_LEQ/LT/GTE/GT/EQ/NEQ, the true/false children and
nodes_missing_value_tracks_true for NaN. The preferred match is k = the output's index with
s = 1; an output that matches no target (a random forest's class 0 probability when the file
scores class 1 only) is left out and listed. A model where no output matches (an exporter not
faithful to its library) is skipped, with the reason.

A second check, on the covers the file carries: path-dependent TreeSHAP (Lundberg et al.
2018, Algorithm 2) computed here in plain Python over the ONNX trees and their nodes_hitrates
must give the reference contributions and expected values (|diff| <= 1e-4 * max(1, |raw|));
for linear models the ONNX coefficients must be s * coef_ (float32). A model failing it is
skipped and listed.

Rows: 16 per model, standard normal values rounded to float32 (the corpus' ordinary rows;
categorical codes 0-4 in the categorical columns, integers for an INT64 input), the references
computed on those float32 values. Where the manifest's source_max_abs_diff_nan <= 1e-4 (the
export routes NaN as the library does), 4 of the 16 rows have NaN values (written as null).

JSON per model:
    {"model": name, "file": "<name>.onnx", "family": manifest family,
     "reference": "shap.TreeExplainer 0.51.0" | "xgboost pred_contribs 3.1.2" |
                  "lightgbm pred_contrib 4.7.0" | "sklearn coef_",
     "rows": [[float or null, ...], ...],
     "outputs": [{"target": k, "sign": 1 or -1, "expected_value": float,
                  "contributions": [[per feature] per row], "raw": [per row]}]}
contributions and raw are the reference's (float64); sign * (raw_k of the ONNX file) ~ raw.

shap needs numba: shap 0.51.0 with numba 0.68.1 / llvmlite 0.50.0 works with numpy 2.4.6 on
Python 3.11 (models/requirements.txt), so no separate environment is needed.
"""

from __future__ import annotations

import os

# Before numpy: the linear fits must reproduce the committed files (see make_corpus.py), and
# one thread everywhere keeps the libraries' sums in one order.
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_corpus  # noqa: E402
from convert import onnx_tree_columns, tree_ensemble_nodes  # noqa: E402  (models/convert, on the path via make_corpus)

warnings.filterwarnings("ignore")

N_ROWS = 16
N_NAN_ROWS = 4
NAN_OK = 1e-4  # largest manifest source_max_abs_diff_nan for which NaN rows are used
RTOL = 1e-4
ROW_SEED = 20261207

LINEAR_OPS = ("LinearRegressor", "LinearClassifier")


class Skip(Exception):
    """The model gets no reference file; the message says why."""


# --------------------------------------------------------------------------
# The ONNX file: tree ensemble and linear evaluators
# --------------------------------------------------------------------------


def attrs_of(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.name.endswith("_as_tensor"):
            out[a.name[: -len("_as_tensor")]] = numpy_helper.to_array(a.t).ravel().tolist()
        else:
            out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class OnnxTrees:
    """A TreeEnsembleRegressor/Classifier of the file, as plain arrays: raw scores per target
    and path-dependent TreeSHAP over its nodes_hitrates."""

    def __init__(self, node):
        a = attrs_of(node)
        self.cols = onnx_tree_columns(node)
        c = self.cols
        clf = node.op_type == "TreeEnsembleClassifier"
        prefix = "class" if clf else "target"
        self.w_tree = np.asarray(a[f"{prefix}_treeids"], dtype=np.int64)
        self.w_node = np.asarray(a[f"{prefix}_nodeids"], dtype=np.int64)
        self.w_id = np.asarray(a[f"{prefix}_ids"], dtype=np.int64)
        self.w_val = np.asarray(a[f"{prefix}_weights"], dtype=np.float64)
        self.aggregate = a.get("aggregate_function", "SUM")
        self.base = [float(v) for v in a.get("base_values", [])]
        self.n_targets = int(self.w_id.max()) + 1 if len(self.w_id) else 1
        self.position = {(int(t), int(i)): p for p, (t, i) in enumerate(zip(c["treeids"], c["nodeids"]))}
        self.trees = sorted(set(int(t) for t in c["treeids"]))
        hit = a.get("nodes_hitrates")
        self.covers = None if hit is None else np.asarray(hit, dtype=np.float64)
        # leaf weights by node position: {position: {target: weight}}
        self.leaf = {}
        for t, i, k, v in zip(self.w_tree, self.w_node, self.w_id, self.w_val):
            p = self.position[(int(t), int(i))]
            d = self.leaf.setdefault(p, {})
            d[int(k)] = d.get(int(k), 0.0) + float(v)
        self.scale = 1.0 / len(self.trees) if self.aggregate == "AVERAGE" else 1.0
        roots = {}
        for t in self.trees:
            members = np.flatnonzero(c["treeids"] == t)
            split = members[c["modes"][members] != "LEAF"]
            kids = set(c["true"][split].tolist()) | set(c["false"][split].tolist())
            rs = [p for p in members if int(c["nodeids"][p]) not in kids]
            assert len(rs) == 1, (t, len(rs))
            roots[t] = rs[0]
        self.roots = roots

    def base_value(self, k: int) -> float:
        if len(self.base) == self.n_targets:
            return self.base[k]
        if self.n_targets == 1 and self.base:
            return self.base[0]
        return 0.0

    def goes_true(self, p: int, x: np.ndarray) -> bool:
        c = self.cols
        v = np.float32(x[int(c["featureids"][p])])
        t = np.float32(c["values"][p])
        if np.isnan(v):
            return bool(c["missing_tracks_true"][p])
        mode = c["modes"][p]
        return bool({"BRANCH_LEQ": v <= t, "BRANCH_LT": v < t, "BRANCH_GTE": v >= t, "BRANCH_GT": v > t,
                     "BRANCH_EQ": v == t, "BRANCH_NEQ": v != t}[mode])

    def child(self, p: int, truth: bool) -> int:
        c = self.cols
        return self.position[(int(c["treeids"][p]), int((c["true"] if truth else c["false"])[p]))]

    def leaf_of(self, t: int, x: np.ndarray) -> int:
        p = self.roots[t]
        while self.cols["modes"][p] != "LEAF":
            p = self.child(p, self.goes_true(p, x))
        return p

    def raw(self, X: np.ndarray) -> np.ndarray:
        """[rows, targets] raw scores."""
        out = np.zeros((len(X), self.n_targets))
        for r, x in enumerate(X):
            for t in self.trees:
                for k, v in self.leaf.get(self.leaf_of(t, x), {}).items():
                    out[r, k] += v * self.scale
            for k in range(self.n_targets):
                out[r, k] += self.base_value(k)
        return out

    # ---- path-dependent TreeSHAP (Algorithm 2), over the file's covers ----

    def shap(self, x: np.ndarray, k: int, n_features: int):
        """(contributions [features], expected value) of target k for row x."""
        phi = np.zeros(n_features)
        expected = self.base_value(k)
        for t in self.trees:
            expected += self._mean(self.roots[t], k)
            self._recurse(self.roots[t], [], 1.0, 1.0, -1, x, k, phi)
        return phi, expected

    def _value(self, p: int, k: int) -> float:
        return self.leaf.get(p, {}).get(k, 0.0) * self.scale

    def _mean(self, root: int, k: int) -> float:
        total, stack = 0.0, [root]
        while stack:
            p = stack.pop()
            if self.cols["modes"][p] == "LEAF":
                total += self.covers[p] * self._value(p, k)
            else:
                stack += [self.child(p, True), self.child(p, False)]
        return total / self.covers[root]

    def _recurse(self, p, path, pz, po, pi, x, k, phi):
        path = [list(e) for e in path]  # [feature, zero fraction, one fraction, weight]
        _extend(path, pz, po, pi)
        c = self.cols
        if c["modes"][p] == "LEAF":
            value = self._value(p, k)
            for i in range(1, len(path)):
                w = _unwound_sum(path, i)
                phi[path[i][0]] += w * (path[i][2] - path[i][1]) * value
            return
        truth = self.goes_true(p, x)
        hot, cold = self.child(p, truth), self.child(p, not truth)
        feature = int(c["featureids"][p])
        iz = io = 1.0
        for i in range(1, len(path)):
            if path[i][0] == feature:
                iz, io = path[i][1], path[i][2]
                _unwind(path, i)
                break
        cover = self.covers[p]
        self._recurse(hot, path, iz * self.covers[hot] / cover, io, feature, x, k, phi)
        self._recurse(cold, path, iz * self.covers[cold] / cover, 0.0, feature, x, k, phi)


def _extend(path, pz, po, pi):
    n = len(path)
    path.append([pi, pz, po, 1.0 if n == 0 else 0.0])
    for i in range(n - 1, -1, -1):
        path[i + 1][3] += po * path[i][3] * (i + 1) / (n + 1)
        path[i][3] = pz * path[i][3] * (n - i) / (n + 1)


def _unwind(path, i):
    n = len(path) - 1
    z, o = path[i][1], path[i][2]
    nxt = path[n][3]
    for j in range(n - 1, -1, -1):
        if o != 0:
            tmp = path[j][3]
            path[j][3] = nxt * (n + 1) / ((j + 1) * o)
            nxt = tmp - path[j][3] * z * (n - j) / (n + 1)
        else:
            path[j][3] = path[j][3] * (n + 1) / (z * (n - j))
    for j in range(i, n):
        path[j][0], path[j][1], path[j][2] = path[j + 1][0], path[j + 1][1], path[j + 1][2]
    path.pop()


def _unwound_sum(path, i):
    n = len(path) - 1
    z, o = path[i][1], path[i][2]
    nxt = path[n][3]
    total = 0.0
    for j in range(n - 1, -1, -1):
        if o != 0:
            tmp = nxt * (n + 1) / ((j + 1) * o)
            total += tmp
            nxt = path[j][3] - tmp * z * (n - j) / (n + 1)
        else:
            total += path[j][3] / (z * (n - j) / (n + 1))
    return total


def ort_raw(node, X: np.ndarray, n_targets: int) -> np.ndarray:
    """The ensemble's raw scores as ONNX Runtime computes them: the node's columns in a
    TreeEnsembleRegressor (class_* as target_*, post_transform NONE), one thread."""
    import onnxruntime as ort

    keep = {}
    for a in node.attribute:
        name = a.name.replace("class_", "target_", 1) if a.name.startswith("class_") else a.name
        if name.startswith(("nodes_", "target_")) or name in ("base_values", "aggregate_function"):
            b = onnx.AttributeProto()
            b.CopyFrom(a)
            b.name = name
            keep[name] = b
    reg = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=n_targets,
                           post_transform="NONE")
    reg.attribute.extend(keep.values())
    graph = helper.make_graph([reg], "raw", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, X.shape[1]])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, n_targets])])
    model = helper.make_model(graph, ir_version=8,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": X.astype(np.float32)})[0], dtype=np.float64)


class OnnxLinear:
    """An ai.onnx.ml LinearRegressor/LinearClassifier of the file: raw scores and coefficients."""

    def __init__(self, node, n_features):
        a = attrs_of(node)
        self.coef = np.asarray(a["coefficients"], dtype=np.float64).reshape(-1, n_features)
        self.intercepts = np.asarray(a.get("intercepts", [0.0] * len(self.coef)), dtype=np.float64)
        self.n_targets = len(self.coef)

    def raw(self, X):
        return X.astype(np.float64) @ self.coef.T + self.intercepts


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


def make_rows(entry: dict, builder: dict, nan_rows: bool) -> np.ndarray:
    rng = np.random.default_rng([ROW_SEED, make_corpus._seed(entry["name"]) % (2**31 - 1)])
    n = entry["features"]
    X = rng.normal(size=(N_ROWS, n))
    if entry["inputs"][0]["elem_type"] == "INT64":
        X = np.round(X * 3)
    for c in builder["cat_cols"]:
        X[:, c] = rng.integers(0, 5, size=N_ROWS)
    X = X.astype(np.float32)
    if nan_rows:
        last = X[-N_NAN_ROWS:]
        mask = rng.random(last.shape) < 0.3
        mask[np.arange(N_NAN_ROWS), rng.integers(0, n, N_NAN_ROWS)] = True  # at least one per row
        last[mask] = np.nan
    return X


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


def versions() -> dict:
    import lightgbm
    import numba
    import shap
    import sklearn
    import xgboost

    return {"shap": shap.__version__, "numba": numba.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "xgboost": xgboost.__version__,
            "lightgbm": lightgbm.__version__}


def as_outputs(values, expected):
    """shap's values [rows, features] or [rows, features, outputs] and expected value(s)
    as a list of (expected, contributions [rows, features]) per output."""
    values = np.asarray(values, dtype=np.float64)
    expected = np.atleast_1d(np.asarray(expected, dtype=np.float64))
    if values.ndim == 2:
        return [(float(expected[0]), values)]
    return [(float(expected[j]), values[:, :, j]) for j in range(values.shape[2])]


def gb_dict(model, c, X):
    """Column c of a GradientBoosting model's estimators_ (a class's trees) as shap's dict
    model, with the init estimator's raw prediction for c as the base offset."""
    lr = model.learning_rate
    trees = []
    for e in model.estimators_[:, c]:
        t = e.tree_
        trees.append({
            "children_left": t.children_left.astype(np.int32),
            "children_right": t.children_right.astype(np.int32),
            "children_default": t.children_left.astype(np.int32),
            "features": t.feature.astype(np.int32),
            "thresholds": t.threshold.astype(np.float64),
            "values": (t.value[:, 0, :] * lr).astype(np.float64),
            "node_sample_weight": t.weighted_n_node_samples.astype(np.float64),
        })
    base = float(model._raw_predict_init(X[:1].astype(np.float32))[0, c])
    return {"trees": trees, "base_offset": base, "tree_output": "raw_value", "input_dtype": np.float32,
            "internal_dtype": np.float64}


def reference(entry: dict, model, X: np.ndarray, vers: dict):
    """(reference label, [(expected, contributions [rows, features])])."""
    family = entry["family"]
    lib, name = family.split(".", 1)
    if lib == "sklearn" and name in ("LinearRegression", "Ridge", "LogisticRegression", "LinearSVC",
                                     "LinearSVR", "SGDClassifier"):
        coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
        intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
        Xd = X.astype(np.float64)
        return "sklearn coef_", [(float(intercept[j]), Xd * coef[j]) for j in range(len(coef))]
    if lib == "sklearn":
        import shap

        label = f"shap.TreeExplainer {vers['shap']}"
        try:
            ex = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent", model_output="raw")
        except Exception as e:  # noqa: BLE001 - shap refuses some GradientBoosting set-ups
            if not name.startswith("GradientBoosting"):
                raise Skip(f"shap.TreeExplainer refuses it: {type(e).__name__}: {e}") from None
            # A multiclass GradientBoostingClassifier or an init shap does not read ('zero'):
            # each column of estimators_ as shap's dict model, the init's raw prediction as
            # its base offset.
            outs = []
            for c in range(model.estimators_.shape[1]):
                ex = shap.TreeExplainer(gb_dict(model, c, X), feature_perturbation="tree_path_dependent",
                                        model_output="raw")
                outs += as_outputs(ex.shap_values(X, check_additivity=False), ex.expected_value)
            return label + " (dict model of each estimators_ column: shap refuses the estimator)", outs
        return label, as_outputs(ex.shap_values(X, check_additivity=False), ex.expected_value)
    if lib == "xgboost":
        import xgboost

        booster = model.get_booster()
        contrib = np.asarray(booster.predict(xgboost.DMatrix(X, missing=np.nan), pred_contribs=True),
                             dtype=np.float64)
        if contrib.ndim == 2:
            contrib = contrib[:, None, :]
        return (f"xgboost pred_contribs {vers['xgboost']}",
                [(float(contrib[0, j, -1]), contrib[:, j, :-1]) for j in range(contrib.shape[1])])
    if lib == "lightgbm":
        booster = model.booster_
        n = X.shape[1]
        contrib = np.asarray(booster.predict(X.astype(np.float64), pred_contrib=True), dtype=np.float64)
        k = contrib.shape[1] // (n + 1)
        contrib = contrib.reshape(len(X), k, n + 1)
        return (f"lightgbm pred_contrib {vers['lightgbm']}",
                [(float(contrib[0, j, -1]), contrib[:, j, :-1]) for j in range(k)])
    raise Skip(f"no reference implementation for {family}")


def close(a, b) -> bool:
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= RTOL * np.maximum(1.0, np.abs(b))))


def match_outputs(outs, onnx_raw):
    """For each reference output: (target, sign) or None."""
    matches = []
    for j, (ev, contrib) in enumerate(outs):
        ref_raw = ev + contrib.sum(axis=1)
        cands = [(k, s) for s in (1, -1) for k in range(onnx_raw.shape[1]) if close(s * onnx_raw[:, k], ref_raw)]
        cands.sort(key=lambda ks: (ks[1] != 1, ks[0] != j, ks[0]))
        matches.append(cands[0] if cands else None)
    return matches


def explain_model(entry: dict, builder: dict, corpus: Path, vers: dict):
    name = entry["name"]
    data = (corpus / entry["file"]).read_bytes()
    s = make_corpus._seed(name) % (2**31 - 1)
    exported, _, _ = builder["fn"](s)
    onx = make_corpus.normalise(exported.onx, name)
    if onx.SerializeToString() != data:
        raise Skip("re-training and exporting does not reproduce the committed file byte for byte")
    model = exported.model
    graph = onnx.ModelProto.FromString(data).graph
    trees = tree_ensemble_nodes(onx)
    linear = [n for n in graph.node if n.domain == "ai.onnx.ml" and n.op_type in LINEAR_OPS]
    n = entry["features"]
    if trees:
        if not entry.get("covers"):
            raise Skip("the file carries no covers (nodes_hitrates): " + (
                "a categorical split on several categories is exported as a chain of BRANCH_EQ nodes"
                if "cat" in name else "see make_corpus.py"))
        evaluator = OnnxTrees(trees[0])
        if evaluator.aggregate not in ("SUM", "AVERAGE"):
            raise Skip(f"aggregate_function {evaluator.aggregate}")
    elif linear:
        evaluator = OnnxLinear(linear[0], n)
    else:
        raise Skip("no ai.onnx.ml tree ensemble or LinearRegressor/LinearClassifier (a MatMul graph)")
    diff_nan = entry.get("source_max_abs_diff_nan")
    nan_rows = bool(trees) and isinstance(diff_nan, float) and diff_nan <= NAN_OK
    X = make_rows(entry, builder, nan_rows)
    label, outs = reference(entry, model, X, vers)
    onnx_raw = evaluator.raw(X)
    if trees:  # the evaluator against ONNX Runtime itself
        by_ort = ort_raw(trees[0], X, evaluator.n_targets)
        if not np.allclose(onnx_raw, by_ort, rtol=1e-5, atol=1e-5):
            raise Skip(f"this script's evaluator differs from ONNX Runtime on the ensemble's raw scores "
                       f"(max |diff| {np.max(np.abs(onnx_raw - by_ort)):.3g})")
    matches = match_outputs(outs, onnx_raw)
    if not any(matches):
        worst = min(float(np.max(np.abs(s * onnx_raw[:, k] - (ev + c.sum(axis=1)))))
                    for ev, c in outs for k in range(onnx_raw.shape[1]) for s in (1, -1))
        raise Skip(f"no ONNX target equals a reference output (sign * raw_k vs expected + sum of contributions; "
                   f"closest max |diff| {worst:.3g}): the export is not faithful to the library"
                   + (f" ({entry['note']})" if entry.get("note") else ""))
    outputs, left_out = [], []
    for j, ((ev, contrib), m) in enumerate(zip(outs, matches)):
        if m is None:
            left_out.append(j)
            continue
        k, sign = m
        ref_raw = ev + contrib.sum(axis=1)
        # The second check: the file's own covers give the reference.
        if trees:
            for r in range(len(X)):
                phi, expected = evaluator.shap(X[r], k, n)
                scale = max(1.0, abs(ref_raw[r]))
                if not (np.all(np.abs(sign * phi - contrib[r]) <= RTOL * scale)
                        and abs(sign * expected - ev) <= RTOL * scale):
                    raise Skip(f"TreeSHAP over the file's nodes_hitrates differs from the reference on row {r} "
                               f"output {j} (max |diff| {np.max(np.abs(sign * phi - contrib[r])):.3g}, "
                               f"expected {sign * expected!r} vs {ev!r})")
        else:
            coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))[j]
            if not np.allclose(sign * evaluator.coef[k], coef.astype(np.float32), rtol=1e-6, atol=0):
                raise Skip(f"the file's coefficients for target {k} are not {sign} * coef_[{j}]")
        outputs.append({"target": int(k), "sign": int(sign), "expected_value": ev,
                        "contributions": contrib.tolist(), "raw": ref_raw.tolist()})
    rows = [[None if np.isnan(v) else float(v) for v in row] for row in X]
    doc = {"model": name, "file": entry["file"], "family": entry["family"], "reference": label,
           "rows": rows, "outputs": outputs}
    return doc, left_out, int(nan_rows) * N_NAN_ROWS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "corpus" / "contributions")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus")
    parser.add_argument("--only", default="", help="comma-separated model names (index and README "
                                                    "are then not rewritten)")
    args = parser.parse_args()
    only = {x for x in args.only.split(",") if x}
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    builders = {b["name"]: b for b in make_corpus.BUILDERS}
    vers = versions()
    args.out.mkdir(parents=True, exist_ok=True)
    if not only:
        for old in args.out.glob("*.json"):
            old.unlink()
    index, skipped = [], []
    for entry in manifest:
        name = entry["name"]
        if only and name not in only:
            continue
        try:
            if name not in builders:
                raise Skip("not built by make_corpus.py")
            doc, left_out, nan = explain_model(entry, builders[name], args.corpus, vers)
        except Skip as e:
            print(f"skip {name:<34} {e}", flush=True)
            skipped.append({"model": name, "family": entry["family"], "reason": str(e)})
            continue
        (args.out / f"{name}.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        note = ""
        if left_out:
            note = (f"reference outputs {left_out} match no ONNX target (the file scores "
                    f"{len(doc['outputs'])} of {len(doc['outputs']) + len(left_out)}) and are left out")
        index.append({"model": name, "file": entry["file"], "family": entry["family"],
                      "reference": doc["reference"], "contributions": f"{name}.json",
                      "rows": len(doc["rows"]), "nan_rows": nan,
                      "outputs": [{"target": o["target"], "sign": o["sign"]} for o in doc["outputs"]],
                      **({"note": note} if note else {})})
        print(f"ok   {name:<34} {doc['reference']}: {len(doc['outputs'])} outputs "
              f"{[(o['target'], o['sign']) for o in doc['outputs']]}, {len(doc['rows'])} rows ({nan} with NaN)"
              + (f"; {note}" if note else ""), flush=True)
    if not only:
        summary = {"generated_by": "models/make_contributions.py", "versions": vers,
                   "models": index, "skipped": skipped}
        (args.out / "index.json").write_text(json.dumps(summary, indent=1) + "\n")
        write_readme(args.out / "README.md", summary)
    print(f"{len(index)} models with references, {len(skipped)} skipped")
    return 0


def write_readme(path: Path, summary: dict) -> None:
    v = summary["versions"]
    lines = [
        "# Reference contributions (models/corpus/contributions)",
        "",
        "Generated by `python3 models/make_contributions.py`; do not edit by hand. One `<model>.json`",
        "per corpus model with a reference: the rows (float32 values, NaN as null) and, per reference",
        "output, the ONNX target it equals (`target`, `sign`: sign * raw_target = the reference's raw",
        "score), the expected value, each row's contributions per feature, and the raw score.",
        "`index.json` lists every model with its reference and family, and the skipped ones.",
        "The script's docstring has the schema and the checks (the ONNX file's raw scores and a",
        "TreeSHAP over its own nodes_hitrates both reproduce the reference).",
        "",
        f"Versions: shap {v['shap']} (numba {v['numba']}), xgboost {v['xgboost']}, lightgbm {v['lightgbm']}, "
        f"scikit-learn {v['scikit-learn']}, numpy {v['numpy']}.",
        "",
        "## With references",
        "",
        "| model | family | reference | outputs (target, sign) | rows (NaN) |",
        "|---|---|---|---|---|",
    ]
    for m in summary["models"]:
        outs = ", ".join(f"({o['target']}, {o['sign']:+d})" for o in m["outputs"])
        lines.append(f"| {m['model']} | {m['family']} | {m['reference']} | {outs} | {m['rows']} ({m['nan_rows']}) |")
    notes = [m for m in summary["models"] if m.get("note")]
    if notes:
        lines += ["", "Outputs left out:", ""]
        lines += [f"- {m['model']}: {m['note']}" for m in notes]
    lines += ["", "## Skipped", ""]
    lines += [f"- {s['model']} ({s['family']}): {s['reason']}" for s in summary["skipped"]] or ["- none"]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
