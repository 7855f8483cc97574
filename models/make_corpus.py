#!/usr/bin/env python3
"""Generate the committed corpus of real exported tree-ensemble / linear ONNX models.

Every file is produced by a real exporter (skl2onnx for scikit-learn, onnxmltools
for LightGBM and XGBoost) from a small model trained on a few hundred seeded
synthetic rows. The corpus is what a native Rust scorer for tree ensembles and
linear models is checked against (it must equal onnxruntime 1.31.1).

Layout written (idempotent: the corpus directory is wiped and rewritten, and
two runs give byte-identical files):
    models/corpus/<name>.onnx
    models/corpus/manifest.json

manifest.json is a list with one object per model:
    name, family, task (regression|binary|multiclass), file, bytes,
    inputs  [{name, elem_type FP32|FP64|INT64, shape}],
    outputs [{name, kind tensor|zipmap, elem_type (FP32|INT64|STRING|seq(map(K,FP32))), shape}],
    ops     ["ai.onnx.ml.TreeEnsembleClassifier", "Cast", ...] (graph order, distinct),
    labels  int64|string|null, features N,
    opsets  {domain: version} as written in the file, note (free text),
    covers  true when the tree ensemble's nodes_hitrates hold the library's node covers.

Also in each manifest entry: outputs[].ort_shape (shape onnxruntime actually returns,
batch dimension null; declared shapes can be wrong), ir_version, producer, and
source_max_abs_diff / source_max_abs_diff_nan: max |onnx - source estimator| on 200
ordinary rows and on the same rows with 15% NaN ("n/a" when the estimator rejects
NaN). A large value marks an exporter that is not faithful to its library (the
note says why); the file is still a valid onnxruntime reference.

Covers: every tree ensemble carries each node's training cover in nodes_hitrates (written
by convert/convert.py's add_covers after export, matched to the library's trees node by
node: scikit-learn weighted_n_node_samples or the HistGradientBoosting node count, LightGBM
internal_count/leaf_count, XGBoost cover); manifest "covers" says whether a file has them
(false for linear models and for the LightGBM/XGBoost categorical models, whose
multi-category splits are exported as chains of BRANCH_EQ nodes). Nothing else in a file
depends on them: onnxruntime ignores nodes_hitrates. models/make_contributions.py writes
TreeSHAP reference contributions for these models.

Each file is checked with onnx.checker and run by onnxruntime
(intra_op_num_threads=1) on 1,000 rows that mix ordinary values with NaN,
+/-inf, 0, -0.0, +/-1e30, tiny and subnormal values; a model that fails any of
this is dropped and reported. On ordinary rows the ONNX output is also compared
with the source estimator (printed as max |diff|).

Versions of record: scikit-learn 1.6.1, skl2onnx 1.20.0, onnx 1.23.2,
onnxruntime 1.31.1, onnxmltools 1.16.0, lightgbm 4.7.0, xgboost 3.1.2
(models/requirements.txt + xgboost==3.1.2).

Opsets: scikit-learn models are converted with target_opset {"": 17, "ai.onnx.ml": 3},
LightGBM and XGBoost with onnxmltools target_opset=15 (LightGBM needs <= 15). Both
converters then import only the lowest version each emitted op needs, so every file
here imports ai.onnx.ml 1 (skl_linreg_f64: 3, no ml op used) and ai.onnx 8..17 (some
XGBoost files import no default domain at all): TreeEnsembleRegressor /
TreeEnsembleClassifier are the classic ops (v1 schema = v3 without the *_as_tensor
attributes), never the ai.onnx.ml opset-5 TreeEnsemble op. The manifest records
each file's imports.

Workaround: skl2onnx 1.20 with onnx 1.23 fails on HistGradientBoosting with
"Field onnx.AttributeProto.ints: Expected an int, got a boolean" because its
tree walker passes a Python bool (False, for every leaf) as
nodes_missing_value_tracks_true (splits pass numpy uint8). patch_skl2onnx_hgb() (from
convert/convert.py, shared with the conversion recipe) wraps
skl2onnx.common.tree_ensemble.add_node so that value is int() before the node
is built; the exported graph is exactly what skl2onnx means to write.

Usage:  python3 models/make_corpus.py [--out DIR] [--only NAME[,NAME...]] [--notes FILE.md]
    --only   rebuild just these models and merge them into the existing manifest
    --notes  also write a Markdown description of every graph (node list, attributes,
             distinct ops); the committed one is /work/notes/corpus-graphs.md
Takes a few seconds; nothing is downloaded.
"""

from __future__ import annotations

import os

# OpenBLAS picks its kernels by CPU (DYNAMIC_ARCH), and LinearRegression/Ridge/LogisticRegression
# fits differ in the last bits between them: the committed linear models were fitted with the
# Haswell (AVX2) kernels, so every machine uses those. Must precede the numpy/scipy imports.
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import argparse
import hashlib
import json
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from check_rows import float_rows

warnings.filterwarnings("ignore")

SEED = 20240611
SKL_OPSET = {"": 17, "ai.onnx.ml": 3}
MLTOOLS_OPSET = 15  # onnxmltools: LightGBM export needs <= 15
N_CHECK_ROWS = 1000

ELEM = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.STRING: "STRING",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.BOOL: "BOOL",
}


# --------------------------------------------------------------------------
# Exporter patches / helpers
# --------------------------------------------------------------------------

# One copy of the HistGradientBoosting exporter patch: the conversion recipe's.
sys.path.insert(0, str(Path(__file__).resolve().parent / "convert"))
from convert import NoCovers, Refused, add_covers, patch_skl2onnx_hgb  # noqa: E402


class Exported(NamedTuple):
    """What the exporter helpers below return: the ONNX model (covers written into its
    tree ensemble's nodes_hitrates where the family has them), the library model it was
    exported from (models/make_contributions.py explains it), and whether covers were
    written (`covers_note` says where from, or why not)."""

    onx: onnx.ModelProto
    model: object
    covers: bool
    covers_note: str


def with_covers(onx, model, family) -> Exported:
    """convert.py's add_covers: a linear model or a multi-category split chain writes no
    covers (NoCovers); a tree that does not match the library's raises (convert.Refused),
    which stops the whole run rather than dropping or mislabelling a model."""
    try:
        return Exported(onx, model, True, f"covers from {add_covers(onx, model, family)}")
    except NoCovers as e:
        return Exported(onx, model, False, f"no covers: {e}")


def skl(model, n_features, *, double=False, int64=False, zipmap=None, extra_options=None):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    tt = DoubleTensorType if double else (Int64TensorType if int64 else FloatTensorType)
    options = dict(extra_options or {})
    if zipmap is not None:
        options["zipmap"] = zipmap
    return with_covers(convert_sklearn(
        model,
        initial_types=[("input", tt([None, n_features]))],
        options={id(model): options} if options else None,
        target_opset=SKL_OPSET,
    ), model, "sklearn")


def lgbm(model, n_features, *, zipmap=False):
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    return with_covers(convert_lightgbm(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset=MLTOOLS_OPSET,
        zipmap=zipmap,
    ), model, "lightgbm")


def xgb(model, n_features):
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    return with_covers(convert_xgboost(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset=MLTOOLS_OPSET,
    ), model, "xgboost")


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def reg_data(n_features, seed, n=400, n_targets=1):
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=n, n_features=n_features, n_informative=min(n_features, 6),
                           n_targets=n_targets, noise=0.5, random_state=seed)
    return X.astype(np.float32), y


def clf_data(n_features, seed, n_classes=2, n=400):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=n_features, n_informative=min(n_features, 5),
                               n_redundant=1, n_classes=n_classes, n_clusters_per_class=1,
                               random_state=seed)
    return X.astype(np.float32), y.astype(np.int64)


STR_LABELS = np.array(["cat", "dog", "bird", "fish"])


def with_nan(X, seed, frac=0.12):
    X = X.copy()
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < frac] = np.nan
    return X


# --------------------------------------------------------------------------
# Builders: each returns (Exported(onx, library model, covers, covers_note),
# source_model_predict_fn, note); `fit` data is seeded per builder (_seed(name) % (2**31 - 1)).
# models/make_contributions.py calls them again to explain the same library models.
# --------------------------------------------------------------------------

BUILDERS = []


def builder(name, family, task, features, *, labels=None, cat_cols=()):
    def deco(fn):
        BUILDERS.append(dict(name=name, family=family, task=task, features=features,
                             labels=labels, cat_cols=cat_cols, fn=fn))
        return fn
    return deco


def _seed(name):
    return int(hashlib.sha256(f"{SEED}:{name}".encode()).hexdigest()[:8], 16)


def reg_pred(m):
    return lambda X: m.predict(X)


def clf_pred(m):
    return lambda X: m.predict_proba(X)


# ---- scikit-learn trees ----------------------------------------------------

from sklearn.dummy import DummyClassifier, DummyRegressor  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingClassifier,
    GradientBoostingRegressor, HistGradientBoostingClassifier,
    HistGradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor)
from sklearn.linear_model import (  # noqa: E402
    LinearRegression, LogisticRegression, Ridge, SGDClassifier)
from sklearn.svm import LinearSVC, LinearSVR  # noqa: E402

RF = dict(n_estimators=8, max_depth=5, n_jobs=1)


@builder("skl_rf_reg", "sklearn.RandomForestRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = RandomForestRegressor(random_state=s, **RF).fit(X, y)
    return skl(m, 8), reg_pred(m), "float32 input"


@builder("skl_rf_reg_f64", "sklearn.RandomForestRegressor", "regression", 6)
def _(s):
    X, y = reg_data(6, s)
    X = X.astype(np.float64)
    m = RandomForestRegressor(random_state=s, **RF).fit(X, y)
    return skl(m, 6, double=True), reg_pred(m), "DoubleTensorType input"


@builder("skl_rf_reg_multiout", "sklearn.RandomForestRegressor", "regression", 6)
def _(s):
    X, y = reg_data(6, s, n_targets=3)
    m = RandomForestRegressor(random_state=s, **RF).fit(X, y)
    return skl(m, 6), reg_pred(m), "3 targets (n_targets=3)"


@builder("skl_rf_reg_int64", "sklearn.RandomForestRegressor", "regression", 6)
def _(s):
    X, y = reg_data(6, s)
    X = np.round(X * 3)
    m = RandomForestRegressor(random_state=s, **RF).fit(X, y)
    return skl(m, 6, int64=True), reg_pred(m), "Int64TensorType input (integer-valued features)"


@builder("skl_rf_bin", "sklearn.RandomForestClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = RandomForestClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "zipmap=False"


@builder("skl_rf_bin_zipmap", "sklearn.RandomForestClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = RandomForestClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 8), clf_pred(m), "default zipmap=True"


@builder("skl_rf_multi", "sklearn.RandomForestClassifier", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    y = y * 10 + 5  # non-contiguous int labels 5, 15, 25
    m = RandomForestClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "int labels 5/15/25, zipmap=False"


@builder("skl_rf_multi_str_zipmap", "sklearn.RandomForestClassifier", "multiclass", 8, labels="string")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = RandomForestClassifier(random_state=s, **RF).fit(X, STR_LABELS[y])
    return skl(m, 8), clf_pred(m), "string labels, default zipmap=True"


@builder("skl_rf_multi_str", "sklearn.RandomForestClassifier", "multiclass", 8, labels="string")
def _(s):
    X, y = clf_data(8, s, n_classes=4)
    m = RandomForestClassifier(random_state=s, **RF).fit(X, STR_LABELS[y])
    return skl(m, 8, zipmap=False), clf_pred(m), "string labels, zipmap=False"


@builder("skl_rf_multi_f64", "sklearn.RandomForestClassifier", "multiclass", 6, labels="int64")
def _(s):
    X, y = clf_data(6, s, n_classes=3)
    X = X.astype(np.float64)
    m = RandomForestClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 6, double=True, zipmap=False), clf_pred(m), "DoubleTensorType input, zipmap=False"


@builder("skl_rf_bin_nan", "sklearn.RandomForestClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    X = with_nan(X, s)
    m = RandomForestClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), (
        "trained with NaN (sklearn >= 1.4 trees support missing values), zipmap=False. UNFAITHFUL on NaN "
        "input: skl2onnx writes nodes_missing_value_tracks_true all 0 (as for every sklearn RF/ET here)")


@builder("skl_et_reg", "sklearn.ExtraTreesRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = ExtraTreesRegressor(random_state=s, **RF).fit(X, y)
    return skl(m, 8), reg_pred(m), ""


@builder("skl_et_bin", "sklearn.ExtraTreesClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = ExtraTreesClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "zipmap=False"


@builder("skl_et_multi", "sklearn.ExtraTreesClassifier", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = ExtraTreesClassifier(random_state=s, **RF).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "zipmap=False"


GB = dict(n_estimators=10, max_depth=3, learning_rate=0.2)


@builder("skl_gb_reg", "sklearn.GradientBoostingRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = GradientBoostingRegressor(random_state=s, **GB).fit(X, y)
    return skl(m, 8), reg_pred(m), "default init (mean)"


@builder("skl_gb_reg_huber", "sklearn.GradientBoostingRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = GradientBoostingRegressor(random_state=s, loss="huber", **GB).fit(X, y)
    return skl(m, 8), reg_pred(m), (
        "loss='huber': default init_ is DummyRegressor(quantile 0.5) -> base_values=median")


@builder("skl_gb_reg_quantile", "sklearn.GradientBoostingRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = GradientBoostingRegressor(random_state=s, loss="quantile", alpha=0.9, **GB).fit(X, y)
    return skl(m, 8), reg_pred(m), "loss='quantile', alpha=0.9: base_values = 0.9-quantile of y"


@builder("skl_gb_reg_init_estimator", "sklearn.GradientBoostingRegressor", "regression", 8)
def _(s):
    # Kept to document the limit: skl2onnx 1.20 only exports init=None or init='zero'
    # (raises NotImplementedError otherwise); skl_gb_reg_huber / _quantile cover non-mean inits.
    X, y = reg_data(8, s)
    m = GradientBoostingRegressor(random_state=s, init=DummyRegressor(strategy="median"), **GB).fit(X, y)
    return skl(m, 8), reg_pred(m), "init=DummyRegressor(strategy='median')"


@builder("skl_gb_reg_zero", "sklearn.GradientBoostingRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = GradientBoostingRegressor(random_state=s, init="zero", **GB).fit(X, y)
    return skl(m, 8), reg_pred(m), "init='zero'"


@builder("skl_gb_bin", "sklearn.GradientBoostingClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = GradientBoostingClassifier(random_state=s, **GB).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "zipmap=False"


@builder("skl_gb_bin_zero", "sklearn.GradientBoostingClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = GradientBoostingClassifier(random_state=s, init="zero", **GB).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "init='zero' (base_values 0), zipmap=False"


@builder("skl_gb_bin_exp", "sklearn.GradientBoostingClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = GradientBoostingClassifier(random_state=s, loss="exponential", **GB).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), (
        "loss='exponential' (Mul 2 + Sigmoid after the trees), zipmap=False")


@builder("skl_gb_multi", "sklearn.GradientBoostingClassifier", "multiclass", 8, labels="string")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = GradientBoostingClassifier(random_state=s, **GB).fit(X, STR_LABELS[y])
    return skl(m, 8, zipmap=False), clf_pred(m), "string labels, zipmap=False"


HGB = dict(max_iter=10, max_depth=4, learning_rate=0.2)


@builder("skl_hgb_reg", "sklearn.HistGradientBoostingRegressor", "regression", 8)
def _(s):
    patch_skl2onnx_hgb()
    X, y = reg_data(8, s)
    X = with_nan(X, s)
    m = HistGradientBoostingRegressor(random_state=s, **HGB).fit(X, y)
    return skl(m, 8), reg_pred(m), "trained with NaN; add_node patch"


@builder("skl_hgb_reg_poisson", "sklearn.HistGradientBoostingRegressor", "regression", 6)
def _(s):
    patch_skl2onnx_hgb()
    X, y = reg_data(6, s)
    y = np.exp((y - y.mean()) / (3 * y.std()))
    m = HistGradientBoostingRegressor(random_state=s, loss="poisson", **HGB).fit(X, y)
    return skl(m, 6), reg_pred(m), (
        "loss='poisson'; add_node patch. UNFAITHFUL: skl2onnx writes no exp link, "
                                "the ONNX output is the raw log-scale score (exp(onnx) ~ sklearn)")


@builder("skl_hgb_bin", "sklearn.HistGradientBoostingClassifier", "binary", 8, labels="int64")
def _(s):
    patch_skl2onnx_hgb()
    X, y = clf_data(8, s)
    X = with_nan(X, s)
    m = HistGradientBoostingClassifier(random_state=s, **HGB).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "trained with NaN, zipmap=False; add_node patch"


@builder("skl_hgb_multi", "sklearn.HistGradientBoostingClassifier", "multiclass", 8, labels="int64")
def _(s):
    patch_skl2onnx_hgb()
    X, y = clf_data(8, s, n_classes=3)
    X = with_nan(X, s)
    m = HistGradientBoostingClassifier(random_state=s, **HGB).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "trained with NaN, zipmap=False; add_node patch"


@builder("skl_hgb_bin_cat", "sklearn.HistGradientBoostingClassifier", "binary", 6, labels="int64",
         cat_cols=(0,))
def _(s):
    patch_skl2onnx_hgb()
    X, y = clf_data(6, s)
    X[:, 0] = np.floor(np.abs(X[:, 0]) * 2) % 5
    m = HistGradientBoostingClassifier(random_state=s, categorical_features=[0], **HGB).fit(X, y)
    return skl(m, 6, zipmap=False), clf_pred(m), (
        "categorical_features=[0]; add_node patch. UNFAITHFUL: skl2onnx exports the categorical "
                                "bitset splits as plain BRANCH_LEQ thresholds")


# ---- scikit-learn linear ---------------------------------------------------

@builder("skl_linreg", "sklearn.LinearRegression", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = LinearRegression().fit(X, y)
    return skl(m, 8), reg_pred(m), ""


@builder("skl_linreg_f64", "sklearn.LinearRegression", "regression", 6)
def _(s):
    X, y = reg_data(6, s)
    X = X.astype(np.float64)
    m = LinearRegression().fit(X, y)
    return skl(m, 6, double=True), reg_pred(m), "DoubleTensorType input"


@builder("skl_linreg_multiout", "sklearn.LinearRegression", "regression", 6)
def _(s):
    X, y = reg_data(6, s, n_targets=2)
    m = LinearRegression().fit(X, y)
    return skl(m, 6), reg_pred(m), "2 targets"


@builder("skl_ridge", "sklearn.Ridge", "regression", 10)
def _(s):
    X, y = reg_data(10, s)
    m = Ridge(alpha=1.0).fit(X, y)
    return skl(m, 10), reg_pred(m), ""


@builder("skl_logreg_bin", "sklearn.LogisticRegression", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "zipmap=False"


@builder("skl_logreg_bin_zipmap", "sklearn.LogisticRegression", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    return skl(m, 8), clf_pred(m), "default zipmap=True"


@builder("skl_logreg_bin_str", "sklearn.LogisticRegression", "binary", 8, labels="string")
def _(s):
    X, y = clf_data(8, s)
    m = LogisticRegression(max_iter=1000).fit(X, np.array(["no", "yes"])[y])
    return skl(m, 8, zipmap=False), clf_pred(m), "string labels no/yes, zipmap=False"


@builder("skl_logreg_multinomial", "sklearn.LogisticRegression", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "multinomial (sklearn 1.6 default), zipmap=False"


@builder("skl_logreg_multinomial_str_zipmap", "sklearn.LogisticRegression", "multiclass", 8,
         labels="string")
def _(s):
    X, y = clf_data(8, s, n_classes=4)
    m = LogisticRegression(max_iter=1000).fit(X, STR_LABELS[y])
    return skl(m, 8), clf_pred(m), "multinomial, string labels, default zipmap=True"


@builder("skl_logreg_ovr", "sklearn.LogisticRegression", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = LogisticRegression(max_iter=1000, multi_class="ovr").fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), (
        "multi_class='ovr' (deprecated in 1.5, still allowed in 1.6), zipmap=False")


@builder("skl_logreg_bin_f64", "sklearn.LogisticRegression", "binary", 6, labels="int64")
def _(s):
    X, y = clf_data(6, s)
    X = X.astype(np.float64)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    return skl(m, 6, double=True, zipmap=False), clf_pred(m), "DoubleTensorType input, zipmap=False"


@builder("skl_logreg_bin_int64", "sklearn.LogisticRegression", "binary", 6, labels="int64")
def _(s):
    X, y = clf_data(6, s)
    X = np.round(X * 3)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    return skl(m, 6, int64=True, zipmap=False), clf_pred(m), "Int64TensorType input, zipmap=False"


@builder("skl_logreg_multi_f64", "sklearn.LogisticRegression", "multiclass", 6, labels="int64")
def _(s):
    X, y = clf_data(6, s, n_classes=3)
    X = X.astype(np.float64)
    m = LogisticRegression(max_iter=1000).fit(X, y)
    return skl(m, 6, double=True, zipmap=False), clf_pred(m), "DoubleTensorType input, zipmap=False"


@builder("skl_linsvc_bin", "sklearn.LinearSVC", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = LinearSVC(random_state=s).fit(X, y)
    return skl(m, 8), lambda X: m.decision_function(X), "no probabilities: scores = decision_function"


@builder("skl_linsvc_multi", "sklearn.LinearSVC", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = LinearSVC(random_state=s).fit(X, y)
    return skl(m, 8), lambda X: m.decision_function(X), "ovr scores = decision_function"


@builder("skl_linsvr", "sklearn.LinearSVR", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = LinearSVR(random_state=s, max_iter=5000).fit(X, y)
    return skl(m, 8), reg_pred(m), ""


@builder("skl_sgd_bin", "sklearn.SGDClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = SGDClassifier(random_state=s, loss="hinge").fit(X, y)
    return skl(m, 8, zipmap=False), lambda X: m.decision_function(X), "loss='hinge'"


@builder("skl_sgd_log_multi", "sklearn.SGDClassifier", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = SGDClassifier(random_state=s, loss="log_loss").fit(X, y)
    return skl(m, 8, zipmap=False), clf_pred(m), "loss='log_loss' (ovr probabilities)"


# ---- LightGBM ----------------------------------------------------------------

def _lgb():
    import lightgbm as lgb
    return lgb


LGB = dict(n_estimators=10, num_leaves=15, max_depth=5, learning_rate=0.2, n_jobs=1,
           deterministic=True, verbose=-1, min_child_samples=10)


@builder("lgbm_reg", "lightgbm.LGBMRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = _lgb().LGBMRegressor(random_state=s, **LGB).fit(X, y)
    return lgbm(m, 8), reg_pred(m), ""


@builder("lgbm_reg_nan", "lightgbm.LGBMRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    X = with_nan(X, s)
    m = _lgb().LGBMRegressor(random_state=s, **LGB).fit(X, y)
    return lgbm(m, 8), reg_pred(m), "trained with NaN"


@builder("lgbm_reg_poisson", "lightgbm.LGBMRegressor", "regression", 6)
def _(s):
    X, y = reg_data(6, s)
    y = np.exp((y - y.mean()) / (3 * y.std()))
    m = _lgb().LGBMRegressor(random_state=s, objective="poisson", **LGB).fit(X, y)
    return lgbm(m, 6), reg_pred(m), "objective='poisson'"


@builder("lgbm_bin", "lightgbm.LGBMClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = _lgb().LGBMClassifier(random_state=s, **LGB).fit(X, y)
    return lgbm(m, 8), clf_pred(m), "zipmap=False"


@builder("lgbm_bin_zipmap", "lightgbm.LGBMClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    X = with_nan(X, s)
    m = _lgb().LGBMClassifier(random_state=s, **LGB).fit(X, y)
    return lgbm(m, 8, zipmap=True), clf_pred(m), "trained with NaN, zipmap=True"


@builder("lgbm_multi", "lightgbm.LGBMClassifier", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = _lgb().LGBMClassifier(random_state=s, **LGB).fit(X, y)
    return lgbm(m, 8), clf_pred(m), "zipmap=False"


@builder("lgbm_multi_str", "lightgbm.LGBMClassifier", "multiclass", 8, labels="string")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = _lgb().LGBMClassifier(random_state=s, **LGB).fit(X, STR_LABELS[y])
    return lgbm(m, 8), clf_pred(m), "string labels, zipmap=False"


def _cat_data(s, n_features=6, n_classes=None):
    rng = np.random.default_rng(s)
    n = 500
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    cat = rng.integers(0, 6, size=n)
    X[:, 0] = cat
    effect = np.array([2.0, -1.0, 0.5, -2.0, 1.5, 0.0])[cat]
    z = effect + X[:, 1] - 0.5 * X[:, 2] + 0.3 * rng.normal(size=n)
    return X, z


@builder("lgbm_reg_cat", "lightgbm.LGBMRegressor", "regression", 6, cat_cols=(0,))
def _(s):
    X, z = _cat_data(s)
    m = _lgb().LGBMRegressor(random_state=s, **LGB).fit(X, z, categorical_feature=[0])
    return lgbm(m, 6), reg_pred(m), "feature 0 categorical (codes 0..5)"


@builder("lgbm_bin_cat", "lightgbm.LGBMClassifier", "binary", 6, labels="int64", cat_cols=(0,))
def _(s):
    X, z = _cat_data(s)
    y = (z > 0).astype(np.int64)
    m = _lgb().LGBMClassifier(random_state=s, **LGB).fit(X, y, categorical_feature=[0])
    return lgbm(m, 6), clf_pred(m), "feature 0 categorical (codes 0..5), zipmap=False"


@builder("lgbm_reg_rf", "lightgbm.LGBMRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = _lgb().LGBMRegressor(random_state=s, boosting_type="rf", bagging_freq=1, bagging_fraction=0.7,
                             **LGB).fit(X, y)
    return lgbm(m, 8), reg_pred(m), (
        "boosting_type='rf' (averaged trees). UNFAITHFUL: onnxmltools divides the "
                                "tree sum by 100 though the model has 10 trees")


# ---- XGBoost -----------------------------------------------------------------

def _xgb():
    import xgboost
    return xgboost


XGB = dict(n_estimators=10, max_depth=4, learning_rate=0.3, n_jobs=1, tree_method="hist")


@builder("xgb_reg", "xgboost.XGBRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    m = _xgb().XGBRegressor(random_state=s, **XGB).fit(X, y)
    return xgb(m, 8), reg_pred(m), ""


@builder("xgb_reg_nan", "xgboost.XGBRegressor", "regression", 8)
def _(s):
    X, y = reg_data(8, s)
    X = with_nan(X, s)
    m = _xgb().XGBRegressor(random_state=s, **XGB).fit(X, y)
    return xgb(m, 8), reg_pred(m), "trained with NaN"


@builder("xgb_reg_poisson", "xgboost.XGBRegressor", "regression", 6)
def _(s):
    X, y = reg_data(6, s)
    y = np.exp((y - y.mean()) / (3 * y.std()))
    m = _xgb().XGBRegressor(random_state=s, objective="count:poisson", **XGB).fit(X, y)
    return xgb(m, 6), reg_pred(m), "objective='count:poisson'"


@builder("xgb_bin", "xgboost.XGBClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    X = with_nan(X, s)
    m = _xgb().XGBClassifier(random_state=s, **XGB).fit(X, y)
    return xgb(m, 8), clf_pred(m), "trained with NaN"


@builder("xgb_multi", "xgboost.XGBClassifier", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=3)
    m = _xgb().XGBClassifier(random_state=s, **XGB).fit(X, y)
    return xgb(m, 8), clf_pred(m), ""


@builder("xgb_multi_nan", "xgboost.XGBClassifier", "multiclass", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s, n_classes=4)
    X = with_nan(X, s)
    m = _xgb().XGBClassifier(random_state=s, **XGB).fit(X, y)
    return xgb(m, 8), clf_pred(m), "trained with NaN, 4 classes"


@builder("xgb_reg_cat", "xgboost.XGBRegressor", "regression", 6, cat_cols=(0,))
def _(s):
    X, z = _cat_data(s)
    m = _xgb().XGBRegressor(random_state=s, enable_categorical=True,
                            feature_types=["c"] + ["q"] * 5, **XGB).fit(X, z)
    return xgb(m, 6), reg_pred(m), "feature 0 categorical (feature_types 'c', codes 0..5)"


@builder("xgb_reg_logistic", "xgboost.XGBRegressor", "regression", 6)
def _(s):
    X, y = reg_data(6, s)
    y = 1.0 / (1.0 + np.exp(-(y - y.mean()) / y.std()))
    m = _xgb().XGBRegressor(random_state=s, objective="reg:logistic", **XGB).fit(X, y)
    return xgb(m, 6), reg_pred(m), ("objective='reg:logistic'. UNFAITHFUL: onnxmltools writes no sigmoid and "
                                "puts base_score (a probability) in base_values as if it were a margin")


@builder("xgb_bin_logitraw", "xgboost.XGBClassifier", "binary", 8, labels="int64")
def _(s):
    X, y = clf_data(8, s)
    m = _xgb().XGBClassifier(random_state=s, objective="binary:logitraw", **XGB).fit(X, y)
    return xgb(m, 8), lambda X: m.predict(X, output_margin=True), "objective='binary:logitraw'"


# --------------------------------------------------------------------------
# Normalisation, validation, description
# --------------------------------------------------------------------------

def normalise(onx: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Pin everything that would otherwise differ between runs."""
    onx.graph.name = name
    opsets = {}
    for imp in onx.opset_import:
        opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    del onx.opset_import[:]
    onx.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    return onx


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30,
                     1e-45, 3.0e38, -3.0e38, 1e300])


INT64_SPECIALS = np.array([0, -1, 1, 2**24 + 1, -(2**24 + 1), 2**53 + 1, -(2**53 + 1),
                           np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64)


def check_rows(n_features: int, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.int64:
        X = np.round(rng.normal(scale=6.0, size=(N_CHECK_ROWS, n_features))).astype(np.int64)
        special = rng.random(X.shape) < 0.15
        X[special] = rng.choice(INT64_SPECIALS, size=int(special.sum()))
        X[0, :] = np.iinfo(np.int64).max
        X[1, :] = 0
        X[2, :] = np.iinfo(np.int64).min
        return X
    # small integer-ish values (categorical codes, exact thresholds)
    return float_rows(rng, N_CHECK_ROWS, n_features, int_rate=0.1, int_high=8,
                      specials=SPECIALS, dtype=dtype)


def session(data: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # declared-vs-actual shape warnings: recorded as ort_shape instead
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def type_desc(tp):
    """(kind, elem_type, shape) for a graph input/output ValueInfo type."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        shape = []
        for d in tp.tensor_type.shape.dim:
            shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        return "tensor", ELEM.get(tp.tensor_type.elem_type, str(tp.tensor_type.elem_type)), shape
    if which == "sequence_type":
        m = tp.sequence_type.elem_type.map_type
        key = ELEM.get(m.key_type, str(m.key_type))
        val = ELEM.get(m.value_type.tensor_type.elem_type)
        return "zipmap", f"seq(map({key},{val}))", [None]
    return which, None, None


def op_name(node):
    return f"{node.domain}.{node.op_type}" if node.domain else node.op_type


def source_diff(sess, X, predict, in_name):
    """max |onnx - source| on ordinary rows (first output that is a float tensor)."""
    try:
        ref = np.asarray(predict(X), dtype=np.float64)
    except Exception as exc:  # source cannot take these rows (e.g. NaN in a linear model)
        return f"n/a: source raises {type(exc).__name__}"
    outs = sess.run(None, {in_name: X})
    best = None
    for o in outs:
        if isinstance(o, list):  # zipmap
            o = np.array([[d[k] for k in d] for d in o])
        o = np.asarray(o)
        if o.dtype.kind != "f":
            continue
        o = o.astype(np.float64)
        if ref.ndim == 1 and o.ndim == 2 and o.shape[1] == 2 and o.shape[0] == ref.shape[0]:
            o = o[:, 1]  # binary decision_function / margin vs [-s, s] or [1-p, p]
        if o.size == ref.size:
            d = float(np.max(np.abs(o.reshape(ref.shape) - ref)))
            best = d if best is None else min(best, d)
    return best


# --------------------------------------------------------------------------
# Graph description (--notes): what a native engine has to cover
# --------------------------------------------------------------------------

ENUM_ATTRS = {"post_transform", "aggregate_function", "nodes_modes", "multi_class", "norm", "to",
              "axis", "axes", "keepdims", "select_last_index", "n_targets", "noop_with_empty_axes",
              "allowzero"}


def _attr(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dec(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [_dec(x) for x in v]
    return v


def _short(v, n=8):
    v = _dec(v)
    if isinstance(v, onnx.TensorProto):
        arr = onnx.numpy_helper.to_array(v)
        tname = onnx.TensorProto.DataType.Name(v.data_type)
        return f"tensor<{tname}{list(arr.shape)}>{_short(arr.ravel().tolist(), n)}"
    if isinstance(v, list):
        if len(v) > n:
            return "[" + ", ".join(_fmt(x) for x in v[:n]) + f", ... ({len(v)} values)]"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return _fmt(v)


def _fmt(x):
    if isinstance(x, float):
        return repr(float(np.float32(x))) if np.float32(x) == x else repr(x)
    if isinstance(x, str):
        return repr(x)
    return str(x)


def _tree_summary(node, a, is_clf):
    out = []
    names = sorted(a)
    out.append(f"attributes present: {', '.join(names)}")
    pt = _dec(a["post_transform"]) if "post_transform" in a else "absent (default NONE)"
    out.append(f"post_transform: {pt}")
    if not is_clf:
        agg = _dec(a["aggregate_function"]) if "aggregate_function" in a else "absent (default SUM)"
        out.append(f"aggregate_function: {agg}")
        out.append(f"n_targets: {a.get('n_targets', 'absent')}")
    modes = [_dec(m) for m in a["nodes_modes"]]
    cnt = {m: modes.count(m) for m in sorted(set(modes))}
    treeids = a["nodes_treeids"]
    out.append(f"trees: {len(set(treeids))}, nodes: {len(modes)}, nodes_modes: {cnt}")
    nid = a["nodes_nodeids"]
    local = all(nid[i] == (nid[i - 1] + 1 if i and treeids[i] == treeids[i - 1] else 0)
                for i in range(len(nid)))
    out.append("nodes_nodeids: " + ("per-tree 0..n-1 in order" if local else "NOT per-tree 0..n-1 in order"))
    feats = a["nodes_featureids"]
    out.append(f"nodes_featureids range: {min(feats)}..{max(feats)}")
    mv = a.get("nodes_missing_value_tracks_true")
    if mv is None:
        out.append("nodes_missing_value_tracks_true: absent")
    else:
        ones = sum(1 for v in mv if v)
        ones_branch = sum(1 for v, m in zip(mv, modes) if v and m != "LEAF")
        by_mode = {m: sum(1 for v, mm in zip(mv, modes) if v and mm == m) for m in sorted(set(modes))}
        out.append(f"nodes_missing_value_tracks_true: present, len {len(mv)}, {ones} ones "
                   f"({ones_branch} on branch nodes; by mode {by_mode}); values {sorted(set(mv))}")
    if "nodes_hitrates" in a:
        hr = a["nodes_hitrates"]
        out.append(f"nodes_hitrates: present, distinct {_short(sorted(set(hr)))}")
    vals = a.get("nodes_values")
    if vals is not None:
        branch_vals = [v for v, m in zip(vals, modes) if m != "LEAF"]
        nonfinite = sum(1 for v in branch_vals if not np.isfinite(v))
        out.append(f"nodes_values (float attr): {len(vals)} values, "
                   f"non-finite thresholds on branches: {nonfinite}")
        for m in sorted(set(modes) - {"LEAF", "BRANCH_LEQ", "BRANCH_LT"}):
            mv_ = sorted(set(v for v, mm in zip(vals, modes) if mm == m))
            out.append(f"thresholds at {m}: {_short(mv_, 16)}")
    for k in sorted(a):
        if k.endswith("_as_tensor"):
            out.append(f"{k}: {_short(a[k])}")
    if "base_values" in a:
        out.append(f"base_values: {_short(a['base_values'])}")
    else:
        out.append("base_values: absent")
    if is_clf:
        if "classlabels_int64s" in a:
            out.append(f"classlabels: int64 {_short(a['classlabels_int64s'])}")
        if "classlabels_strings" in a:
            out.append(f"classlabels: string {_short(a['classlabels_strings'])}")
        ids = sorted(set(a["class_ids"]))
        out.append(f"class_ids used: {ids}; class_weights: {len(a['class_weights'])} values "
                   f"(leaves: {cnt.get('LEAF', 0)})")
    else:
        ids = sorted(set(a["target_ids"]))
        out.append(f"target_ids used: {ids}; target_weights: {len(a['target_weights'])} values "
                   f"(leaves: {cnt.get('LEAF', 0)})")
    return out


ORT_ELEM = {"float": "FP32", "double": "FP64", "int64": "INT64", "int32": "INT32", "bool": "BOOL",
            "string": "STRING"}


def _ort_type(t: str) -> str:
    for k, v in ORT_ELEM.items():
        t = t.replace(f"tensor({k})", v).replace(f"({k},", f"({v},")
    return t


def _value_types(onx):
    """Element type of every named value as onnxruntime types it: every node output is
    exposed as a graph output (untyped) and read back from the session."""
    m = onnx.ModelProto()
    m.CopyFrom(onx)
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for o in node.output:
            if o and o not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
                have.add(o)
    out = {}
    try:
        sess = session(m.SerializeToString())
        for v in list(sess.get_inputs()) + list(sess.get_outputs()):
            out[v.name] = _ort_type(v.type)
    except Exception:
        pass
    for t in onx.graph.initializer:
        out[t.name] = ELEM.get(t.data_type, onnx.TensorProto.DataType.Name(t.data_type))
    return out


def _schema_attrs(domain, op, version):
    try:
        return set(onnx.defs.get_schema(op, version, domain).attributes)
    except Exception:
        return set()


def describe(onx):
    """Markdown lines for one model + {(domain, op): {attr: set(values)}}."""
    inits = {t.name: t for t in onx.graph.initializer}
    types = _value_types(onx)
    lines, ops = [], {}
    for i, node in enumerate(onx.graph.node):
        a = _attr(node)
        key = (node.domain or "ai.onnx", node.op_type)
        rec = ops.setdefault(key, {})
        rec.setdefault("(type signatures: non-initializer inputs -> outputs)", set()).add(
            "(" + ", ".join(types.get(x, "?") for x in node.input if x not in inits) + ") -> ("
            + ", ".join(types.get(x, "?") for x in node.output) + ")")
        for k, v in a.items():
            vs = rec.setdefault(k, set())
            if k in ENUM_ATTRS:
                v = _dec(v)
                if k == "to":
                    v = onnx.TensorProto.DataType.Name(v)
                vs.update(v if isinstance(v, list) else [v])
            else:
                vs.add("present")

        def io(n):
            if n in inits:
                t = inits[n]
                arr = onnx.numpy_helper.to_array(t)
                tname = onnx.TensorProto.DataType.Name(t.data_type)
                return f"{n}=init<{tname}{list(arr.shape)}>{_short(arr.ravel().tolist(), 6)}"
            return f"{n}:{types.get(n, '?')}" if n else "''"

        lines.append(f"{i}. `{node.op_type}` ({node.domain or 'ai.onnx'}) "
                     f"{', '.join(io(x) for x in node.input)} -> {', '.join(io(x) for x in node.output)}")
        det = []
        if node.op_type in ("TreeEnsembleRegressor", "TreeEnsembleClassifier"):
            det = _tree_summary(node, a, node.op_type.endswith("Classifier"))
        elif node.op_type == "Cast":
            det = [f"to: {onnx.TensorProto.DataType.Name(a['to'])}"]
        else:
            for k in sorted(a):
                v = a[k]
                if k in ("classlabels_int64s", "classlabels_ints"):
                    det.append(f"{k}: int64 {_short(v)}")
                elif k == "classlabels_strings":
                    det.append(f"{k}: string {_short(v)}")
                elif k == "to":
                    det.append(f"to: {onnx.TensorProto.DataType.Name(v)}")
                else:
                    det.append(f"{k}: {_short(v, 6)}")
            if node.op_type in ("LinearClassifier", "LinearRegressor") and "post_transform" not in a:
                det.append("post_transform: absent (default NONE)")
            if node.op_type == "LinearClassifier" and "multi_class" not in a:
                det.append("multi_class: absent (default 0)")
        lines.extend(f"   - {d}" for d in det)
    return lines, ops


def _tree_facts(onx):
    """Per-model facts for the overview table."""
    f = {"post": set(), "modes": set(), "mvt1": 0, "base": "-", "binary1": False, "cast": set(),
         "norm": set(), "zipmap": "-", "multi_class": set(), "agg": set()}
    for node in onx.graph.node:
        a = _attr(node)
        if node.op_type.startswith("TreeEnsemble") or node.op_type.startswith("Linear"):
            f["post"].add(_dec(a.get("post_transform", b"NONE")))
        if node.op_type.startswith("TreeEnsemble"):
            f["modes"].update(_dec(a["nodes_modes"]))
            f["mvt1"] += sum(1 for v in a.get("nodes_missing_value_tracks_true", []) if v)
            if "base_values" in a:
                f["base"] = f"{len(a['base_values'])} value(s)"
            if "aggregate_function" in a:
                f["agg"].add(_dec(a["aggregate_function"]))
            if node.op_type.endswith("Classifier"):
                ncl = len(a.get("classlabels_int64s", a.get("classlabels_strings", [])))
                if ncl == 2 and set(a["class_ids"]) == {0}:
                    f["binary1"] = True
        if node.op_type == "LinearClassifier":
            f["multi_class"].add(a.get("multi_class", 0))
            ncl = len(a.get("classlabels_ints", a.get("classlabels_strings", [])))
            if ncl == 2 and len(a["intercepts"]) == 1:
                f["binary1"] = True
        if node.op_type == "Cast":
            f["cast"].add(onnx.TensorProto.DataType.Name(a["to"]))
        if node.op_type == "Normalizer":
            f["norm"].add(_dec(a["norm"]))
        if node.op_type == "ZipMap":
            f["zipmap"] = "int64 keys" if "classlabels_int64s" in a else "string keys"
    return f


def write_notes(path: Path, entries, models, dropped):
    allops = {}
    used_by = {}
    opset_of = {}
    body = []
    table = ["| model | ops after the first | post_transform | nodes_modes | mvt=1 | base_values | "
             "2 classes, 1 score column | Cast to | Normalizer | ZipMap | LinearClassifier multi_class |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        onx = models[e["name"]]
        lines, ops = describe(onx)
        for k, rec in ops.items():
            dst = allops.setdefault(k, {})
            for an, vs in rec.items():
                d = dst.setdefault(an, [set(), set()])
                d[0].update(vs)
                d[1].add(e["name"])
            used_by.setdefault(k, []).append(e["name"])
            opset_of.setdefault(k, set()).add(
                {imp.domain or "ai.onnx": imp.version for imp in onx.opset_import}.get(k[0], 1))
        f = _tree_facts(onx)
        j = lambda xs: ", ".join(sorted(map(str, xs))) or "-"
        modes = j(m.replace("BRANCH_", "") for m in f["modes"] if m != "LEAF")
        table.append(f"| {e['name']} | {', '.join(e['ops'][1:]) or '-'} | {j(f['post'])} | "
                     f"{modes} | {f['mvt1']} | {f['base']} | "
                     f"{'yes' if f['binary1'] else '-'} | {j(f['cast'])} | {j(f['norm'])} | {f['zipmap']} | "
                     f"{j(f['multi_class'])} |")
        ins = "; ".join(f"{i['name']}: {i['elem_type']}{i['shape']}" for i in e["inputs"])
        outs = "; ".join(f"{o['name']}: {o['kind']} {o['elem_type']} declared {o['shape']} "
                         f"/ ORT {o['ort_shape']}" for o in e["outputs"])
        body.append(f"### {e['name']}\n")
        body.append(f"- family `{e['family']}`, task {e['task']}, labels {e['labels']}, "
                    f"features {e['features']}, {e['bytes']} bytes")
        body.append(f"- opsets {e['opsets']}, ir_version {e['ir_version']}, producer {e['producer']}")
        body.append(f"- note: {e['note'] or '-'}")
        body.append(f"- max |onnx - source| on 200 ordinary rows: {e['source_max_abs_diff']}; "
                    f"on the same rows with 15% NaN: {e['source_max_abs_diff_nan']}")
        body.append(f"- inputs: {ins}")
        body.append(f"- outputs: {outs}\n")
        body.extend(lines)
        body.append("")

    n_models = len(entries)
    head = ["# Corpus graphs (models/corpus)", "",
            "Generated by `python3 models/make_corpus.py --notes /work/notes/corpus-graphs.md` "
            f"({n_models} models); do not edit by hand. Node lists are in graph order; initializer inputs "
            "are shown as `name=init<TYPE[shape]>[values]`; long lists are cut with the total count. "
            "An attribute not listed for a node is absent from the file (the ONNX default applies).",
            "",
            "## Overview", "",
            "`mvt=1`: number of nodes with nodes_missing_value_tracks_true = 1. "
            "`2 classes, 1 score column`: a binary classifier whose ensemble/linear model scores only "
            "class id 0 (TreeEnsembleClassifier class_ids all 0, or LinearClassifier with one intercept); "
            "onnxruntime then derives the second column itself (ORT binary special case).",
            ""] + table + [
            "",
            "## Distinct (domain, op_type) across the corpus", "",
            "Enumerated attributes (post_transform, aggregate_function, nodes_modes, multi_class, norm, to, "
            "axis, keepdims, ...) list every value seen; other attributes say `present`; "
            "each says in how many of the op's models it appears.", ""]
    for (dom, op) in sorted(allops):
        rec = allops[(dom, op)]
        nm = len(used_by[(dom, op)])
        head.append(f"- **{dom}.{op}** ({nm} models)")
        for an in sorted(rec):
            vs, ms = rec[an]
            sep = "; " if an.startswith("(") else ", "
            head.append(f"  - {an}: {sep.join(sorted(map(str, vs)))} ({len(ms)}/{nm} models)")
        vers = sorted({v for v in opset_of[(dom, op)]})
        never = set()
        for v in vers:
            never |= _schema_attrs("" if dom == "ai.onnx" else dom, op, v)
        never -= set(rec)
        latest = _schema_attrs("" if dom == "ai.onnx" else dom, op, 10**6) - set(rec) - never
        head.append(f"  - opset versions imported by its models: {vers}; attributes of that schema never "
                    f"present: {', '.join(sorted(never)) or 'none'}; only in a newer schema (so absent): "
                    f"{', '.join(sorted(latest)) or 'none'}")
        head.append(f"  - used by: {', '.join(used_by[(dom, op)])}")
    head.append("")
    head.append("## Exporter quirks found (computed from the manifest)")
    head.append("")
    for e in entries:
        for o in e["outputs"]:
            if o["shape"] != o["ort_shape"]:
                head.append(f"- {e['name']}: output `{o['name']}` declared shape {o['shape']} but onnxruntime "
                            f"returns {o['ort_shape']} (batch dim as null)")
    for e in entries:
        d, dn = e["source_max_abs_diff"], e["source_max_abs_diff_nan"]
        if isinstance(d, float) and d > 1e-3:
            head.append(f"- {e['name']}: ONNX differs from the source estimator on ordinary rows "
                        f"(max |diff| {d}): {e['note']}")
        elif isinstance(dn, float) and dn > 1e-3:
            head.append(f"- {e['name']}: ONNX matches the source on ordinary rows but not on rows with NaN "
                        f"(max |diff| {dn}); the exporter does not carry the library's missing-value routing")
    head.append("")
    head.append("## Tried and not in the corpus")
    head.append("")
    for d in dropped:
        head.append(f"- {d['name']} ({d['stage']}): {d['error']}")
    if not dropped:
        head.append("- none")
    head.append("")
    head.append("## Per model")
    head.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + body) + "\n")


def _first_line(exc, n=300):
    text = str(exc).strip()
    text = text.replace("[ONNXRuntimeError] : 1 : FAIL : ", "")
    return text.splitlines()[0][:n] if text else ""


def _round_diff(d):
    if d is None or isinstance(d, str):
        return d
    return float(f"{d:.3g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    parser.add_argument("--only", default="", help="comma-separated model names (no wipe)")
    parser.add_argument("--notes", type=Path, default=None,
                        help="also write a Markdown description of every graph to this path")
    args = parser.parse_args()
    out: Path = args.out
    only = {n for n in args.only.split(",") if n}

    if not only and out.exists():
        # Rewrite this script's own files; `ops/` belongs to make_op_models.py.
        for old in list(out.glob("*.onnx")) + [out / "manifest.json"]:
            old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    manifest, dropped, models = [], [], {}
    for b in BUILDERS:
        name = b["name"]
        if only and name not in only:
            continue
        s = _seed(name) % (2**31 - 1)
        try:
            exported, predict, note = b["fn"](s)
            onx = exported.onx
        except Refused:  # covers that do not map onto the library's trees: a bug, stop
            raise
        except Exception as exc:
            msg = f"{type(exc).__name__}: {_first_line(exc)}"
            print(f"DROP {name}: export failed: {msg}")
            dropped.append({"name": name, "stage": "export", "error": msg})
            continue
        onx = normalise(onx, name)
        data = onx.SerializeToString()
        errors = []
        try:
            onnx.checker.check_model(onx, full_check=True)
        except Exception as exc:
            errors.append(f"onnx.checker(full_check=True): {type(exc).__name__}: {_first_line(exc)}")
        try:
            sess = session(data)
            inp = sess.get_inputs()[0]
            dtype = {"tensor(double)": np.float64, "tensor(int64)": np.int64}.get(inp.type, np.float32)
            X = check_rows(b["features"], dtype, s + 1)
            res = sess.run(None, {inp.name: X})
            assert len(res) == len(sess.get_outputs())
            for r in res:
                n = len(r) if isinstance(r, list) else r.shape[0]
                assert n == N_CHECK_ROWS, (n, N_CHECK_ROWS)
        except Exception as exc:
            errors.append(f"onnxruntime: {type(exc).__name__}: {_first_line(exc)}")
        if errors:
            msg = " | ".join(errors)
            print(f"DROP {name}: validation failed: {msg}")
            dropped.append({"name": name, "stage": "validate", "error": msg})
            continue

        # agreement with the source estimator on ordinary rows
        Xn = np.random.default_rng(s + 2).normal(size=(200, b["features"]))
        Xn = np.round(Xn * 3).astype(dtype) if dtype == np.int64 else Xn.astype(dtype)
        for c in b["cat_cols"]:  # categorical codes as the model saw them
            Xn[:, c] = np.random.default_rng(s + 3).integers(0, 5, size=200)
        diff = source_diff(sess, Xn, predict, inp.name)
        if dtype == np.int64:
            diff_nan = "n/a: integer input"
        else:
            diff_nan = source_diff(sess, with_nan(Xn, s + 4, frac=0.15), predict, inp.name)
        ort_shapes = []
        for r in res:
            if isinstance(r, list):
                ort_shapes.append([None])
            else:
                ort_shapes.append([None] + list(r.shape[1:]))

        path = out / f"{name}.onnx"
        path.write_bytes(data)
        ops = []
        for node in onx.graph.node:
            if op_name(node) not in ops:
                ops.append(op_name(node))
        entry = {
            "name": name,
            "family": b["family"],
            "task": b["task"],
            "file": path.name,
            "bytes": len(data),
            "inputs": [dict(zip(("name", "elem_type", "shape"),
                                (i.name,) + type_desc(i.type)[1:])) for i in onx.graph.input],
            "outputs": [dict(zip(("name", "kind", "elem_type", "shape", "ort_shape"),
                                 (o.name,) + type_desc(o.type) + (osh,)))
                        for o, osh in zip(onx.graph.output, ort_shapes)],
            "ops": ops,
            "labels": b["labels"],
            "features": b["features"],
            "opsets": {(imp.domain or "ai.onnx"): imp.version for imp in onx.opset_import},
            "ir_version": onx.ir_version,
            "producer": f"{onx.producer_name} {onx.producer_version}".strip(),
            "note": note,
            "source_max_abs_diff": _round_diff(diff),
            "source_max_abs_diff_nan": _round_diff(diff_nan),
            "covers": exported.covers,
        }
        models[name] = onx
        manifest.append(entry)
        print(f"ok   {name:<34} {len(data):>6} B  diff={_round_diff(diff)} nan-diff={_round_diff(diff_nan)}"
              f"  ops={','.join(ops)}  {exported.covers_note}")

    if only:
        mpath = out / "manifest.json"
        old = json.loads(mpath.read_text()) if mpath.exists() else []
        names = {e["name"] for e in manifest}
        order = [bb["name"] for bb in BUILDERS]
        manifest = sorted([e for e in old if e["name"] not in names] + manifest,
                          key=lambda e: order.index(e["name"]) if e["name"] in order else 1e9)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if args.notes:
        missing = [e["name"] for e in manifest if e["name"] not in models]
        for n in missing:
            models[n] = onnx.load(str(out / f"{n}.onnx"))
        write_notes(args.notes, manifest, models, dropped)
        print(f"notes written to {args.notes}")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{len(manifest)} models, total size of {out}: {total} bytes")
    for d in dropped:
        print(f"dropped {d['name']} at {d['stage']}: {d['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
