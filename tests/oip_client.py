"""Scores the demo models through a real Open Inference Protocol client (tritonclient.http),
the way users' code would, and checks every output against models/demo/reference.json.

Usage: python3 tests/oip_client.py HOST:PORT   (run by tests/tests/proxy.rs)
"""
import json
import pathlib
import sys

import numpy as np
import tritonclient.http as http

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def main(url: str) -> None:
    client = http.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    reference = json.loads((pathlib.Path(__file__).parent.parent / "models/demo/reference.json").read_text())
    for model in reference["models"]:
        name = model["id"]
        assert client.is_model_ready(name), f"{name} not ready"
        metadata = client.get_model_metadata(name)
        assert metadata["platform"] in ("onnxruntime_onnx", "manymodels_native"), metadata
        assert metadata["engine"] in ("onnxruntime", "native"), metadata
        declared = {i["name"]: i["datatype"] for i in metadata["inputs"]}
        inputs = []
        for spec in model["inputs"]:
            assert declared[spec["name"]] == spec["datatype"], (name, declared)
            array = np.array(spec["data"], dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
            tensor = http.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array, binary_data=False)
            inputs.append(tensor)
        outputs = [http.InferRequestedOutput(o["name"], binary_data=False) for o in model["outputs"]]
        result = client.infer(name, inputs, outputs=outputs, request_id="oip-client")
        response = result.get_response()
        assert response["model_name"] == name and response["model_version"] == "1", response
        for expected in model["outputs"]:
            got = result.as_numpy(expected["name"])
            want = np.array(expected["data"], dtype=DTYPES[expected["datatype"]]).reshape(expected["shape"])
            assert got.shape == want.shape, (name, expected["name"], got.shape, want.shape)
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-5, atol=1e-5)
    print(f"tritonclient scored {len(reference['models'])} models through {url}")


if __name__ == "__main__":
    main(sys.argv[1])
