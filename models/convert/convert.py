#!/usr/bin/env python3
"""Convert a scikit-learn, LightGBM or XGBoost model to ONNX, check it, and publish it
into a manymodels store as <store>/<id>/<version>/model.onnx.

    python3 models/convert/convert.py --store DIR --id ID [--version N] [--sample ROWS] MODEL_FILE
    python3 models/convert/convert.py --store DIR --dir SRC [--sample ROWS]

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

import numpy as np

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
    onx = convert(loaded)
    rows = read_sample(sample, loaded.n_features) if sample else generate_sample(onx, loaded.n_features)
    account = check(loaded, onx, rows)
    if version is None:
        version = next_version(store, model_id)
    target = publish(store, model_id, version, onx.SerializeToString())
    kind = "classifier" if loaded.classifier else "regressor"
    return (
        f"ok {model_id} v{version} {loaded.family} {loaded.name} {kind}, {loaded.n_features} features, "
        f"{len(rows)} rows checked: {account} -> {target}"
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
    parser.add_argument("--store", required=True, type=Path, help="local model store root")
    parser.add_argument("--id", help="model id (one model file)")
    parser.add_argument("--version", type=positive_int, help="version to write (default: highest existing + 1)")
    parser.add_argument("--sample", type=Path, help="rows to check on: .npy or .csv, [rows, n_features]")
    parser.add_argument("--dir", type=Path, help="convert every model file in this folder, id = file stem")
    parser.add_argument("model", nargs="?", type=Path, help="model file")
    args = parser.parse_args(argv)

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
