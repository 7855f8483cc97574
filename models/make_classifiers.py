#!/usr/bin/env python3
"""Generate the ZipMap classifiers of manymodels: classifiers exported with skl2onnx's
defaults (ZipMap on), as a store of their own so the demo store's counts stay as they are.
One of them takes a string column (a BYTES input), so string inputs are checked against
ONNX Runtime too.

Layout written (idempotent, overwrites):
    models/classifiers/<model_id>/1/model.onnx
    models/classifiers/reference.json

reference.json holds, per model, a batch of deterministic inputs (FP32, or BYTES as a list of
strings) and every output computed by Python onnxruntime on the written file, converted to
the form the scorer serves (docs/api.md,
"Classifiers"): the label output as INT64 or BYTES (a list of strings), and the ZipMap
output (a list of dicts in Python) as an FP32 tensor [rows, classes] whose columns are the
class labels in ascending order (numbers by value, strings by code point, which is their
UTF-8 byte order). Each ZipMap output also carries "classes", that column order.

Versions: models/requirements.txt.   Usage:  python3 models/make_classifiers.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType

warnings.filterwarnings("ignore")

SEED = 7
VERSION = 1
SKL_OPSET = {"": 17, "ai.onnx.ml": 3}


def data(n_features: int, n_classes: int, rows: int):
    X, y = make_classification(
        n_samples=400,
        n_features=n_features,
        n_informative=min(n_features, 5),
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        random_state=SEED,
    )
    X = np.round(X, 4).astype(np.float32)
    # Reference rows: the first rows of each class in turn, so every class shows up.
    picks = []
    for i in range(rows):
        picks.append(int(np.flatnonzero(y == i % n_classes)[i // n_classes]))
    return X, y, X[picks]


def build_logreg_int():
    """Multinomial logistic regression, integer classes whose numeric and text orders
    differ (3 < 10 < 42, but "10" < "3" < "42")."""
    X, y, rows = data(6, 3, 6)
    labels = np.array([42, 3, 10])[y]
    model = LogisticRegression(max_iter=1000, random_state=SEED).fit(X, labels)
    return model, FloatTensorType([None, 6]), rows


def build_forest_str():
    """A small random forest with string classes, one capitalised (byte order puts
    "Platinum" before "bronze")."""
    X, y, rows = data(8, 4, 8)
    labels = np.array(["silver", "bronze", "gold", "Platinum"])[y]
    model = RandomForestClassifier(n_estimators=8, max_depth=5, random_state=SEED, n_jobs=1)
    model.fit(X, labels)
    return model, FloatTensorType([None, 8]), rows


def build_onehot_str():
    """A string column (one colour a row) one-hot encoded into a logistic regression with
    string classes: the model's input is a string tensor [N, 1] (BYTES). Categories
    include a non-ASCII one ("crème"); unknown categories are ignored (an all-zero row),
    so the reference rows include two the encoder never saw ("ultraviolet" and "")."""
    rng = np.random.default_rng(SEED)
    temperature = {"red": "warm", "orange": "warm", "yellow": "warm", "green": "cool",
                   "blue": "cool", "violet": "cool", "crème": "neutral"}
    colours = rng.choice(np.array(list(temperature), dtype=object), size=300)
    labels = np.array([temperature[c] for c in colours], dtype=object)
    # A quarter of the labels drawn at random, so no probability is 0 or 1.
    noisy = rng.random(colours.size) < 0.25
    labels[noisy] = rng.choice(np.array(["warm", "cool", "neutral"], dtype=object), size=noisy.sum())
    model = make_pipeline(OneHotEncoder(handle_unknown="ignore"),
                          LogisticRegression(max_iter=1000, random_state=SEED))
    model.fit(colours.reshape(-1, 1), labels)
    rows = np.array([["red"], ["blue"], ["crème"], ["ultraviolet"], ["green"], [""]], dtype=object)
    return model, StringTensorType([None, 1]), rows


BUILDERS = [
    ("zipmap-logreg-int", build_logreg_int),
    ("zipmap-forest-str", build_forest_str),
    ("zipmap-onehot-str-input", build_onehot_str),
]


def input_json(name: str, rows: np.ndarray) -> dict:
    """The reference rows as an OIP input: FP32 numbers, or BYTES (JSON strings)."""
    if rows.dtype == object:
        return {"name": name, "datatype": "BYTES", "shape": list(rows.shape),
                "data": [str(v) for v in rows.ravel()]}
    assert rows.dtype == np.float32, rows.dtype
    return {"name": name, "datatype": "FP32", "shape": list(rows.shape),
            "data": [float(v) for v in rows.ravel()]}


def label_json(name: str, arr: np.ndarray) -> dict:
    arr = np.asarray(arr)
    if arr.dtype.kind in "OUS":
        return {"name": name, "datatype": "BYTES", "shape": list(arr.shape), "data": [str(v) for v in arr.ravel()]}
    assert arr.dtype == np.int64, arr.dtype
    return {"name": name, "datatype": "INT64", "shape": list(arr.shape), "data": [int(v) for v in arr.ravel()]}


def zipmap_json(name: str, maps: list[dict], declared: list) -> dict:
    """ZipMap's list of dicts as the served [rows, classes] tensor."""
    classes = sorted(maps[0])
    assert classes == sorted(declared), (classes, declared)
    for row in maps:
        assert sorted(row) == classes
    data = [float(np.float32(row[c])) for row in maps for c in classes]
    classes = [int(c) if isinstance(c, (int, np.integer)) else str(c) for c in classes]
    return {"name": name, "datatype": "FP32", "shape": [len(maps), len(classes)], "data": data, "classes": classes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "classifiers")
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    references = []
    for model_id, builder in BUILDERS:
        model, input_type, rows = builder()
        # skl2onnx's defaults: ZipMap on.
        onx = convert_sklearn(
            model,
            initial_types=[("input", input_type)],
            target_opset=SKL_OPSET,
        )
        # Converters name the graph with a random UUID; pin it so files are byte-stable.
        onx.graph.name = model_id.replace("-", "_")
        opsets = {}
        for imp in onx.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
        del onx.opset_import[:]
        onx.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
        onnx.checker.check_model(onx)
        zipmaps = [n for n in onx.graph.node if n.op_type == "ZipMap"]
        assert len(zipmaps) == 1, model_id
        attrs = {a.name: a for a in zipmaps[0].attribute}
        declared = (
            list(attrs["classlabels_int64s"].ints)
            if "classlabels_int64s" in attrs
            else [s.decode() for s in attrs["classlabels_strings"].strings]
        )
        path = out / model_id / str(VERSION) / "model.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(onx.SerializeToString())

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out_names = [o.name for o in sess.get_outputs()]
        assert out_names == ["output_label", "output_probability"], out_names
        label, probabilities = sess.run(out_names, {"input": rows})
        references.append({
            "id": model_id,
            "version": VERSION,
            "file_bytes": path.stat().st_size,
            "inputs": [input_json("input", rows)],
            "outputs": [label_json("output_label", label), zipmap_json("output_probability", probabilities, declared)],
        })
        print(f"{model_id}: {path.stat().st_size} bytes, classes {references[-1]['outputs'][1]['classes']}")

    (out / "reference.json").write_text(json.dumps({"models": references}, indent=1) + "\n")


if __name__ == "__main__":
    main()
