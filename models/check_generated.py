#!/usr/bin/env python3
"""Cross-checks manymodels-models' generated ONNX models against ONNX Runtime.

Usage: check_generated.py DIR

DIR holds the models and a cases.json written by the crate's test
`onnx_runtime_agrees` (see src/ort_check.rs): for each model, its file name, input rows
and the Rust predictions (`predict` per row, `predict_batch` on all rows), all as f32
bit patterns. For each model this script runs onnx.checker, then ONNX Runtime (CPU) on
each row alone and on all rows as one batch, and compares with the Rust predictions.
Exits non-zero if any relative difference exceeds 1e-5. It also reports how far ORT's
own one-row and batched results differ.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

TOLERANCE = 1e-5


def rel_diff(got, expected):
    scale = np.maximum(np.abs(expected), np.float32(1e-30))
    return np.abs(got.astype(np.float64) - expected.astype(np.float64)) / scale


def main():
    root = Path(sys.argv[1])
    cases = json.loads((root / "cases.json").read_text())
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    failed = False
    for case in cases:
        path = root / case["file"]
        onnx.checker.check_model(str(path), full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = sess.get_inputs()
        (out,) = sess.get_outputs()
        assert (inp.name, out.name) == ("input", "variable"), (inp.name, out.name)
        rows = np.array(case["rows"], dtype=np.uint32).view(np.float32)
        expected = np.array(case["expected"], dtype=np.uint32).view(np.float32)
        expected_batch = np.array(case["expected_batch"], dtype=np.uint32).view(np.float32)
        batch = sess.run(None, {"input": rows})[0]
        assert batch.shape == (len(rows), 1), batch.shape
        single = np.array([sess.run(None, {"input": rows[i : i + 1]})[0][0, 0] for i in range(len(rows))])
        worst = 0.0
        exact = 0
        for got, want in ((single, expected), (batch[:, 0], expected_batch)):
            worst = max(worst, float(rel_diff(got, want).max()))
            exact += int((got.view(np.uint32) == want.view(np.uint32)).sum())
        ort_self = float(rel_diff(batch[:, 0], single).max())
        ok = worst <= TOLERANCE
        failed |= not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} {case['name']:<76} {case['bytes']:>9} B"
            f" nodes={case['nodes']:<7} max_rel={worst:.2e} bit_exact={exact}/{2 * len(rows)}"
            f" (ORT batch vs one-row: {ort_self:.1e})"
        )
    if failed:
        print(f"some models differ from ONNX Runtime by more than {TOLERANCE} relative")
        sys.exit(1)
    print(f"all {len(cases)} models agree with ONNX Runtime within {TOLERANCE} relative")


if __name__ == "__main__":
    main()
