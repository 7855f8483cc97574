#!/usr/bin/env python3
"""The reference for the scorer's recursive forecasts: the same loop over ONNX Runtime.

Reads from stdin a JSON list of forecasts to make,

    [{"model": "Store1000_dominicks_lr", "horizon": 5, "price": 2.29,   # the record's inputs
      "date_freq": "W-THU",                                              # optional
      "dates": ["1993-05-20", ...], "values": [9.81, ...]}, ...]

and for each, from the model's own declaration (`manymodels.forecast` in its metadata_props,
read with `onnx`), runs step h = 1..horizon: one float32 row (lags from the history, then the
predictions; calendar features of the step's date computed with Python's datetime; inputs by
name), one onnxruntime call (the row sent twice, as the scorer sends a lone row: see
scorer/src/records.rs `run_rows`), the prediction (the float32 output) fed back. Prints a JSON list,
one entry per forecast: {"dates": [...], "bits": [uint32 bits of each float32 value],
"values": [...]}.

Usage: python3 tests/forecast_reference.py <store> < asks.json
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

WEEKDAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]


def next_date(date: dt.date, freq: str) -> dt.date:
    if freq == "D":
        return date + dt.timedelta(days=1)
    if freq == "W" or freq.startswith("W-"):
        return date + dt.timedelta(days=7)
    year, month = (date.year + 1, 1) if date.month == 12 else (date.year, date.month + 1)
    if freq == "MS":
        return dt.date(year, month, 1)
    if freq in ("M", "ME"):
        return dt.date(year, month, calendar.monthrange(year, month)[1])
    raise ValueError(f"frequency {freq}")


def calendar_feature(kind: str, date: dt.date) -> int:
    return {
        "year": date.year,
        "quarter": (date.month - 1) // 3 + 1,
        "month": date.month,
        "week_of_year": date.isocalendar()[1],
        "day_of_year": date.timetuple().tm_yday,
        "day": date.day,
        "day_of_week": date.weekday(),
    }[kind]


def forecast(store: Path, ask: dict, sessions: dict) -> dict:
    model_id = ask["model"]
    if model_id not in sessions:
        path = store / model_id / "1" / "model.onnx"
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        sessions[model_id] = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
                              json.loads(props["manymodels.forecast"]))
    session, spec = sessions[model_id]
    freq = ask.get("date_freq") or spec["frequency"]
    series = [np.float32(v) for v in ask["values"]]
    date = dt.date.fromisoformat(ask["dates"][-1])
    input_name = session.get_inputs()[0].name
    dates, values = [], []
    for _ in range(ask["horizon"]):
        date = next_date(date, freq)
        row = []
        for feature in spec["features"]:
            if "lag" in feature:
                row.append(series[-feature["lag"]])
            elif "calendar" in feature:
                row.append(np.float32(calendar_feature(feature["calendar"], date)))
            else:
                row.append(np.float32(ask[feature["input"]]))
        # The row twice, as the scorer runs a lone row: ONNX Runtime answers one row (GEMV)
        # and two or more (GEMM) in last bits that differ for linear models.
        (output,) = session.run(None, {input_name: np.asarray([row, row], dtype=np.float32)})
        prediction = np.float32(output.reshape(-1)[0])
        series.append(prediction)
        dates.append(date.isoformat())
        values.append(prediction)
    return {"dates": dates, "bits": [int(np.float32(v).view(np.uint32)) for v in values],
            "values": [float(v) for v in values]}


def main() -> None:
    store = Path(sys.argv[1])
    asks = json.load(sys.stdin)
    sessions: dict = {}
    json.dump([forecast(store, ask, sessions) for ask in asks], sys.stdout)
    print()


if __name__ == "__main__":
    main()
