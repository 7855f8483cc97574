#!/usr/bin/env python3
"""Convert a scikit-learn, LightGBM or XGBoost model to ONNX, check it, and publish it
into a manymodels store as <store>/<id>/<version>/model.onnx.

    python3 models/convert/convert.py --store DIR --id ID [--version N] [--sample ROWS] MODEL_FILE
    python3 models/convert/convert.py --store DIR --dir SRC [--sample ROWS]
    python3 models/convert/convert.py --store DIR | --out DIR --mlflow MLFLOW_DIR... [--id ID]

What it reads (the family is inferred from the file, then from the loaded object):

- a pickle or joblib file (.pkl, .pickle, .joblib, or anything that unpickles) holding a
  scikit-learn estimator or Pipeline, a LightGBM Booster or LGBMModel, or an XGBoost
  Booster or XGBModel. Unpickling runs code from the file: convert only files you trust.
- a LightGBM text model file (Booster.save_model, "tree" header; usually .txt).
- an XGBoost model file (Booster.save_model / XGBModel.save_model, .json or .ubj).

How it converts: skl2onnx `convert_sklearn` for scikit-learn (target opset
{"": 17, "ai.onnx.ml": 3}, classifiers keep skl2onnx's default ZipMap, which the scorer
serves as an FP32 [rows, classes] tensor), onnxmltools `convert_lightgbm` and
`convert_xgboost` (target opset 15). The input is always one FP32 tensor named "input"
of shape [None, n_features], n_features taken from the model (n_features_in_,
num_feature(), num_features()). These are the opsets of models/corpus, so the scorer's
native engine serves the result wherever it covers the operators.

Covers: every tree node's training cover (scikit-learn weighted_n_node_samples, or the
HistGradientBoosting node count; LightGBM internal_count/leaf_count; XGBoost cover) is
written into the tree ensemble's nodes_hitrates, parallel to nodes_nodeids, for TreeSHAP
explanations (add_covers; ONNX Runtime ignores nodes_hitrates). The ONNX trees are matched
to the library's node by node first; a mismatch refuses the model. Linear models, other
tree families and multi-category LightGBM/XGBoost splits (exported as BRANCH_EQ chains) are
published without covers; the summary line says which ("covers from ..." / "no covers: ...").

The check: the converted model runs in onnxruntime on sample rows (--sample FILE.npy or
FILE.csv; otherwise 500 float32 rows generated from the converted model itself: for tree
ensembles each feature is drawn uniformly over its split thresholds' range widened by a
quarter on each side, never exactly on a threshold; features no tree splits on and linear
models get standard normal values). The rows are float32, the type the scorer feeds, and
the original library predicts on those same values. Tolerances:

- regression values and class probabilities: |onnx - library| <= atol + rtol * |library|
  with rtol = 1e-4, atol = 1e-5 (ONNX tree ensembles sum in float32, the libraries in
  float64);
- class labels: exact, except on rows where the library's two highest probabilities are
  within that tolerance of each other (a tie the float32 sum may break either way).

A model that fails the check, or that cannot be loaded or converted, is refused: nothing
is written and the exit code is 1. A passing model is written atomically, as docs/models.md
"Model versions" says for a local store: to a hidden temp file in its version folder,
renamed to model.onnx. An existing version is never overwritten. --version defaults to
one above the highest existing version of the id (1 for a new id).

--dir converts every regular, non-hidden file of SRC with the file stem as the model id
(the id rule is docs/models.md's: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$), keeps going past
refusals, lists them at the end and exits 1 if there was any.

--mlflow converts MLflow model directories (the MLmodel file's sklearn, lightgbm or xgboost
flavor; any other flavor is refused, named), with the same recipes and check, writing the
signature's numeric column names into the ONNX metadata_props as manymodels.columns (a JSON
array, in order; non-numeric columns are refused). With --out it writes OUT/<id>.onnx and
prints one JSON line per directory (what mmctl import reads); with --store it publishes.
The same model converts to the same bytes. models/convert/README.md has the details.

Output: one line per model, "ok <id> v<version> <family> <kind> ..." or
"refused <file>: <reason>". Versions used: models/requirements.txt.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import numpy as np
except ImportError:  # pragma: no cover - the message is the point
    print("missing Python packages: numpy (pip install -r models/requirements.txt)", file=sys.stderr)
    sys.exit(3)

RTOL = 1e-4
ATOL = 1e-5
SAMPLE_ROWS = 500
SEED = 20260
SKL_OPSET = {"": 17, "ai.onnx.ml": 3}
MLTOOLS_OPSET = 15
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^[1-9][0-9]*$")


class Refused(Exception):
    """The model is not written; the message says why."""


@dataclass
class Loaded:
    family: str  # "sklearn", "lightgbm" or "xgboost"
    model: object
    n_features: int
    classifier: bool
    name: str  # class name, for the summary line


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load(path: Path) -> Loaded:
    head = path.read_bytes()[:64]
    suffix = path.suffix.lower()
    if head.startswith(b"tree\n") or head.startswith(b"tree\r\n"):
        return load_lightgbm_text(path)
    if suffix in (".json", ".ubj") or head.lstrip().startswith(b"{"):
        return load_xgboost_file(path)
    try:
        import joblib

        obj = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a refusal
        raise Refused(
            f"not a model file this tool reads (LightGBM text, XGBoost JSON/UBJ, pickle or "
            f"joblib): {type(e).__name__}: {e}"
        ) from None
    return classify(obj)


def load_lightgbm_text(path: Path) -> Loaded:
    import lightgbm

    try:
        booster = lightgbm.Booster(model_file=str(path))
    except Exception as e:  # noqa: BLE001
        raise Refused(f"not a readable LightGBM model file: {e}") from None
    return lightgbm_booster(booster)


def load_xgboost_file(path: Path) -> Loaded:
    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Drop XGBoost's "[hh:mm:ss] /path/to/source.cc:123: " prefix.
        first = re.sub(r"^\[[0-9:]+\] \S+:[0-9]+: ", "", first)
        raise Refused(f"not a readable XGBoost model file: {first}") from None
    return xgboost_booster(booster)


def lightgbm_booster(booster) -> Loaded:
    objective = booster.dump_model(num_iteration=1).get("objective", "")
    classifier = objective.startswith(("binary", "multiclass"))
    return Loaded("lightgbm", booster, booster.num_feature(), classifier, "Booster")


def xgboost_booster(booster) -> Loaded:
    import json

    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    classifier = objective.startswith(("binary:", "multi:"))
    if objective.startswith(("rank:", "survival:")) or objective in ("multi:softmax",):
        raise Refused(f"XGBoost objective {objective!r} has no ONNX conversion here")
    return Loaded("xgboost", booster, booster.num_features(), classifier, "Booster")


def classify(obj) -> Loaded:
    """The family, feature count and task of an unpickled object."""
    name = type(obj).__name__
    module = type(obj).__module__ or ""
    if module.startswith("lightgbm"):
        import lightgbm

        if isinstance(obj, lightgbm.Booster):
            return lightgbm_booster(obj)
        if isinstance(obj, lightgbm.LGBMModel):
            check_fitted(obj)
            return Loaded("lightgbm", obj, obj.n_features_in_, hasattr(obj, "classes_"), name)
    if module.startswith("xgboost"):
        import xgboost

        if isinstance(obj, xgboost.Booster):
            return xgboost_booster(obj)
        if isinstance(obj, xgboost.XGBModel):
            check_fitted(obj)
            return Loaded("xgboost", obj, obj.n_features_in_, hasattr(obj, "classes_"), name)
    try:
        from sklearn.base import BaseEstimator, is_classifier
    except ImportError:
        BaseEstimator = None
    if BaseEstimator is not None and isinstance(obj, BaseEstimator):
        check_fitted(obj)
        if not hasattr(obj, "predict"):
            raise Refused(f"{name} has no predict(): only regressors and classifiers are served")
        return Loaded("sklearn", obj, obj.n_features_in_, bool(is_classifier(obj)), name)
    raise Refused(f"unsupported object {module}.{name}: expected a scikit-learn, LightGBM or XGBoost model")


def check_fitted(model) -> None:
    if getattr(model, "n_features_in_", None) is None:
        raise Refused(f"{type(model).__name__} is not fitted (no n_features_in_)")


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------


def patch_skl2onnx_hgb() -> None:
    """skl2onnx 1.20 with onnx 1.23 fails on HistGradientBoosting ("Expected an int, got a
    boolean"): its tree walker passes a Python bool as nodes_missing_value_tracks_true.
    Coerce it to int. models/make_corpus.py uses this patch too."""
    import skl2onnx.common.tree_ensemble as te

    if getattr(te.add_node, "_mm_patched", False):
        return
    orig = te.add_node

    def add_node(*args, **kwargs):
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(kwargs["nodes_missing_value_tracks_true"])
        return orig(*args, **kwargs)

    add_node._mm_patched = True
    te.add_node = add_node


def drop_feature_names(model) -> None:
    """An XGBoost model trained on a DataFrame keeps its column names, and onnxmltools
    reads only XGBoost's default names (f0, f1, ...): the names go (the values are read by
    position either way, and --mlflow keeps the signature's names in the ONNX metadata)."""
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    if getattr(booster, "feature_names", None) is not None:
        booster.feature_names = None
        booster.feature_types = None


def convert(loaded: Loaded):
    n = loaded.n_features
    try:
        if loaded.family == "sklearn":
            from skl2onnx import convert_sklearn
            from skl2onnx.common.data_types import FloatTensorType

            patch_skl2onnx_hgb()
            return convert_sklearn(
                loaded.model,
                initial_types=[("input", FloatTensorType([None, n]))],
                target_opset=SKL_OPSET,
            )
        from onnxmltools.convert.common.data_types import FloatTensorType

        if loaded.family == "lightgbm":
            from onnxmltools import convert_lightgbm

            return convert_lightgbm(
                loaded.model,
                initial_types=[("input", FloatTensorType([None, n]))],
                target_opset=MLTOOLS_OPSET,
            )
        from onnxmltools import convert_xgboost

        drop_feature_names(loaded.model)
        return convert_xgboost(
            loaded.model,
            initial_types=[("input", FloatTensorType([None, n]))],
            target_opset=MLTOOLS_OPSET,
        )
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - a converter failure is a refusal
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise Refused(f"{loaded.family} {loaded.name} did not convert: {type(e).__name__}: {first}") from None


# --------------------------------------------------------------------------
# Covers: each tree node's training cover written into nodes_hitrates
# --------------------------------------------------------------------------
#
# TreeSHAP (path-dependent, Lundberg et al. 2018, Algorithm 2) weighs the two children of a
# split by the share of the training data that reached each. The ONNX tree ensembles carry
# no such thing (skl2onnx and onnxmltools' LightGBM converter write nodes_hitrates = 1.0,
# its XGBoost converter none), so after conversion each node's cover is written into
# nodes_hitrates, one float per node, parallel to nodes_nodeids:
#
# - scikit-learn trees, forests, extra trees, GradientBoosting: tree_.weighted_n_node_samples;
#   HistGradientBoosting: the predictors' node "count" (skl2onnx numbers each tree's nodes
#   as the library does, tree ids in the library's (iteration, class) order);
# - LightGBM: dump_model()'s internal_count / leaf_count (onnxmltools renumbers each tree's
#   nodes depth first; tree ids are the dump's tree_info order);
# - XGBoost: the JSON model's sum_hessian, what its dumps call cover (onnxmltools renumbers
#   each tree's nodes depth first; tree ids are the model's tree order).
#
# The mapping is never assumed: each ONNX tree is walked from its root beside the library
# tree of the same index, and every node must agree (leaf or split, feature, threshold within
# float32 rounding, mode); any disagreement refuses the model rather than writing wrong
# covers. A LightGBM or XGBoost categorical split on several categories is exported as a
# chain of BRANCH_EQ nodes sharing one true child, whose inner nodes have no cover of the
# library's: such a model is published without covers (NoCovers), and so are models with no
# tree ensemble or of a tree family not listed here.

COVERS_FROM = {
    "sklearn": "tree_.weighted_n_node_samples",
    "sklearn-hgb": "the predictors' node count",
    "lightgbm": "dump_model() internal_count/leaf_count",
    "xgboost": "sum_hessian (cover)",
}
TREE_OPS = ("TreeEnsembleRegressor", "TreeEnsembleClassifier")


class NoCovers(Exception):
    """No covers are written (the message says why); the model is otherwise unchanged."""


@dataclass
class LibTree:
    """One library tree in the library's node numbering. For node i: true_child[i] and
    false_child[i] are the children taken when the split's comparison holds or not (-1
    for a leaf), feature[i], threshold[i] (NaN: a categorical split, see categories[i]),
    cover[i]; root is the root's index."""

    true_child: np.ndarray
    false_child: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    cover: np.ndarray
    categories: dict
    mode: str  # the ONNX mode of its numeric splits
    root: int = 0


def tree_ensemble_nodes(onx) -> list:
    return [n for n in onx.graph.node if n.domain == "ai.onnx.ml" and n.op_type in TREE_OPS]


def _attribute_values(node) -> dict:
    from onnx import helper, numpy_helper

    out = {}
    for a in node.attribute:
        if a.name.endswith("_as_tensor"):
            out[a.name[: -len("_as_tensor")]] = numpy_helper.to_array(a.t).ravel()
        else:
            out[a.name] = helper.get_attribute_value(a)
    return out


def onnx_tree_columns(node) -> dict:
    """The node columns of a TreeEnsemble node as numpy arrays (modes as str)."""
    a = _attribute_values(node)
    cols = {
        "treeids": np.asarray(a["nodes_treeids"], dtype=np.int64),
        "nodeids": np.asarray(a["nodes_nodeids"], dtype=np.int64),
        "featureids": np.asarray(a["nodes_featureids"], dtype=np.int64),
        "values": np.asarray(a.get("nodes_values", np.zeros(len(a["nodes_nodeids"]))), dtype=np.float64),
        "modes": np.array([m.decode() if isinstance(m, bytes) else m for m in a["nodes_modes"]]),
        "true": np.asarray(a["nodes_truenodeids"], dtype=np.int64),
        "false": np.asarray(a["nodes_falsenodeids"], dtype=np.int64),
    }
    n = len(cols["nodeids"])
    mvt = a.get("nodes_missing_value_tracks_true")
    cols["missing_tracks_true"] = np.zeros(n, dtype=np.int64) if mvt is None or len(mvt) == 0 else \
        np.asarray(mvt, dtype=np.int64)
    for k, v in cols.items():
        if len(v) != n:
            raise Refused(f"covers: nodes_{k} has {len(v)} entries for {n} nodes")
    return cols


def map_covers(cols: dict, trees: list[LibTree], where: str) -> np.ndarray:
    """Each ONNX node's cover, found by walking every ONNX tree beside the library tree of
    the same index; raises Refused where they disagree."""
    n = len(cols["nodeids"])
    covers = np.full(n, np.nan)
    mapped = np.full(n, -1, dtype=np.int64)
    position = {(int(t), int(i)): p for p, (t, i) in enumerate(zip(cols["treeids"], cols["nodeids"]))}
    if len(position) != n:
        raise Refused(f"covers: {where} repeats a (tree id, node id) pair")
    tree_ids = sorted(set(int(t) for t in cols["treeids"]))
    if tree_ids != list(range(len(tree_ids))) or len(tree_ids) > len(trees):
        raise Refused(f"covers: {where} has tree ids {tree_ids[:3]}..{tree_ids[-1:]} ({len(tree_ids)} trees); "
                      f"the library model has {len(trees)} trees numbered from 0")

    def bad(t, p, i, why):
        raise Refused(f"covers: {where} tree {t} node {int(cols['nodeids'][p])} does not match the library's "
                      f"tree {t} node {i}: {why}; no covers written rather than wrong ones")

    order = np.argsort(cols["treeids"], kind="stable")
    bounds = np.searchsorted(cols["treeids"][order], np.arange(len(tree_ids) + 1))
    for t in tree_ids:
        lib = trees[t]
        members = np.sort(order[bounds[t]:bounds[t + 1]])
        if same_numbering(cols, members, lib):
            covers[members] = lib.cover
            mapped[members] = np.arange(len(members))
            continue
        split = members[cols["modes"][members] != "LEAF"]
        children = set(cols["true"][split].tolist()) | set(cols["false"][split].tolist())
        roots = [p for p in members if int(cols["nodeids"][p]) not in children]
        if len(roots) != 1:
            raise Refused(f"covers: {where} tree {t} has {len(roots)} roots")
        stack = [(roots[0], lib.root)]
        while stack:
            p, i = stack.pop()
            if mapped[p] >= 0:
                if mapped[p] != i:
                    bad(t, p, i, f"the ONNX node is reached as library nodes {mapped[p]} and {i}")
                continue
            mapped[p] = i
            covers[p] = lib.cover[i]
            mode = cols["modes"][p]
            lib_leaf = lib.true_child[i] < 0
            if (mode == "LEAF") != lib_leaf:
                bad(t, p, i, f"ONNX {mode}, library {'leaf' if lib_leaf else 'split'}")
            if lib_leaf:
                continue
            if int(cols["featureids"][p]) != int(lib.feature[i]):
                bad(t, p, i, f"feature {int(cols['featureids'][p])} vs {int(lib.feature[i])}")
            value = cols["values"][p]
            if i in lib.categories:
                cats = lib.categories[i]
                if len(cats) != 1:
                    raise NoCovers(f"{where} tree {t}: a categorical split on {len(cats)} categories is exported "
                                   f"as a chain of BRANCH_EQ nodes sharing one true child, whose inner nodes "
                                   f"have no cover of the library's")
                if mode != "BRANCH_EQ" or value != cats[0]:
                    bad(t, p, i, f"ONNX {mode} {value!r}, library category {cats[0]!r}")
            else:
                thr = float(lib.threshold[i])
                if mode != lib.mode:
                    bad(t, p, i, f"ONNX {mode}, library splits map to {lib.mode}")
                with np.errstate(over="ignore"):  # LightGBM's 1e300 is float32 inf in ONNX
                    same = value == thr or np.float32(value) == np.float32(thr) or \
                        abs(value - thr) <= 1e-6 * abs(thr) + 1e-37
                if not np.isnan(thr) and not same:
                    bad(t, p, i, f"threshold {value!r} vs {thr!r}")
            for onnx_child, lib_child in ((cols["true"][p], lib.true_child[i]), (cols["false"][p], lib.false_child[i])):
                q = position.get((t, int(onnx_child)))
                if q is None:
                    bad(t, p, i, f"child {int(onnx_child)} is not a node of the tree")
                stack.append((q, int(lib_child)))
    unreached = np.flatnonzero(mapped < 0)
    if unreached.size:
        p = unreached[0]
        raise Refused(f"covers: {where}: {unreached.size} nodes not reached from their tree's root "
                      f"(first: tree {int(cols['treeids'][p])} node {int(cols['nodeids'][p])})")
    return covers


def same_numbering(cols: dict, members: np.ndarray, lib: LibTree) -> bool:
    """Whether the ONNX tree (positions `members`) numbers its nodes 0, 1, ... as the library
    does, with the library's root at 0, and agrees with it node for node (what skl2onnx
    writes): checked at once, without the walk, for large forests. False sends the tree to
    the walk, which names the first disagreement."""
    n = len(lib.cover)
    if len(members) != n or lib.root != 0 or lib.categories or \
            not np.array_equal(cols["nodeids"][members], np.arange(n)):
        return False
    split = lib.true_child >= 0
    modes = cols["modes"][members]
    if not (np.array_equal(modes != "LEAF", split) and np.all(modes[split] == lib.mode)):
        return False
    if not (np.array_equal(cols["featureids"][members][split], lib.feature[split])
            and np.array_equal(cols["true"][members][split], lib.true_child[split])
            and np.array_equal(cols["false"][members][split], lib.false_child[split])):
        return False
    value, thr = cols["values"][members][split], lib.threshold[split]
    with np.errstate(over="ignore", invalid="ignore"):
        same = (value == thr) | (value.astype(np.float32) == thr.astype(np.float32)) | \
            (np.abs(value - thr) <= 1e-6 * np.abs(thr) + 1e-37) | np.isnan(thr)
    return bool(np.all(same))


def write_hitrates(node, covers: np.ndarray) -> None:
    """Sets the node's nodes_hitrates (and nodes_hitrates_as_tensor, if the exporter wrote
    that form) to the covers, in node order; every other attribute is left as it is."""
    from onnx import helper, numpy_helper

    values = [float(c) for c in np.asarray(covers, dtype=np.float32)]
    found = False
    for a in node.attribute:
        if a.name == "nodes_hitrates":
            del a.floats[:]
            a.floats.extend(values)
            found = True
        elif a.name == "nodes_hitrates_as_tensor":
            dtype = numpy_helper.to_array(a.t).dtype
            a.t.CopyFrom(numpy_helper.from_array(np.asarray(covers, dtype=dtype), a.t.name))
            found = True
    if not found:
        node.attribute.append(helper.make_attribute("nodes_hitrates", values))


def _lib_tree(left, right, feature, threshold, cover, mode, categories=None) -> LibTree:
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    leaf = (left < 0) | (right < 0)
    return LibTree(np.where(leaf, -1, left), np.where(leaf, -1, right), np.asarray(feature, dtype=np.int64),
                   np.asarray(threshold, dtype=np.float64), np.asarray(cover, dtype=np.float64),
                   categories or {}, mode)


def sklearn_final_estimator(model):
    while hasattr(model, "steps"):  # a Pipeline: its trees are its last step's
        model = model.steps[-1][1]
    return model


def sklearn_trees(model) -> list[LibTree]:
    """The library trees of a scikit-learn tree model in skl2onnx's tree id order."""
    est = sklearn_final_estimator(model)
    name = type(est).__name__

    def of(tree):
        return _lib_tree(tree.children_left, tree.children_right, tree.feature, tree.threshold,
                         tree.weighted_n_node_samples, "BRANCH_LEQ")

    if name in ("DecisionTreeRegressor", "DecisionTreeClassifier", "ExtraTreeRegressor", "ExtraTreeClassifier"):
        return [of(est.tree_)]
    if name in ("RandomForestRegressor", "RandomForestClassifier", "ExtraTreesRegressor", "ExtraTreesClassifier"):
        return [of(e.tree_) for e in est.estimators_]
    if name in ("GradientBoostingRegressor", "GradientBoostingClassifier"):
        # skl2onnx: tree id i * n_classes + c for estimators_[i][c] (one column unless multiclass)
        return [of(e.tree_) for row in est.estimators_ for e in row]
    if name in ("HistGradientBoostingRegressor", "HistGradientBoostingClassifier"):
        trees = []
        for per_iteration in est._predictors:  # tree id i * n_trees_per_iteration + c
            for predictor in per_iteration:
                nodes = predictor.nodes
                leaf = nodes["is_leaf"].astype(bool)
                categorical = nodes["is_categorical"].astype(bool) if "is_categorical" in nodes.dtype.names else \
                    np.zeros(len(nodes), dtype=bool)
                # skl2onnx writes a categorical split as a BRANCH_LEQ on num_threshold (the
                # corpus calls that unfaithful); its node still is the library's node.
                threshold = np.where(categorical, np.nan, nodes["num_threshold"])
                left = np.where(leaf, -1, nodes["left"].astype(np.int64))  # uint32 in the library
                right = np.where(leaf, -1, nodes["right"].astype(np.int64))
                trees.append(_lib_tree(left, right,
                                       nodes["feature_idx"], threshold, nodes["count"], "BRANCH_LEQ"))
        return trees
    raise NoCovers(f"{name}: covers are written for scikit-learn decision trees, random forests, extra trees, "
                   f"GradientBoosting and HistGradientBoosting")


def lightgbm_trees(model) -> list[LibTree]:
    """The library trees of a LightGBM model in dump_model()'s tree_info order, nodes
    numbered in preorder."""
    booster = model.booster_ if hasattr(model, "booster_") else model
    trees = []
    for info in booster.dump_model()["tree_info"]:
        left, right, feature, threshold, cover, categories = [], [], [], [], [], {}
        stack = [(info["tree_structure"], None, None)]
        while stack:  # preorder, iteratively (deep trees)
            node, parent, side = stack.pop()
            i = len(left)
            if parent is not None:
                (left if side == "left" else right)[parent] = i
            left.append(-1)
            right.append(-1)
            if "split_feature" in node:
                feature.append(node["split_feature"])
                cover.append(node["internal_count"])
                if node["decision_type"] == "==":
                    categories[i] = [float(c) for c in str(node["threshold"]).split("||")]
                    threshold.append(np.nan)
                elif node["decision_type"] == "<=":
                    threshold.append(float(node["threshold"]))
                else:
                    raise NoCovers(f"LightGBM decision_type {node['decision_type']!r}")
                stack.append((node["right_child"], i, "right"))
                stack.append((node["left_child"], i, "left"))
            else:
                feature.append(0)
                threshold.append(np.nan)
                # A one-leaf tree has no leaf_count (and no split to weigh).
                cover.append(node.get("leaf_count", 0))
        trees.append(_lib_tree(left, right, feature, threshold, cover, "BRANCH_LEQ", categories))
    return trees


def xgboost_trees(model) -> list[LibTree]:
    """The library trees of an XGBoost model, from its JSON model: trees in order, nodes
    in XGBoost's numbering, cover = sum_hessian."""
    import json

    booster = model.get_booster() if hasattr(model, "get_booster") else model
    doc = json.loads(booster.save_raw(raw_format="json"))
    gb = doc["learner"]["gradient_booster"]
    if "model" not in gb and "gbtree" in gb:  # dart
        gb = gb["gbtree"]
    if "model" not in gb or "trees" not in gb["model"]:
        raise NoCovers(f"XGBoost booster {gb.get('name', '?')}: no trees")
    trees = []
    for tree in gb["model"]["trees"]:
        categories = {}
        split_type = tree.get("split_type", [])
        if any(split_type):
            nodes = tree.get("categories_nodes", [])
            segments = tree.get("categories_segments", [])
            sizes = tree.get("categories_sizes", [])
            for k, node_index in enumerate(nodes):
                categories[int(node_index)] = [float(c) for c in
                                               tree["categories"][segments[k]: segments[k] + sizes[k]]]
        trees.append(_lib_tree(tree["left_children"], tree["right_children"], tree["split_indices"],
                               np.asarray(tree["split_conditions"], dtype=np.float32), tree["sum_hessian"],
                               "BRANCH_LT", categories))
    return trees


def add_covers(onx, model, family: str) -> str:
    """Writes every tree node's cover into nodes_hitrates of the converted model `onx` of
    the library `model` ("sklearn", "lightgbm" or "xgboost"). Returns where the covers came
    from; raises NoCovers (nothing written: a linear model, an unmapped family or shape) or
    Refused (the ONNX trees do not match the library's: nothing written)."""
    nodes = tree_ensemble_nodes(onx)
    if not nodes:
        if any(n.op_type.startswith("TreeEnsemble") for n in onx.graph.node):
            raise NoCovers("a TreeEnsemble op other than TreeEnsembleRegressor/Classifier")
        raise NoCovers("no tree ensemble")
    if len(nodes) > 1:
        raise NoCovers(f"{len(nodes)} tree ensembles in one graph")
    if family == "sklearn":
        trees = sklearn_trees(model)
        source = COVERS_FROM["sklearn-hgb" if "HistGradient" in type(sklearn_final_estimator(model)).__name__
                             else "sklearn"]
    elif family == "lightgbm":
        trees, source = lightgbm_trees(model), COVERS_FROM["lightgbm"]
    elif family == "xgboost":
        trees, source = xgboost_trees(model), COVERS_FROM["xgboost"]
    else:
        raise NoCovers(f"family {family!r}")
    covers = map_covers(onnx_tree_columns(nodes[0]), trees, nodes[0].op_type)
    write_hitrates(nodes[0], covers)
    return source


def convert_with_covers(loaded: Loaded):
    """convert() and add_covers(): (ONNX model, a note on the covers for the summary line)."""
    onx = convert(loaded)
    try:
        return onx, f"covers from {add_covers(onx, loaded.model, loaded.family)}"
    except NoCovers as e:
        return onx, f"no covers: {e}"
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - a failure to read the library's trees is a refusal
        raise Refused(f"covers: reading {loaded.family} {loaded.name}'s trees failed: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------
# Sample rows and the check
# --------------------------------------------------------------------------


def read_sample(path: Path, n: int) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        rows = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".csv":
        rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    else:
        raise Refused(f"--sample must be a .npy or .csv file, not {path.name}")
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != n or rows.shape[0] == 0:
        raise Refused(f"--sample {path.name} has shape {rows.shape}; the model takes [rows, {n}]")
    return rows


def thresholds(onx) -> dict[int, list[float]]:
    """Split thresholds per feature of every tree ensemble node of the converted model."""
    from onnx import helper

    found: dict[int, list[float]] = {}
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        modes = attrs.get("nodes_modes", [])
        for feature, value, mode in zip(attrs.get("nodes_featureids", []), attrs.get("nodes_values", []), modes):
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode != "LEAF" and np.isfinite(value):
                found.setdefault(int(feature), []).append(float(value))
    return found


def generate_sample(onx, n: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    rows = rng.standard_normal((SAMPLE_ROWS, n)).astype(np.float32)
    for feature, values in thresholds(onx).items():
        if feature >= n:
            continue
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.25, 1e-3 * max(1.0, abs(lo), abs(hi)), 1e-3)
        column = rng.uniform(lo - pad, hi + pad, SAMPLE_ROWS).astype(np.float32)
        # A value exactly on a threshold may go either way between a float32 ONNX
        # comparison and a float64 library one: nudge it off.
        on = np.isin(column, np.asarray(values, dtype=np.float32))
        column[on] = np.nextafter(column[on], np.float32(np.inf))
        rows[:, feature] = column
    return rows


def run_onnx(onx, rows: np.ndarray):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # Errors only: onnxmltools declares some outputs' shapes as [1], which ONNX Runtime
    # warns about on every batch although the values are right.
    options.log_severity_level = 3
    session = ort.InferenceSession(onx.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": rows}), [o.name for o in session.get_outputs()]


def reference(loaded: Loaded, rows: np.ndarray):
    """The original library's predictions: (values, None) for a regressor,
    (probabilities [rows, classes], labels) for a classifier."""
    model = loaded.model
    if loaded.family == "lightgbm" and loaded.name == "Booster":
        out = np.asarray(model.predict(rows.astype(np.float64)), dtype=np.float64)
        if not loaded.classifier:
            return out.reshape(-1), None
        proba = np.column_stack([1 - out, out]) if out.ndim == 1 else out
        return proba, np.argmax(proba, axis=1)
    if loaded.family == "xgboost" and loaded.name == "Booster":
        import xgboost

        out = np.asarray(model.predict(xgboost.DMatrix(rows)), dtype=np.float64)
        if not loaded.classifier:
            return out.reshape(-1), None
        proba = np.column_stack([1 - out, out]) if out.ndim == 1 else out
        return proba, np.argmax(proba, axis=1)
    if loaded.classifier:
        return np.asarray(model.predict_proba(rows), dtype=np.float64), np.asarray(model.predict(rows))
    return np.asarray(model.predict(rows), dtype=np.float64).reshape(-1), None


def served_probabilities(value) -> np.ndarray:
    """A ZipMap's list of dicts as the scorer serves it ([rows, classes], classes in
    ascending order), or a probability tensor unchanged."""
    if isinstance(value, list):
        if not value:
            return np.zeros((0, 0))
        classes = sorted(value[0])
        return np.array([[row[c] for c in classes] for row in value], dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def check(loaded: Loaded, onx, rows: np.ndarray) -> str:
    """Compares ONNX Runtime with the library on `rows`; returns a short account or raises
    Refused."""
    outputs, names = run_onnx(onx, rows)
    expected, labels = reference(loaded, rows)
    if labels is None:
        got = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        return compare_values("prediction", got, expected)
    if len(outputs) < 2:
        raise Refused(f"the converted classifier has outputs {names}, expected a label and probabilities")
    proba = served_probabilities(outputs[1])
    account = compare_values("probability", proba, expected)
    got_labels = np.asarray(outputs[0]).reshape(-1)
    want_labels = np.asarray(labels).reshape(-1)
    if got_labels.dtype.kind in "iuf" and want_labels.dtype.kind in "iuf":
        differ = got_labels.astype(np.float64) != want_labels.astype(np.float64)
    else:
        differ = got_labels.astype(str) != want_labels.astype(str)
    if differ.any():
        top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else None
        tie = np.zeros(len(differ), dtype=bool) if top2 is None else (
            np.abs(top2[:, 1] - top2[:, 0]) <= ATOL + RTOL * np.abs(top2[:, 1]))
        bad = np.flatnonzero(differ & ~tie)
        if bad.size:
            i = bad[0]
            raise Refused(
                f"label mismatch on {bad.size} of {len(rows)} rows (first: row {i}, onnx "
                f"{got_labels[i]!r}, library {want_labels[i]!r})"
            )
    return account + ", labels equal"


def compare_values(what: str, got: np.ndarray, expected: np.ndarray) -> str:
    if got.shape != expected.shape:
        raise Refused(f"{what} shape differs: onnx {got.shape}, library {expected.shape}")
    close = np.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    diff = np.abs(got - expected)
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    if not close.all():
        i = np.argwhere(~close)[0]
        where = tuple(int(x) for x in i)
        raise Refused(
            f"{what} mismatch on {int((~close).sum())} values beyond rtol={RTOL} atol={ATOL} "
            f"(first at {where}: onnx {got[where]!r}, library {expected[where]!r}; max |diff| {worst:.3g})"
        )
    return f"max |diff| {worst:.2g}"


# --------------------------------------------------------------------------
# MLflow model directories
# --------------------------------------------------------------------------

MLFLOW_FLAVORS = ("sklearn", "lightgbm", "xgboost")
# MLflow column types (mlflow.types.DataType) the scorer can be sent: numbers.
NUMERIC_COLUMN_TYPES = {"double", "float", "long", "integer"}
NUMERIC_TENSOR_DTYPES = {
    "float64", "float32", "float16", "int64", "int32", "int16", "int8",
    "uint64", "uint32", "uint16", "uint8",
}
# The XGBoost classes an MLmodel's model_class may name (mlflow.xgboost saves these).
XGBOOST_CLASSES = ("Booster", "XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor")
COLUMNS_KEY = "manymodels.columns"


@dataclass
class MlflowModel:
    flavor: str
    loaded: Loaded
    # The signature's column names, in order; None for a tensor signature or none at all.
    columns: list[str] | None


def read_mlmodel(folder: Path) -> dict:
    """The MLmodel file of an MLflow model directory, parsed, with its flavors checked."""
    path = folder / "MLmodel"
    if not path.is_file():
        raise Refused(f"no MLmodel file in {folder}: not an MLflow model directory")
    try:
        import yaml
    except ImportError:
        raise Refused(missing_message(["yaml (PyYAML)"])) from None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Refused(f"MLmodel is not valid YAML: {first}") from None
    if not isinstance(doc, dict):
        raise Refused("MLmodel is not a YAML mapping (expected flavors:, signature:, ...)")
    flavors = doc.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise Refused("MLmodel has no flavors: mapping")
    return doc


def mlflow_file(folder: Path, conf: dict, key: str, flavor: str) -> Path:
    """The model file an MLmodel flavor names, which must be inside the directory."""
    name = conf.get(key)
    if not isinstance(name, str) or not name:
        raise Refused(f"MLmodel flavors.{flavor}.{key} is missing: it names the model file")
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        raise Refused(f"MLmodel flavors.{flavor}.{key} {name!r} points outside the model directory")
    if not path.is_file():
        raise Refused(f"MLmodel flavors.{flavor}.{key} names {name}, which is not in {folder}")
    return path


def load_serialized(path: Path, conf: dict, flavor: str):
    """A scikit-learn-API object as mlflow.sklearn saves it: skops (MLflow 3's default),
    pickle or cloudpickle. Both run code from the file: convert only models you trust."""
    fmt = conf.get("serialization_format", "cloudpickle")
    try:
        if fmt == "skops":
            try:
                import skops.io
            except ImportError:
                raise Refused(missing_message(["skops"])) from None
            return skops.io.load(path, trusted=conf.get("skops_trusted_types") or None)
        if fmt in ("pickle", "cloudpickle"):
            import pickle

            with open(path, "rb") as f:
                return pickle.load(f)
    except Refused:
        raise
    except ModuleNotFoundError as e:
        raise Refused(missing_message([e.name or str(e)])) from None
    except Exception as e:  # noqa: BLE001 - any deserialisation failure is a refusal
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise Refused(f"{path.name} ({fmt}) does not load: {type(e).__name__}: {first}") from None
    raise Refused(f"MLmodel flavors.{flavor}.serialization_format {fmt!r} is not one of skops, pickle, cloudpickle")


def load_mlflow_flavor(folder: Path, flavor: str, conf: dict) -> Loaded:
    if flavor == "sklearn":
        path = mlflow_file(folder, conf, "pickled_model", flavor)
        return classify(load_serialized(path, conf, flavor))
    path = mlflow_file(folder, conf, "data", flavor)
    if flavor == "lightgbm":
        if conf.get("model_class", "lightgbm.basic.Booster") == "lightgbm.basic.Booster":
            return load_lightgbm_text(path)
        return classify(load_serialized(path, conf, flavor))
    model_class = str(conf.get("model_class", "xgboost.core.Booster"))
    module, _, name = model_class.rpartition(".")
    if not module.startswith("xgboost") or name not in XGBOOST_CLASSES:
        raise Refused(f"MLmodel flavors.xgboost.model_class {model_class!r} is not an XGBoost model class converted here")
    import xgboost

    model = getattr(xgboost, name)()
    try:
        model.load_model(str(path))
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"^\[[0-9:]+\] \S+:[0-9]+: ", "", first)
        raise Refused(f"not a readable XGBoost model file: {first}") from None
    return classify(model)


def signature_columns(doc: dict, n_features: int) -> list[str] | None:
    """The column names of the MLmodel's input signature, in order (None for a tensor
    signature or no signature); refuses non-numeric inputs and a count that is not the
    model's."""
    signature = doc.get("signature")
    if signature is None:
        return None
    if not isinstance(signature, dict):
        raise Refused("MLmodel signature: is not a mapping")
    inputs = signature.get("inputs")
    if inputs is None:
        return None
    import json

    if isinstance(inputs, str):
        try:
            inputs = json.loads(inputs)
        except json.JSONDecodeError as e:
            raise Refused(f"MLmodel signature.inputs is not JSON: {e}") from None
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, dict) for s in inputs):
        raise Refused("MLmodel signature.inputs is not a list of column or tensor specs")
    tensors = [s for s in inputs if s.get("type") == "tensor"]
    if tensors:
        if len(tensors) != len(inputs) or len(tensors) != 1:
            raise Refused(f"MLmodel signature.inputs has {len(inputs)} inputs with tensors among them: "
                          "the model takes one tensor, or named columns")
        spec = tensors[0].get("tensor-spec") or {}
        dtype = str(spec.get("dtype"))
        if dtype not in NUMERIC_TENSOR_DTYPES:
            raise Refused(f"MLmodel signature input tensor has dtype {dtype}: the scorer takes numbers only")
        shape = spec.get("shape") or []
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0 and shape[1] != n_features:
            raise Refused(f"MLmodel signature input tensor has {shape[1]} features, the model takes {n_features}")
        return None
    names, bad = [], []
    for spec in inputs:
        name, kind = spec.get("name"), str(spec.get("type"))
        if not isinstance(name, str) or not name:
            raise Refused(f"MLmodel signature.inputs has a column without a name: {json.dumps(spec)}")
        if kind not in NUMERIC_COLUMN_TYPES:
            bad.append(f"{name} ({kind})")
        names.append(name)
    if bad:
        raise Refused(f"the signature has non-numeric columns: {', '.join(bad)}; the scorer takes numbers only "
                      f"({', '.join(sorted(NUMERIC_COLUMN_TYPES))})")
    if len(set(names)) != len(names):
        raise Refused("MLmodel signature.inputs names a column twice")
    if len(names) != n_features:
        raise Refused(f"the signature names {len(names)} columns, the model takes {n_features} features")
    return names


def load_mlflow(folder: Path) -> MlflowModel:
    doc = read_mlmodel(folder)
    flavors = doc["flavors"]
    found = [f for f in MLFLOW_FLAVORS if f in flavors]
    if not found:
        others = sorted(str(f) for f in flavors if f != "python_function") or ["python_function"]
        raise Refused(f"MLflow flavor {', '.join(others)} is not converted here: "
                      f"only {', '.join(MLFLOW_FLAVORS)}")
    flavor = found[0]
    conf = flavors[flavor]
    if not isinstance(conf, dict):
        raise Refused(f"MLmodel flavors.{flavor} is not a mapping")
    loaded = load_mlflow_flavor(folder, flavor, conf)
    return MlflowModel(flavor, loaded, signature_columns(doc, loaded.n_features))


def deterministic(onx, name: str):
    """The same model converts to the same bytes, so an import can skip what it published
    before by content hash: the converters name the graph with a random UUID and list the
    opsets in set order; the graph is named after the model and the opsets sorted."""
    onx.graph.name = name
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        opset = onx.opset_import.add()
        opset.domain, opset.version = domain, version
    return onx


def with_columns(onx, columns: list[str] | None):
    """Writes the signature's column names into the model's metadata_props, so the scorer
    can place named values (manymodels.columns = JSON array of names, in order)."""
    if columns is None:
        return onx
    import json

    kept = [(p.key, p.value) for p in onx.metadata_props if p.key != COLUMNS_KEY]
    del onx.metadata_props[:]
    for key, value in kept + [(COLUMNS_KEY, json.dumps(columns))]:
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    return onx


def convert_mlflow(folder: Path, name: str, sample: Path | None):
    """An MLflow model directory converted and checked: (ONNX model, account line)."""
    model = load_mlflow(folder)
    loaded = model.loaded
    onx, covers = convert_with_covers(loaded)
    onx = deterministic(with_columns(onx, model.columns), name)
    rows = read_sample(sample, loaded.n_features) if sample else generate_sample(onx, loaded.n_features)
    account = check(loaded, onx, rows)
    kind = "classifier" if loaded.classifier else "regressor"
    columns = f"columns {', '.join(model.columns)}" if model.columns else "no named columns"
    return onx, (
        f"mlflow {model.flavor} {loaded.name} {kind}, {loaded.n_features} features, {columns}, "
        f"{len(rows)} rows checked: {account}; {covers}"
    )


def missing_message(names: list[str]) -> str:
    return f"missing Python packages: {', '.join(names)} (pip install -r models/requirements.txt)"


def missing_core() -> list[str]:
    """The packages every conversion needs, absent from this interpreter."""
    import importlib.util

    wanted = {"onnx": "onnx", "onnxruntime": "onnxruntime", "yaml": "yaml (PyYAML)"}
    return [label for module, label in wanted.items() if importlib.util.find_spec(module) is None]


def mlflow_main(folders: list[Path], out: Path | None, store: Path | None, model_id: str | None,
                sample: Path | None) -> int:
    """--mlflow: with --out, each directory's ONNX file written as OUT/<name>.onnx and one
    JSON line per directory on stdout ({"mlflow", "id", "file", "detail"} or {"mlflow",
    "id", "refused"}), what mmctl import reads; with --store, published like --dir."""
    import json

    missing = missing_core()
    if missing:
        print(missing_message(missing), file=sys.stderr, flush=True)
        return 3
    refusals = 0
    for folder in folders:
        name = model_id or folder.name or folder.resolve().name
        try:
            if not ID_RE.match(name):
                raise Refused(f"{name!r} is not a valid model id (^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$)")
            onx, account = convert_mlflow(folder, name, sample)
            if out is not None:
                target = out / f"{name}.onnx"
                target.write_bytes(onx.SerializeToString())
                print(json.dumps({"mlflow": str(folder), "id": name, "file": str(target), "detail": account}),
                      flush=True)
            else:
                version = next_version(store, name)
                target = publish(store, name, version, onx.SerializeToString())
                print(f"ok {name} v{version} {account} -> {target}", flush=True)
        except (Refused, ModuleNotFoundError) as e:
            if isinstance(e, ModuleNotFoundError):
                e = Refused(missing_message([e.name or str(e)]))
            refusals += 1
            if out is not None:
                print(json.dumps({"mlflow": str(folder), "id": name, "refused": str(e)}), flush=True)
            else:
                print(f"refused {folder}: {e}", file=sys.stderr, flush=True)
    return 1 if refusals else 0



# --------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------


def next_version(store: Path, model_id: str) -> int:
    folder = store / model_id
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name)] if folder.is_dir() else []
    return max(versions, default=0) + 1


def publish(store: Path, model_id: str, version: int, data: bytes) -> Path:
    """Writes <store>/<id>/<version>/model.onnx through a temp file and a rename, so a
    scorer looking at the store never sees half a file; refuses an existing version."""
    folder = store / model_id / str(version)
    target = folder / "model.onnx"
    if target.exists():
        raise Refused(f"{model_id} version {version} exists in {store}; versions are never overwritten")
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".model.onnx.tmp-{os.getpid()}"
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        # os.link fails if the target appeared meanwhile, unlike a rename over it.
        os.link(temp, target)
    except FileExistsError:
        raise Refused(f"{model_id} version {version} appeared in {store} meanwhile; not overwritten") from None
    except OSError:
        os.replace(temp, target)
    finally:
        if temp.exists():
            temp.unlink()
    return target


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def convert_one(path: Path, store: Path, model_id: str, version: int | None, sample: Path | None) -> str:
    if not ID_RE.match(model_id):
        raise Refused(f"{model_id!r} is not a valid model id (^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$)")
    if not path.is_file():
        raise Refused("no such file")
    loaded = load(path)
    onx, covers = convert_with_covers(loaded)
    rows = read_sample(sample, loaded.n_features) if sample else generate_sample(onx, loaded.n_features)
    account = check(loaded, onx, rows)
    if version is None:
        version = next_version(store, model_id)
    target = publish(store, model_id, version, onx.SerializeToString())
    kind = "classifier" if loaded.classifier else "regressor"
    return (
        f"ok {model_id} v{version} {loaded.family} {loaded.name} {kind}, {loaded.n_features} features, "
        f"{len(rows)} rows checked: {account}; {covers} -> {target}"
    )


def positive_int(text: str) -> int:
    if not VERSION_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a version is a positive integer without leading zeros")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a scikit-learn, LightGBM or XGBoost model to ONNX, check it against "
        "the library's own predictions, and write <store>/<id>/<version>/model.onnx.",
    )
    parser.add_argument("--store", type=Path, help="local model store root")
    parser.add_argument("--id", help="model id (one model file)")
    parser.add_argument("--version", type=positive_int, help="version to write (default: highest existing + 1)")
    parser.add_argument("--sample", type=Path, help="rows to check on: .npy or .csv, [rows, n_features]")
    parser.add_argument("--dir", type=Path, help="convert every model file in this folder, id = file stem")
    parser.add_argument("--mlflow", nargs="+", type=Path, metavar="DIR",
                        help="MLflow model directories (an MLmodel file each), id = directory name")
    parser.add_argument("--out", type=Path, help="with --mlflow: write OUT/<id>.onnx and JSON lines, no store")
    parser.add_argument("model", nargs="?", type=Path, help="model file")
    args = parser.parse_args(argv)
    # Models fitted on a DataFrame warn on every float32 array they are checked with.
    import warnings

    warnings.filterwarnings("ignore", message="X does not have valid feature names")

    if args.mlflow is not None:
        if (args.out is None) == (args.store is None):
            parser.error("--mlflow takes --out DIR or --store DIR")
        if args.dir is not None or args.model is not None or args.version is not None:
            parser.error("--mlflow takes no --dir, MODEL_FILE or --version")
        if args.id is not None and len(args.mlflow) != 1:
            parser.error("--id names one model: give one --mlflow directory with it")
        if args.out is not None and not args.out.is_dir():
            parser.error(f"--out {args.out}: not a directory")
        return mlflow_main(args.mlflow, args.out, args.store, args.id, args.sample)
    if args.store is None:
        parser.error("--store DIR is required")

    if args.dir is None:
        if args.model is None or args.id is None:
            parser.error("give --id ID and MODEL_FILE, or --dir SRC")
        try:
            print(convert_one(args.model, args.store, args.id, args.version, args.sample), flush=True)
        except Refused as e:
            print(f"refused {args.model}: {e}", file=sys.stderr, flush=True)
            return 1
        return 0

    if args.model is not None or args.id is not None or args.version is not None:
        parser.error("--dir takes no MODEL_FILE, --id or --version (ids are file stems)")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: not a directory")
    refusals = []
    files = sorted(p for p in args.dir.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in files:
        try:
            print(convert_one(path, args.store, path.stem, None, args.sample), flush=True)
        except Refused as e:
            print(f"refused {path}: {e}", flush=True)
            refusals.append((path, str(e)))
    converted = len(files) - len(refusals)
    print(f"{converted} converted, {len(refusals)} refused", flush=True)
    for path, reason in refusals:
        print(f"  refused {path.name}: {reason}", file=sys.stderr)
    return 1 if refusals else 0


if __name__ == "__main__":
    sys.exit(main())
