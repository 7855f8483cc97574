"""Scores the demo models through tritonclient.grpc, the way users' gRPC code would, with
its defaults (tensors in raw_input_contents) and the one header the proxy needs to route a
call about a model, `mm-model-id`. A call without it is refused with INVALID_ARGUMENT.

Every output is checked against ONNX Runtime run here on the same model file, and against
models/demo/reference.json, within rtol = atol = 1e-5. (A separate process from
tests/oip_client.py: tritonclient.grpc and kserve both register the `inference` protobuf
package, and one Python process refuses the second.)

Usage: python3 tests/oip_grpc_client.py HOST:PORT   (run by tests/tests/grpc.rs)
"""
import json
import pathlib
import sys

import numpy as np
import onnxruntime
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

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


def check(model, got, ort):
    for expected in model["outputs"]:
        out = got(expected["name"])
        want = np.array(expected["data"], dtype=DTYPES[expected["datatype"]]).reshape(expected["shape"])
        assert out.shape == want.shape, (model["id"], expected["name"], out.shape, want.shape)
        np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), **TOLERANCE)
        runtime = ort[expected["name"]].reshape(want.shape)
        np.testing.assert_allclose(out.astype(np.float64), runtime.astype(np.float64), **TOLERANCE)


def main(url: str) -> None:
    reference = json.loads((ROOT / "models/demo/reference.json").read_text())
    client = grpc.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    for model in reference["models"]:
        name = model["id"]
        headers = {"mm-model-id": name}
        assert client.is_model_ready(name, headers=headers), f"{name} not ready"
        metadata = client.get_model_metadata(name, headers=headers)
        assert metadata.platform in ("onnxruntime_onnx", "manymodels_native"), metadata
        declared = {i.name: i.datatype for i in metadata.inputs}
        inputs = []
        for input_name, array in arrays(model).items():
            spec = next(s for s in model["inputs"] if s["name"] == input_name)
            assert declared[input_name] == spec["datatype"], (name, declared)
            tensor = grpc.InferInput(input_name, list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)  # raw_input_contents
            inputs.append(tensor)
        ort = onnx_runtime(model)
        result = client.infer(name, inputs, headers=headers, request_id="grpc-client")
        response = result.get_response()
        assert response.model_name == name and response.model_version == "1", response
        assert response.id == "grpc-client", response
        check(model, result.as_numpy, ort)
        outputs = [grpc.InferRequestedOutput(o["name"]) for o in model["outputs"]]
        result = client.infer(name, inputs, outputs=outputs, headers=headers)
        check(model, result.as_numpy, ort)
    try:
        client.infer(name, inputs)
    except InferenceServerException as error:
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error.status()
        assert "mm-model-id" in error.message(), error.message()
    else:
        raise AssertionError("a call without mm-model-id went through the proxy")
    print(f"tritonclient.grpc scored {len(reference['models'])} models through {url}")


if __name__ == "__main__":
    main(sys.argv[1])
