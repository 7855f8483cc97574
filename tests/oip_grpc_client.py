"""Scores the demo models through tritonclient.grpc, the way users' gRPC code would, with
its defaults (tensors in raw_input_contents) and nothing added: the proxy routes a call
about a model by the model its message names. The `mm-model-id` header still works (and
then the body is not read). A versioned call keeps its version, a model not in the store
is NOT_FOUND, a compressed call without the header is refused with a message saying what
to do.

Every output is checked against ONNX Runtime run here on the same model file, and against
models/demo/reference.json, within rtol = atol = 1e-5. (A separate process from
tests/oip_client.py: tritonclient.grpc and kserve both register the `inference` protobuf
package, and one Python process refuses the second.)

Usage: python3 tests/oip_grpc_client.py HOST:PORT   (run by tests/tests/it/grpc.rs)
"""
import json
import sys

import numpy as np
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

from oip_reference import ROOT, arrays, check, onnx_runtime


def main(url: str) -> None:
    reference = json.loads((ROOT / "models/demo/reference.json").read_text())
    client = grpc.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    for model in reference["models"]:
        name = model["id"]
        assert client.is_model_ready(name), f"{name} not ready"
        assert client.is_model_ready(name, model_version="1"), f"{name} v1 not ready"
        metadata = client.get_model_metadata(name)
        assert metadata.name == name, metadata
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
        result = client.infer(name, inputs, request_id="grpc-client")
        response = result.get_response()
        assert response.model_name == name and response.model_version == "1", response
        assert response.id == "grpc-client", response
        check("tritonclient.grpc", model, result.as_numpy, ort)
        outputs = [grpc.InferRequestedOutput(o["name"]) for o in model["outputs"]]
        result = client.infer(name, inputs, model_version="1", outputs=outputs)
        assert result.get_response().model_version == "1", result.get_response()
        check("tritonclient.grpc", model, result.as_numpy, ort)
        # The header is optional, and still names the model when sent.
        result = client.infer(name, inputs, headers={"mm-model-id": name})
        check("tritonclient.grpc", model, result.as_numpy, ort)
    refused(
        lambda: client.infer("no-such-model", inputs),
        "StatusCode.NOT_FOUND",
        "no-such-model",
    )
    refused(
        lambda: client.get_model_metadata("no-such-model"),
        "StatusCode.NOT_FOUND",
        "no-such-model",
    )
    refused(
        lambda: client.infer(name, inputs, model_version="latest"),
        "StatusCode.INVALID_ARGUMENT",
        "invalid model version",
    )
    # A compressed message (gRPC compresses only when it saves bytes, hence 1,000 rows of
    # zeros): scorers take none, and the proxy, which cannot read the model from it, says
    # to send it uncompressed.
    zeros = grpc.InferInput("input", [1000, 10], "FP32")
    zeros.set_data_from_numpy(np.zeros((1000, 10), np.float32))
    refused(
        lambda: client.infer("linear-small", [zeros], compression_algorithm="gzip"),
        "StatusCode.INVALID_ARGUMENT",
        "compressed",
    )
    print(f"tritonclient.grpc scored {len(reference['models'])} models through {url}")


def refused(call, status: str, says: str) -> None:
    """`call` fails with gRPC `status` and a message containing `says`."""
    try:
        call()
    except InferenceServerException as error:
        assert error.status() == status, (error.status(), error.message())
        assert says in error.message(), error.message()
    else:
        raise AssertionError(f"expected {status}, the call went through")


if __name__ == "__main__":
    main(sys.argv[1])
