#!/usr/bin/env python3
"""Generate the deterministic demo model store for manymodels.

Layout written (idempotent, overwrites):
    models/demo/<model_id>/1/model.onnx
    models/demo/reference.json

reference.json holds, per model, a 3-row batch of deterministic inputs and
every output computed by onnxruntime on the written file. Datatypes use the
Open Inference Protocol names (FP32, FP64, INT32, INT64, BOOL).

Usage:  python3 models/make_demo_models.py [--out DIR]
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
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

warnings.filterwarnings("ignore")

SEED = 42
VERSION = 1
# Opsets/IR chosen conservatively so any recent ONNX Runtime loads them.
SKL_OPSET = {"": 17, "ai.onnx.ml": 3}
HAND_OPSET = 17
HAND_IR_VERSION = 8

NP_TO_OIP = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}


# --------------------------------------------------------------------------
# Model builders. Each returns (onnx.ModelProto, {input_name: np.ndarray}).
# --------------------------------------------------------------------------

def sample_rows(rng: np.random.Generator, n_features: int, dtype=np.float32) -> np.ndarray:
    return np.round(rng.normal(size=(3, n_features)), 4).astype(dtype)


def build_linear_small(rng):
    X, y = make_regression(n_samples=200, n_features=10, noise=0.1, random_state=SEED)
    model = LinearRegression().fit(X.astype(np.float32), y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 10]))],
        target_opset=SKL_OPSET,
    )
    return onx, {"input": sample_rows(rng, 10)}


def build_logistic_churn(rng):
    X, y = make_classification(
        n_samples=500, n_features=8, n_informative=5, n_redundant=1, random_state=SEED
    )
    model = LogisticRegression(max_iter=1000, random_state=SEED).fit(X.astype(np.float32), y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 8]))],
        options={id(model): {"zipmap": False}},
        target_opset=SKL_OPSET,
    )
    # Reference rows taken from the data so both classes show up (0, 1, 0).
    X = np.round(X, 4).astype(np.float32)
    idx = [int(np.flatnonzero(y == 0)[0]), int(np.flatnonzero(y == 1)[0]), int(np.flatnonzero(y == 0)[1])]
    return onx, {"input": X[idx]}


def build_forest_1mb(rng):
    X, y = make_regression(n_samples=1000, n_features=20, noise=1.0, random_state=SEED)
    # Tuned so the exported file lands around 1 MB.
    model = RandomForestRegressor(n_estimators=72, max_depth=8, random_state=SEED, n_jobs=1)
    model.fit(X.astype(np.float32), y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 20]))],
        target_opset=SKL_OPSET,
    )
    return onx, {"input": sample_rows(rng, 20)}


def build_gbm_store(rng):
    X, y = make_regression(n_samples=600, n_features=12, noise=1.0, random_state=SEED)
    X = X.astype(np.float32)
    init = [("input", FloatTensorType([None, 12]))]
    try:
        model = HistGradientBoostingRegressor(max_iter=50, random_state=SEED).fit(X, y)
        onx = convert_sklearn(model, initial_types=init, target_opset=SKL_OPSET)
        ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
        note = "HistGradientBoostingRegressor"
    except Exception as exc:  # skl2onnx/onnx version mismatch
        print(f"  note: HistGradientBoostingRegressor export failed ({exc!s:.80}); "
              "using GradientBoostingRegressor")
        model = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=SEED).fit(X, y)
        onx = convert_sklearn(model, initial_types=init, target_opset=SKL_OPSET)
        note = "GradientBoostingRegressor"
    onx.doc_string = f"gbm-store: {note}"
    return onx, {"input": sample_rows(rng, 12)}


def build_lightgbm_demand(rng):
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

    X, y = make_regression(n_samples=800, n_features=16, noise=1.0, random_state=SEED)
    model = lgb.LGBMRegressor(
        n_estimators=50, num_leaves=15, random_state=SEED, n_jobs=1, deterministic=True, verbose=-1
    )
    model.fit(X.astype(np.float32), y)
    onx = convert_lightgbm(
        model, initial_types=[("input", MLFloat([None, 16]))], target_opset=15
    )
    return onx, {"input": sample_rows(rng, 16)}


def build_linear_f64(rng):
    X, y = make_regression(n_samples=200, n_features=6, noise=0.1, random_state=SEED + 1)
    model = LinearRegression().fit(X, y)
    try:
        onx = convert_sklearn(
            model,
            initial_types=[("input", DoubleTensorType([None, 6]))],
            target_opset=SKL_OPSET,
        )
        ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        print(f"  note: skl2onnx double export failed ({exc!s:.80}); building by hand")
        coef = model.coef_.reshape(6, 1).astype(np.float64)
        bias = np.array([model.intercept_], dtype=np.float64)
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["input", "coef"], ["mm"]),
                helper.make_node("Add", ["mm", "bias"], ["variable"]),
            ],
            "linear_f64",
            [helper.make_tensor_value_info("input", TensorProto.DOUBLE, [None, 6])],
            [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])],
            initializer=[numpy_helper.from_array(coef, "coef"), numpy_helper.from_array(bias, "bias")],
        )
        onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HAND_OPSET)])
        onx.ir_version = HAND_IR_VERSION
    return onx, {"input": sample_rows(rng, 6, np.float64)}


def build_multi_input(rng):
    # features = [numeric(4) | float(flags)(2) | float(store_code)(1)] -> 7
    weights = np.array(
        [[0.5], [-0.25], [1.0], [0.125], [2.0], [-1.5], [0.01]], dtype=np.float32
    )
    bias = np.array([0.75], dtype=np.float32)
    nodes = [
        helper.make_node("Cast", ["flags"], ["flags_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["store_code"], ["store_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["numeric", "flags_f", "store_f"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weights"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["score"]),
        helper.make_node("ReduceSum", ["numeric", "sum_axes"], ["numeric_sum"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_input",
        [
            helper.make_tensor_value_info("numeric", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("flags", TensorProto.BOOL, [None, 2]),
            helper.make_tensor_value_info("store_code", TensorProto.INT64, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("numeric_sum", TensorProto.FLOAT, [None, 1]),
        ],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes"),
        ],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HAND_OPSET)],
                            producer_name="manymodels-demo")
    onx.ir_version = HAND_IR_VERSION
    inputs = {
        "numeric": sample_rows(rng, 4),
        "flags": np.array([[True, False], [False, True], [True, True]], dtype=np.bool_),
        "store_code": np.array([[7], [42], [1001]], dtype=np.int64),
    }
    return onx, inputs


def build_int32_scaler(rng):
    scale = np.array([0.5, 2.0, -1.25], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x_f", "scale"], ["y"]),
        ],
        "int32_scaler",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(scale, "scale")],
    )
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HAND_OPSET)],
                            producer_name="manymodels-demo")
    onx.ir_version = HAND_IR_VERSION
    inputs = {"x": np.array([[1, 2, 3], [-4, 0, 10], [100, -7, 8]], dtype=np.int32)}
    return onx, inputs


BUILDERS = [
    ("linear-small", build_linear_small),
    ("logistic-churn", build_logistic_churn),
    ("forest-1mb", build_forest_1mb),
    ("gbm-store", build_gbm_store),
    ("lightgbm-demand", build_lightgbm_demand),
    ("linear-f64", build_linear_f64),
    ("multi-input", build_multi_input),
    ("int32-scaler", build_int32_scaler),
]


# --------------------------------------------------------------------------

def tensor_json(name: str, arr: np.ndarray) -> dict:
    arr = np.asarray(arr)
    dt = NP_TO_OIP[arr.dtype]
    if dt == "BOOL":
        data = [bool(v) for v in arr.ravel()]
    elif dt in ("FP32", "FP64"):
        # float(np.float32) is exact in double; repr keeps full precision.
        data = [float(v) for v in arr.ravel()]
    else:
        data = [int(v) for v in arr.ravel()]
    return {"name": name, "datatype": dt, "shape": list(arr.shape), "data": data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "demo")
    args = parser.parse_args()
    out: Path = args.out

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    references = []
    rows = []
    for model_id, builder in BUILDERS:
        rng = np.random.default_rng(abs(hash_id(model_id)))
        try:
            onx, inputs = builder(rng)
        except Exception as exc:
            print(f"  note: skipping {model_id}: {exc}")
            continue
        # Converters name the graph with a random UUID; pin it so files are byte-stable.
        onx.graph.name = model_id.replace("-", "_")
        # skl2onnx may list the default domain twice; keep one entry per domain.
        opsets = {}
        for imp in onx.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
        del onx.opset_import[:]
        onx.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
        onnx.checker.check_model(onx)
        path = out / model_id / str(VERSION) / "model.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(onx.SerializeToString())

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sess_inputs = [i.name for i in sess.get_inputs()]
        assert sorted(sess_inputs) == sorted(inputs), (model_id, sess_inputs, list(inputs))
        out_names = [o.name for o in sess.get_outputs()]
        results = sess.run(out_names, inputs)

        file_bytes = path.stat().st_size
        references.append({
            "id": model_id,
            "version": VERSION,
            "file_bytes": file_bytes,
            "inputs": [tensor_json(n, inputs[n]) for n in sess_inputs],
            "outputs": [tensor_json(n, r) for n, r in zip(out_names, results)],
        })
        fmt = lambda ts: ", ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in ts)
        rows.append((model_id, file_bytes, fmt(references[-1]["inputs"]), fmt(references[-1]["outputs"])))

    (out / "reference.json").write_text(json.dumps({"models": references}, indent=1) + "\n")

    w = max(len(r[0]) for r in rows)
    print(f"{'id':<{w}}  {'bytes':>9}  inputs  ->  outputs")
    for mid, nbytes, ins, outs in rows:
        print(f"{mid:<{w}}  {nbytes:>9}  {ins}  ->  {outs}")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size of {out}: {total} bytes")


def hash_id(s: str) -> int:
    """Stable (non-randomized) small hash for per-model seeds."""
    h = SEED
    for ch in s.encode():
        h = (h * 131 + ch) % 2_147_483_647
    return h


if __name__ == "__main__":
    main()
