"""Scores the demo models through tritonclient.grpc, the way users' gRPC code would, with
its defaults (tensors in raw_input_contents) and the one header the proxy needs to route a
call about a model, `mm-model-id`. A call without it is refused with INVALID_ARGUMENT.

Every output is checked against ONNX Runtime run here on the same model file, and against
models/demo/reference.json, within rtol = atol = 1e-5. (A separate process from
tests/oip_client.py: tritonclient.grpc and kserve both register the `inference` protobuf
package, and one Python process refuses the second.)

Usage: python3 tests/oip_grpc_client.py HOST:PORT   (run by tests/tests/it/grpc.rs)
"""
import json
import sys

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
        check("tritonclient.grpc", model, result.as_numpy, ort)
        outputs = [grpc.InferRequestedOutput(o["name"]) for o in model["outputs"]]
        result = client.infer(name, inputs, outputs=outputs, headers=headers)
        check("tritonclient.grpc", model, result.as_numpy, ort)
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
