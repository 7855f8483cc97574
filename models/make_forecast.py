#!/usr/bin/env python3
"""Write a store of per-series forecasting models, as Azure's many-models solution trains them.

Synthetic weekly sales of orange juice per store and brand, shaped like Dominick's Finer Foods
data (log units moved around 9-11, a yearly season, price promotions, noise), one series per
(store, brand), dated on Thursdays (W-THU). Each series gets its own model, trained on

    lag_1 .. lag_4 (the series 1 to 4 weeks back), week_of_year (ISO), month, price

to predict this week's value; series alternate between LinearRegression (`lr`) and a small
GradientBoostingRegressor (`gbr`). Each model is exported with skl2onnx (one FP32 input
"input" [-1, 7], one output "variable" [-1, 1]) and declares in its metadata_props

    manymodels.columns   ["lag_1", "lag_2", "lag_3", "lag_4", "week_of_year", "month", "price"]
    manymodels.forecast  {"frequency": "W-THU", "max_horizon": 12, "features": [{"lag": 1}, ...,
                          {"calendar": "week_of_year"}, {"calendar": "month"}, {"input": "price"}]}

so the scorer can forecast it recursively (docs/models.md, "Declaring columns and forecasts").

Layout:

    <out>/<store>_<brand>_<type>/1/model.onnx     ids such as Store1000_dominicks_lr
    <out>/histories.json                          per id: store, brand, model_type, date_freq,
                                                  price (the last week's), dates, values

`histories.json` holds each series' last --history weeks: what a forecast request sends
(`{"store": ..., "brand": ..., "model_type": ..., "forecast_horizon": h, "date_freq": "W-THU",
"price": p, "data": {"dates": [...], "values": [...]}}`). It is not a model (the store lists
folders only).

Deterministic from --seed: series i depends only on (seed, i), not on --series. The committed
corpus models/forecast/ is `--series 6`; the benchmark generates 200 at bench time.

Usage:
    python3 models/make_forecast.py --out models/forecast [--series 6] [--seed 7]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"
BRANDS = ["dominicks", "minute_maid", "tropicana"]
LAGS = [1, 2, 3, 4]
COLUMNS = [f"lag_{k}" for k in LAGS] + ["week_of_year", "month", "price"]
FEATURES = ([{"lag": k} for k in LAGS]
            + [{"calendar": "week_of_year"}, {"calendar": "month"}, {"input": "price"}])
FREQUENCY = "W-THU"
MAX_HORIZON = 12
FIRST_WEEK = dt.date(1990, 6, 14)  # a Thursday
WEEKS = 160


def series_spec(seed: int, index: int) -> dict:
    store = f"Store{1000 + index // len(BRANDS)}"
    brand = BRANDS[index % len(BRANDS)]
    model_type = "lr" if index % 2 == 0 else "gbr"
    return {"index": index, "store": store, "brand": brand, "model_type": model_type,
            "id": f"{store}_{brand}_{model_type}", "seed": seed * 1_000_003 + index}


def make_series(spec: dict) -> tuple[list[dt.date], np.ndarray, np.ndarray]:
    """Dates, log units moved and prices: a level, a yearly season, promotions, noise."""
    rng = np.random.default_rng(spec["seed"])
    dates = [FIRST_WEEK + dt.timedelta(weeks=w) for w in range(WEEKS)]
    level = 9.0 + 1.5 * rng.random() + 0.4 * BRANDS.index(spec["brand"])
    amplitude = 0.2 + 0.3 * rng.random()
    phase = rng.random() * 2 * np.pi
    base_price = 1.8 + 1.0 * rng.random()
    promo = rng.random(WEEKS) < 0.2
    price = np.round(base_price * np.where(promo, 0.8, 1.0) + rng.normal(0, 0.03, WEEKS), 2)
    weeks = np.array([d.isocalendar()[1] for d in dates], dtype=float)
    values = np.empty(WEEKS)
    state = 0.0
    for t in range(WEEKS):
        state = 0.6 * state + rng.normal(0, 0.12)  # autocorrelated noise: the lags matter
        values[t] = (level + amplitude * np.sin(2 * np.pi * weeks[t] / 52.0 + phase)
                     - 1.2 * (price[t] - base_price) + state)
    return dates, np.round(values, 4), price


def training_set(dates, values, price) -> tuple[np.ndarray, np.ndarray]:
    rows, targets = [], []
    for t in range(max(LAGS), len(values)):
        d = dates[t]
        rows.append([values[t - k] for k in LAGS] + [d.isocalendar()[1], d.month, price[t]])
        targets.append(values[t])
    return np.asarray(rows, dtype=np.float32), np.asarray(targets)


def train(spec: dict, X: np.ndarray, y: np.ndarray):
    if spec["model_type"] == "lr":
        from sklearn.linear_model import LinearRegression
        return LinearRegression().fit(X, y)
    from sklearn.ensemble import GradientBoostingRegressor
    return GradientBoostingRegressor(n_estimators=20, max_depth=2, learning_rate=0.2,
                                     random_state=spec["seed"] % (2**31)).fit(X, y)


def to_onnx(model, spec: dict) -> bytes:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, name=spec["id"],  # fixed graph name: the default is a random uuid
                          initial_types=[(INPUT_NAME, FloatTensorType([None, len(COLUMNS)]))],
                          target_opset=OPSET)
    # As models/make_realistic.py: exactly OPSET, one entry per domain.
    versions = {imp.domain: max(imp.version, OPSET.get(imp.domain, 0)) for imp in onx.opset_import}
    del onx.opset_import[:]
    for domain, version in sorted(versions.items()):
        onx.opset_import.add(domain=domain, version=version)
    onnx.helper.set_model_props(onx, {
        "manymodels.columns": json.dumps(COLUMNS),
        "manymodels.forecast": json.dumps({"frequency": FREQUENCY, "max_horizon": MAX_HORIZON,
                                           "features": FEATURES}),
    })
    return onx.SerializeToString()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the store to write")
    parser.add_argument("--series", type=int, default=6, help="series (models) to write")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--history", type=int, default=16,
                        help="weeks of each series written to histories.json")
    args = parser.parse_args()
    histories = {}
    for index in range(args.series):
        spec = series_spec(args.seed, index)
        dates, values, price = make_series(spec)
        X, y = training_set(dates, values, price)
        model = train(spec, X, y)
        write_atomic(args.out / spec["id"] / "1" / "model.onnx", to_onnx(model, spec))
        keep = slice(len(values) - args.history, len(values))
        histories[spec["id"]] = {
            "store": spec["store"], "brand": spec["brand"], "model_type": spec["model_type"],
            "date_freq": FREQUENCY, "price": float(price[-1]),
            "dates": [d.isoformat() for d in dates[keep]],
            "values": [float(v) for v in values[keep]],
        }
    write_atomic(args.out / "histories.json",
                 (json.dumps(histories, indent=1) + "\n").encode())
    print(f"wrote {args.series} forecasting models and histories.json to {args.out}")


if __name__ == "__main__":
    main()
