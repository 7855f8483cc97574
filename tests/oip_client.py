"""Scores the demo models through real Open Inference Protocol clients, the way users' code
would, with their defaults: binary tensors (the REST binary tensor extension) in and out.

* tritonclient.http: `set_data_from_numpy(array)` sends binary inputs; `infer` without
  `outputs` asks for every output binary (`binary_data_output`), and with
  `InferRequestedOutput(name)` each output binary.
* KServe's Python client (`kserve.InferenceRESTClient`, protocol v2): `InferInput.
  set_data_from_numpy(array)` sends binary inputs; outputs come back JSON unless
  `binary_data_output` is set, which the script does on a second pass.

Every output is checked against ONNX Runtime run here on the same model file, and against
models/demo/reference.json, within rtol = atol = 1e-5.

Usage: python3 tests/oip_client.py HOST:PORT   (run by tests/tests/it/proxy.rs)
"""
import asyncio
import json
import sys

import tritonclient.http as http
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

from oip_reference import ROOT, arrays, check, onnx_runtime


def triton(url, reference):
    client = http.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for model in reference["models"]:
        name = model["id"]
        assert client.is_model_ready(name), f"{name} not ready"
        metadata = client.get_model_metadata(name)
        assert metadata["platform"] in ("onnxruntime_onnx", "manymodels_native"), metadata
        assert metadata["engine"] in ("onnxruntime", "native"), metadata
        declared = {i["name"]: i["datatype"] for i in metadata["inputs"]}
        inputs = []
        for input_name, array in arrays(model).items():
            spec = next(s for s in model["inputs"] if s["name"] == input_name)
            assert declared[input_name] == spec["datatype"], (name, declared)
            tensor = http.InferInput(input_name, list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)  # the default: binary
            inputs.append(tensor)
        ort = onnx_runtime(model)
        # No `outputs`: tritonclient asks for all of them binary.
        result = client.infer(name, inputs, request_id="oip-client")
        response = result.get_response()
        assert response["model_name"] == name and response["model_version"] == "1", response
        assert all("binary_data_size" in o["parameters"] for o in response["outputs"]), response
        check("tritonclient", model, result.as_numpy, ort)
        # Named outputs, binary by default.
        outputs = [http.InferRequestedOutput(o["name"]) for o in model["outputs"]]
        result = client.infer(name, inputs, outputs=outputs)
        check("tritonclient", model, result.as_numpy, ort)


async def kserve(url, reference):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        for model in reference["models"]:
            name = model["id"]
            ort = onnx_runtime(model)
            for parameters in (None, {"binary_data_output": True}):
                inputs = []
                for input_name, array in arrays(model).items():
                    spec = next(s for s in model["inputs"] if s["name"] == input_name)
                    tensor = InferInput(input_name, list(array.shape), spec["datatype"])
                    tensor.set_data_from_numpy(array)  # the default: binary
                    inputs.append(tensor)
                request = InferRequest(name, inputs, request_id="kserve", parameters=parameters)
                response = await client.infer(f"http://{url}", request, model_name=name)
                assert response.model_name == name, response
                by_name = {o.name: o for o in response.outputs}
                check("kserve", model, lambda n: by_name[n].as_numpy(), ort)
    finally:
        await client.close()


def main(url: str) -> None:
    reference = json.loads((ROOT / "models/demo/reference.json").read_text())
    triton(url, reference)
    asyncio.run(kserve(url, reference))
    print(f"tritonclient and kserve scored {len(reference['models'])} models (binary) through {url}")


if __name__ == "__main__":
    main(sys.argv[1])
