"""What the real-client scripts (tests/oip_client.py, tests/oip_grpc_client.py) share: the
demo models' reference inputs as numpy arrays, ONNX Runtime run on the same model file,
and the check of a client's outputs against both within rtol = atol = 1e-5."""
import pathlib

import numpy as np
import onnxruntime

ROOT = pathlib.Path(__file__).parent.parent
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def arrays(model):
    return {
        spec["name"]: np.array(spec["data"], dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
        for spec in model["inputs"]
    }


def onnx_runtime(model):
    """The outputs ONNX Runtime gives for the model's reference inputs, by name."""
    path = ROOT / "models/demo" / model["id"] / "1/model.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, arrays(model))))


def check(client, model, got, ort):
    """`got(name)` (a client's output as numpy) against the reference and ONNX Runtime."""
    for expected in model["outputs"]:
        out = got(expected["name"])
        want = np.array(expected["data"], dtype=DTYPES[expected["datatype"]]).reshape(expected["shape"])
        assert out.shape == want.shape, (client, model["id"], expected["name"], out.shape, want.shape)
        np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), **TOLERANCE)
        runtime = ort[expected["name"]].reshape(want.shape)
        np.testing.assert_allclose(out.astype(np.float64), runtime.astype(np.float64), **TOLERANCE)
