#!/usr/bin/env python3
"""The naive many-models baseline: what a new user would write with FastAPI and ONNX Runtime.

One Python process (uvicorn, one worker). Each model gets an onnxruntime InferenceSession with
default session options, created inside the request that first needs it (under a lock per model,
so one model is never loaded twice at the same time), kept in an LRU of --lru sessions by count.

Routes (Open Inference Protocol, JSON):
    POST /v2/models/{id}/infer   {"inputs":[{"name","shape","datatype","data"}], "outputs"?: [{"name"}]}
                                 -> {"model_name","model_version","outputs":[{"name","shape","datatype","data"}]}
    GET  /v2/health/ready        200 {"ready": true}
    GET  /v2/baseline/stats      {"loads","hits","evictions",...}

Store layout: <store>/<model_id>/<version>/model.onnx; the highest version is served.
Errors are JSON {"error": "..."}: 400 bad request or input, 404 unknown model, 422 model file
that ONNX Runtime cannot load.

Usage:
    python3 models/baseline_server.py --store /tmp/realistic [--lru 200] [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

OIP_TO_NP = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
NP_TO_OIP = {np.dtype(v): k for k, v in OIP_TO_NP.items()}
ORT_TO_OIP = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int32)": "INT32",
              "tensor(int64)": "INT64", "tensor(bool)": "BOOL"}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class RequestedOutput(BaseModel):
    name: str


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: list[InferInput]
    outputs: Optional[list[RequestedOutput]] = None


class ModelCache:
    """LRU of InferenceSessions by count; a session is created in the request that misses."""

    def __init__(self, store: Path, capacity: int):
        self.store = store
        self.capacity = max(1, capacity)
        self.sessions: OrderedDict[str, tuple[str, ort.InferenceSession]] = OrderedDict()
        self.lock = threading.Lock()  # guards sessions, model_locks and the counters
        self.model_locks: dict[str, threading.Lock] = {}
        self.loads = self.hits = self.evictions = self.load_failures = 0
        self.load_seconds = 0.0

    def _model_path(self, model_id: str) -> tuple[str, Path]:
        model_dir = self.store / model_id
        versions = []
        if model_dir.is_dir():
            for entry in model_dir.iterdir():
                if entry.name.isdigit() and not entry.name.startswith("0") and (entry / "model.onnx").is_file():
                    versions.append(int(entry.name))
        if not versions:
            raise ApiError(404, f"model {model_id!r} not found")
        version = max(versions)
        return str(version), model_dir / str(version) / "model.onnx"

    def get(self, model_id: str) -> tuple[str, ort.InferenceSession]:
        with self.lock:
            entry = self.sessions.get(model_id)
            if entry is not None:
                self.sessions.move_to_end(model_id)
                self.hits += 1
                return entry
            model_lock = self.model_locks.setdefault(model_id, threading.Lock())
        with model_lock:
            with self.lock:  # loaded by another request while we waited
                entry = self.sessions.get(model_id)
                if entry is not None:
                    self.sessions.move_to_end(model_id)
                    self.hits += 1
                    return entry
            version, path = self._model_path(model_id)
            t0 = time.perf_counter()
            try:
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - any load failure is the model's fault
                with self.lock:
                    self.load_failures += 1
                raise ApiError(422, f"model {model_id!r} cannot be loaded: {e}") from None
            entry = (version, session)
            with self.lock:
                self.loads += 1
                self.load_seconds += time.perf_counter() - t0
                self.sessions[model_id] = entry
                while len(self.sessions) > self.capacity:
                    self.sessions.popitem(last=False)
                    self.evictions += 1
            return entry

    def stats(self) -> dict:
        with self.lock:
            return {"loads": self.loads, "hits": self.hits, "evictions": self.evictions,
                    "load_failures": self.load_failures, "resident": len(self.sessions),
                    "capacity": self.capacity, "load_seconds": round(self.load_seconds, 3)}


def to_array(inp: InferInput, expected_type: str) -> np.ndarray:
    dtype = OIP_TO_NP.get(inp.datatype)
    if dtype is None:
        raise ApiError(400, f"input {inp.name!r}: unsupported datatype {inp.datatype!r}")
    if ORT_TO_OIP.get(expected_type) != inp.datatype:
        raise ApiError(400, f"input {inp.name!r}: datatype {inp.datatype} but the model expects "
                            f"{ORT_TO_OIP.get(expected_type, expected_type)}")
    if any(d < 0 for d in inp.shape):
        raise ApiError(400, f"input {inp.name!r}: negative dimension in shape {inp.shape}")
    try:
        arr = np.asarray(inp.data, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ApiError(400, f"input {inp.name!r}: bad data: {e}") from None
    if arr.size != int(np.prod(inp.shape, dtype=np.int64)):
        raise ApiError(400, f"input {inp.name!r}: {arr.size} values for shape {inp.shape}")
    return arr.reshape(inp.shape)


def build_app(cache: ModelCache) -> FastAPI:
    app = FastAPI(title="baseline OIP server")

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse(status_code=exc.status, content={"error": exc.message})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return JSONResponse(status_code=400, content={"error": f"bad request: {exc.errors()}"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)})

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.get("/v2/baseline/stats")
    def stats():
        return cache.stats()

    # A plain `def`: FastAPI runs it in its thread pool, so a slow load does not block other requests.
    @app.post("/v2/models/{model_id}/infer")
    def infer(model_id: str, req: InferRequest):
        if not MODEL_ID.match(model_id):
            raise ApiError(400, f"invalid model id {model_id!r}")
        version, session = cache.get(model_id)
        model_inputs = {i.name: i for i in session.get_inputs()}
        feeds = {}
        for inp in req.inputs:
            meta = model_inputs.get(inp.name)
            if meta is None:
                raise ApiError(400, f"unknown input {inp.name!r}; the model has {sorted(model_inputs)}")
            if inp.name in feeds:
                raise ApiError(400, f"input {inp.name!r} given twice")
            feeds[inp.name] = to_array(inp, meta.type)
        missing = sorted(set(model_inputs) - set(feeds))
        if missing:
            raise ApiError(400, f"missing inputs {missing}")
        output_names = [o.name for o in session.get_outputs()]
        if req.outputs:
            wanted = [o.name for o in req.outputs]
            unknown = [n for n in wanted if n not in output_names]
            if unknown:
                raise ApiError(400, f"unknown outputs {unknown}; the model has {output_names}")
            output_names = wanted
        try:
            results = session.run(output_names, feeds)
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.Fail) as e:
            raise ApiError(400, f"inference failed: {e}") from None
        outputs = []
        for name, value in zip(output_names, results):
            value = np.asarray(value)
            datatype = NP_TO_OIP.get(value.dtype)
            if datatype is None:
                raise ApiError(500, f"output {name!r} has unsupported type {value.dtype}")
            outputs.append({"name": name, "datatype": datatype, "shape": list(value.shape),
                            "data": value.ravel().tolist()})
        body = {"model_name": model_id, "model_version": version, "outputs": outputs}
        if req.id is not None:
            body["id"] = req.id
        return JSONResponse(content=body)

    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description="naive FastAPI + ONNX Runtime many-models baseline")
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--lru", type=int, default=200, help="sessions kept in memory (by count)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    args = ap.parse_args(argv)
    if not args.store.is_dir():
        ap.error(f"--store {args.store} is not a directory")
    app = build_app(ModelCache(args.store, args.lru))
    uvicorn.run(app, host=args.host, port=args.port, workers=1,
                log_level=args.log_level, access_log=args.access_log)


if __name__ == "__main__":
    main()
