#!/usr/bin/env python3
"""Write a realistic many-models store of REAL scikit-learn models exported with skl2onnx.

Layout (the one the scorer reads, ids as `models/src/store.rs` `model_id()`):

    <store>/gen-00000/1/model.onnx
    ...
    <store>/manifest.json          per model: family, task, tier, bytes, features, input, sample request
    <store>/.meta/<id>.json        per-model manifest record (hidden: not a valid model id, never listed)
    <store>/.basecache/            only with --heavy-distinct: pickled base forests

Mix, in every aligned block of 10 indices (seeded permutation): 6 linear models
(LinearRegression / Ridge / LogisticRegression), 3 random forests of 50 KB - 3 MB,
1 random forest of 5 - 32 MB. Forest file sizes are log-uniform within their tier, trees are
grown to unlimited depth, about 3 in 4 forests are regressors. Every forest carries its nodes'
training covers in nodes_hitrates (convert/convert.py add_covers, for TreeSHAP). Every
classifier is exported with zipmap disabled; every model has one FP32 input named "input" of
shape [-1, features]; opset {"": 17, "ai.onnx.ml": 3}.

Deterministic from --seed (each model depends only on (seed, index), not on --models or --jobs),
idempotent (a model whose model.onnx exists is skipped; files are written under a temporary
name and renamed), parallel across --jobs processes (one sklearn thread each).

How a forest hits its target size: skl2onnx writes ~39 bytes per tree node for a regressor
(~50 for a classifier). From the target size we pick n_estimators and a training-set size whose
fully grown trees give about the right node count (a regression tree on n distinct targets has
~1.26 n nodes), fit, then measure this forest's exact bytes per node by exporting its first one
and two trees, and add trees (warm_start) or drop trees to land on the target (within ~1 tree).

--heavy-distinct K (default 0 = off, every heavy forest trained from its own data): trains only
K distinct heavy forests per heavy size bucket (4 log-spaced buckets over 5-32 MB), each at its
bucket's upper size, and writes every other heavy model as one of those forests truncated to the
model's own target size with its leaf values (tree_.value) multiplied by per-leaf factors drawn
from the model's seed: every file is distinct and a real, loadable forest.

Usage:
    python3 models/make_realistic.py --store /tmp/realistic [--models 2000] [--seed 42] [--jobs N]
"""

from __future__ import annotations

import os

# One thread per worker process: parallelism comes from --jobs. Must precede numpy/sklearn imports.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import copy
import json
import math
import multiprocessing as mp
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "convert"))
from convert import add_covers  # noqa: E402  (models/convert/convert.py)

warnings.filterwarnings("ignore")

OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"
VERSION = 1
KB = 1000
MB = 1000 * 1000

MID_RANGE = (50 * KB, 3 * MB)
HEAVY_RANGE = (5 * MB, 32 * MB)
HEAVY_BUCKETS = 4  # log-spaced buckets of HEAVY_RANGE for --heavy-distinct
# Per block of 10 indices.
N_LINEAR, N_MID, N_HEAVY = 6, 3, 1

SALT_TIER = 0x54494552  # "TIER"
SALT_MODEL = 0x4D4F44  # "MOD"
SALT_BASE = 0x42415345  # "BASE"
SALT_PERTURB = 0x50455254  # "PERT"


def model_id(index: int) -> str:
    """Same as `models/src/store.rs` `model_id()`."""
    return f"gen-{index:05d}"


# ---------------------------------------------------------------------------------------------
# Specs: everything about a model that is decided before training, from (seed, index) only.
# ---------------------------------------------------------------------------------------------

def tier_of(index: int, seed: int) -> str:
    perm = np.random.default_rng([seed, SALT_TIER, index // 10]).permutation(10)
    rank = int(perm[index % 10])
    if rank < N_LINEAR:
        return "linear"
    if rank < N_LINEAR + N_MID:
        return "mid"
    return "heavy"


def log_uniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def heavy_bucket(target: float) -> int:
    lo, hi = HEAVY_RANGE
    b = int(math.log(target / lo) / math.log(hi / lo) * HEAVY_BUCKETS)
    return min(max(b, 0), HEAVY_BUCKETS - 1)


def heavy_bucket_top(bucket: int) -> float:
    lo, hi = HEAVY_RANGE
    return lo * (hi / lo) ** ((bucket + 1) / HEAVY_BUCKETS)


def spec_for(index: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, SALT_MODEL, index])
    tier = tier_of(index, seed)
    spec = {"index": index, "id": model_id(index), "tier": tier,
            "data_seed": int(rng.integers(2**31 - 1)), "fit_seed": int(rng.integers(2**31 - 1))}
    if tier == "linear":
        family = str(rng.choice(["linear_regression", "ridge", "logistic_regression"], p=[0.3, 0.3, 0.4]))
        spec.update(
            family=family,
            task="classification" if family == "logistic_regression" else "regression",
            features=int(round(log_uniform(rng, 4, 200))),
            n_samples=int(round(log_uniform(rng, 200, 5000))),
            n_classes=int(rng.choice([2, 3, 4, 5], p=[0.7, 0.15, 0.1, 0.05])) if family == "logistic_regression" else None,
            alpha=float(log_uniform(rng, 0.01, 100)) if family == "ridge" else None,
        )
        return spec
    lo, hi = MID_RANGE if tier == "mid" else HEAVY_RANGE
    classifier = rng.random() < 0.25
    spec.update(
        family="random_forest_classifier" if classifier else "random_forest_regressor",
        task="classification" if classifier else "regression",
        target_bytes=log_uniform(rng, lo, hi),
        features=int(round(log_uniform(rng, 8, 64))),
        n_classes=int(rng.choice([2, 3, 4, 5], p=[0.6, 0.2, 0.1, 0.1])) if classifier else None,
        max_features="sqrt" if classifier else str(rng.choice(["1.0", "0.5", "0.33", "sqrt"], p=[0.15, 0.25, 0.35, 0.25])),
        trees_hint=int(round(log_uniform(rng, 10, 150))),
        label_noise=float(rng.uniform(0.0, 0.1)),
    )
    return spec


# ---------------------------------------------------------------------------------------------
# Training and export
# ---------------------------------------------------------------------------------------------

def make_data(spec: dict, n_samples: int):
    from sklearn.datasets import make_classification, make_regression

    f = spec["features"]
    informative = max(3, min(f, int(round(f * 0.6))))  # every spec has f >= 4
    if spec["task"] == "regression":
        X, y = make_regression(n_samples=n_samples, n_features=f, n_informative=informative,
                               noise=10.0, random_state=spec["data_seed"])
    else:
        X, y = make_classification(n_samples=n_samples, n_features=f, n_informative=informative,
                                   n_redundant=min(2, f - informative), n_classes=spec["n_classes"],
                                   n_clusters_per_class=2 if 2 * spec["n_classes"] <= 2**informative else 1,
                                   flip_y=spec.get("label_noise", 0.02), class_sep=1.0,
                                   random_state=spec["data_seed"])
    X = np.round(X, 4).astype(np.float32)
    return X, y


def to_onnx(model, spec: dict) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if spec["task"] == "classification" else None
    onx = convert_sklearn(model, name=spec["id"],  # fixed graph name: the default is a random uuid
                          initial_types=[(INPUT_NAME, FloatTensorType([None, spec["features"]]))],
                          target_opset=OPSET, options=options)
    if hasattr(model, "estimators_"):
        # Each node's training cover in nodes_hitrates (convert.py's add_covers, matched to the
        # forest node by node), so the benchmark store's forests can be explained. Same size:
        # skl2onnx already writes one (1.0) per node.
        add_covers(onx, model, "sklearn")
    # skl2onnx imports the lowest ai.onnx.ml version the graph needs (1 for linear models);
    # pin every file to exactly OPSET (the ops used are unchanged up to these versions).
    # It also lists the default domain twice; keep one entry per domain.
    versions = {imp.domain: max(imp.version, OPSET.get(imp.domain, 0)) for imp in onx.opset_import}
    del onx.opset_import[:]
    for domain, version in sorted(versions.items()):
        onx.opset_import.add(domain=domain, version=version)
    return onx.SerializeToString()


def train_linear(spec: dict):
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    X, y = make_data(spec, spec["n_samples"])
    if spec["family"] == "linear_regression":
        model = LinearRegression()
    elif spec["family"] == "ridge":
        model = Ridge(alpha=spec["alpha"])
    else:
        model = LogisticRegression(max_iter=300, random_state=spec["fit_seed"])
    model.fit(X, y)
    return model, X, {}


# Nodes per tree per training row for a fully grown tree (bootstrap keeps ~63% distinct rows;
# a regression tree splits down to one distinct target per leaf). Classifiers: rough guess,
# refined by measuring the first fit.
NODES_PER_ROW = {"regression": 1.26, "classification": 0.35}
BPN_GUESS = {"regression": 39.0, "classification": 50.0}
MIN_ROWS, MAX_ROWS = 200, 200_000


def forest_plan(spec: dict, target_bytes: float):
    nodes = target_bytes / BPN_GUESS[spec["task"]]
    trees = spec["trees_hint"]
    rows = nodes / (trees * NODES_PER_ROW[spec["task"]])
    if rows < MIN_ROWS:
        trees = max(3, int(nodes / (MIN_ROWS * NODES_PER_ROW[spec["task"]])))
    elif rows > MAX_ROWS:
        trees = int(math.ceil(nodes / (MAX_ROWS * NODES_PER_ROW[spec["task"]])))
    rows = int(min(MAX_ROWS, max(MIN_ROWS, round(nodes / (trees * NODES_PER_ROW[spec["task"]])))))
    return trees, rows


def truncated(model, k: int):
    sub = copy.copy(model)
    sub.estimators_ = model.estimators_[:k]
    sub.n_estimators = k
    return sub


def tree_nodes(model) -> list[int]:
    return [e.tree_.node_count for e in model.estimators_]


def bytes_model(model, spec: dict):
    """(overhead, bytes per node) of this forest's export, from its first one and two trees."""
    n = tree_nodes(model)
    b1 = len(to_onnx(truncated(model, 1), spec))
    if len(n) < 2:
        return 0.0, b1 / n[0]
    b2 = len(to_onnx(truncated(model, 2), spec))
    bpn = (b2 - b1) / n[1]
    return b1 - bpn * n[0], bpn


def trees_for(model, spec: dict, target_bytes: float) -> int:
    """How many of the model's trees (assuming more like them) reach target_bytes."""
    overhead, bpn = bytes_model(model, spec)
    n = tree_nodes(model)
    cum = np.cumsum(n) * bpn + overhead
    if cum[-1] < target_bytes:  # needs more trees than it has: extrapolate with the mean tree
        return len(n) + max(0, int(round((target_bytes - cum[-1]) / (bpn * np.mean(n)))))
    return max(1, int(np.argmin(np.abs(cum - target_bytes))) + 1)


def train_forest(spec: dict, target_bytes: float, seed_rows=None):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    trees, rows = forest_plan(spec, target_bytes)
    X, y = make_data(spec, rows)
    mf = spec["max_features"]
    mf = mf if mf == "sqrt" else float(mf)
    cls = RandomForestClassifier if spec["task"] == "classification" else RandomForestRegressor
    model = cls(n_estimators=trees, max_depth=None, max_features=mf, n_jobs=1,
                random_state=spec["fit_seed"], warm_start=True)
    model.fit(X, y)
    for _ in range(4):  # usually one correction, at most a few
        want = trees_for(model, spec, target_bytes)
        have = len(model.estimators_)
        if want > have:
            model.set_params(n_estimators=want)
            model.fit(X, y)
        else:
            if want < have:
                model = truncated(model, want)
            break
    model.warm_start = False
    return model, X, {"n_samples": rows}


def perturb(model, spec: dict):
    """A copy of the forest with every leaf value scaled by its own factor drawn from the seed."""
    rng = np.random.default_rng([spec["fit_seed"], SALT_PERTURB])
    out = copy.deepcopy(model)
    for est in out.estimators_:
        t = est.tree_
        leaves = t.children_left == -1
        v = t.value  # writable view of the tree's values: (nodes, outputs, classes)
        factors = rng.uniform(0.8, 1.25, size=v.shape)
        if spec["task"] == "classification":
            nv = v * factors + rng.uniform(0.0, 0.05, size=v.shape)  # pure leaves get some mass elsewhere
            nv /= nv.sum(axis=2, keepdims=True)
        else:
            nv = v * factors
        v[leaves] = nv[leaves]
    return out


def base_spec(spec: dict, seed: int, bucket: int, k: int) -> dict:
    """The spec of the k-th distinct base forest of a heavy size bucket."""
    rng = np.random.default_rng([seed, SALT_BASE, bucket, k])
    classifier = rng.random() < 0.25
    return {
        "id": f"base-{bucket}-{k}", "tier": "heavy",
        "data_seed": int(rng.integers(2**31 - 1)), "fit_seed": int(rng.integers(2**31 - 1)),
        "family": "random_forest_classifier" if classifier else "random_forest_regressor",
        "task": "classification" if classifier else "regression",
        "features": int(round(log_uniform(rng, 8, 64))),
        "n_classes": int(rng.choice([2, 3, 4, 5], p=[0.6, 0.2, 0.1, 0.1])) if classifier else None,
        "max_features": "sqrt" if classifier else str(rng.choice(["1.0", "0.5", "0.33", "sqrt"], p=[0.15, 0.25, 0.35, 0.25])),
        "trees_hint": int(round(log_uniform(rng, 30, 150))),
        "label_noise": float(rng.uniform(0.0, 0.1)),
        "target_bytes": heavy_bucket_top(bucket),
    }


def load_or_train_base(store: Path, bspec: dict):
    path = store / ".basecache" / f"{bspec['id']}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    model, X, extra = train_forest(bspec, bspec["target_bytes"])
    sample = X[: 1]
    data = {"model": model, "sample": sample, "extra": extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return data


# ---------------------------------------------------------------------------------------------
# One model: train, export, write atomically, record its manifest entry.
# ---------------------------------------------------------------------------------------------

def model_file(store: Path, mid: str) -> Path:
    return store / mid / str(VERSION) / "model.onnx"


def meta_file(store: Path, mid: str) -> Path:
    return store / ".meta" / f"{mid}.json"


def atomic_write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def outputs_for(spec: dict, n_classes):
    if spec["task"] == "classification":
        return [{"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]}]
    return [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]


def record(spec: dict, nbytes: int, sample_row, extra: dict) -> dict:
    f = spec["features"]
    rec = {
        "id": spec["id"], "version": VERSION, "tier": spec["tier"], "family": spec["family"],
        "task": spec["task"], "bytes": nbytes, "features": f,
        "input": {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, f]},
        "outputs": outputs_for(spec, spec.get("n_classes")),
        "sample_request": {"inputs": [{"name": INPUT_NAME, "shape": [1, f], "datatype": "FP32",
                                       "data": [float(round(float(v), 4)) for v in sample_row]}]},
    }
    if spec.get("n_classes"):
        rec["n_classes"] = spec["n_classes"]
    if "target_bytes" in spec:
        rec["target_bytes"] = int(spec["target_bytes"])
    rec.update(extra)
    return rec


def build_one(job):
    store, index, seed, heavy_distinct = job
    store = Path(store)
    spec = spec_for(index, seed)
    path = model_file(store, spec["id"])
    if path.exists():
        if meta_file(store, spec["id"]).exists():
            return spec["tier"], "skipped", 0.0, path.stat().st_size
        # Written by an interrupted run before its meta: rebuild the record without training.
        rows = forest_plan(spec, spec["target_bytes"])[1] if "target_bytes" in spec else spec["n_samples"]
        X, _ = make_data(spec, rows) if spec["tier"] != "heavy" or not heavy_distinct else (None, None)
        sample = X[0] if X is not None else np.zeros(spec["features"], np.float32)
        rec = record(spec, path.stat().st_size, sample, {"note": "record rebuilt without training"})
        atomic_write(meta_file(store, spec["id"]), json.dumps(rec).encode())
        return spec["tier"], "skipped", 0.0, path.stat().st_size

    t0 = time.perf_counter()
    extra = {}
    if spec["tier"] == "linear":
        model, X, extra = train_linear(spec)
        sample = X[0]
    elif spec["tier"] == "heavy" and heavy_distinct:
        bucket = heavy_bucket(spec["target_bytes"])
        k = spec["fit_seed"] % heavy_distinct
        bspec = base_spec(spec, seed, bucket, k)
        base = load_or_train_base(store, bspec)
        # The derived model takes the base's data shape and task; its own target size and seed.
        spec.update({key: bspec[key] for key in ("family", "task", "features", "n_classes")})
        want = trees_for(base["model"], bspec, spec["target_bytes"])
        model = perturb(truncated(base["model"], min(want, len(base["model"].estimators_))), spec)
        sample = base["sample"][0]
        extra = {"derived_from": bspec["id"], "n_samples": base["extra"]["n_samples"]}
    else:
        model, X, extra = train_forest(spec, spec["target_bytes"])
        sample = X[0]
    if hasattr(model, "estimators_"):
        extra["n_estimators"] = len(model.estimators_)
        extra["nodes"] = int(sum(tree_nodes(model)))
    data = to_onnx(model, spec)
    rec = record(spec, len(data), sample, extra)
    atomic_write(meta_file(store, spec["id"]), json.dumps(rec).encode())
    atomic_write(path, data)
    return spec["tier"], "written", time.perf_counter() - t0, len(data)


def build_base(job):
    store, bspec = job
    t0 = time.perf_counter()
    load_or_train_base(Path(store), bspec)
    return bspec["id"], time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------

def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--heavy-distinct", type=int, default=0, metavar="K",
                    help="train only K distinct heavy forests per heavy size bucket and derive the "
                         "other heavy models from them (0 = train every heavy forest; default 0)")
    args = ap.parse_args(argv)

    store = args.store
    store.mkdir(parents=True, exist_ok=True)
    specs = [spec_for(i, args.seed) for i in range(args.models)]
    # Longest first, so the pool does not finish on one big forest.
    order = sorted(range(args.models),
                   key=lambda i: -(specs[i].get("target_bytes", 0.0)))
    t_start = time.perf_counter()
    ctx = mp.get_context("fork")

    base_time = 0.0
    with ctx.Pool(processes=max(1, args.jobs), maxtasksperchild=50) as pool:
        if args.heavy_distinct:
            needed = {}
            for i in order:
                s = specs[i]
                if s["tier"] == "heavy" and not model_file(store, s["id"]).exists():
                    b = heavy_bucket(s["target_bytes"])
                    k = s["fit_seed"] % args.heavy_distinct
                    needed[(b, k)] = base_spec(s, args.seed, b, k)
            for bid, dt in pool.imap_unordered(build_base, [(str(store), b) for b in needed.values()]):
                base_time += dt
                print(f"  base {bid}: {dt:.1f}s", flush=True)
        jobs = [(str(store), i, args.seed, args.heavy_distinct) for i in order]
        stats = {t: {"count": 0, "bytes": 0, "written": 0, "seconds": 0.0} for t in ("linear", "mid", "heavy")}
        done = 0
        for tier, status, dt, nbytes in pool.imap_unordered(build_one, jobs, chunksize=1):
            s = stats[tier]
            s["count"] += 1
            s["bytes"] += nbytes
            s["seconds"] += dt
            s["written"] += status == "written"
            done += 1
            if done % 50 == 0 or done == len(jobs):
                print(f"  {done}/{len(jobs)} models, {time.perf_counter() - t_start:.0f}s", flush=True)

    # Manifest from the per-model records (covers models written by earlier runs too).
    manifest = {"seed": args.seed, "models": args.models, "opset": OPSET, "input_name": INPUT_NAME,
                "entries": {}}
    for s in specs:
        rec = json.loads(meta_file(store, s["id"]).read_text())
        manifest["entries"][s["id"]] = rec
    atomic_write(store / "manifest.json", json.dumps(manifest, indent=1).encode())

    wall = time.perf_counter() - t_start
    ranges = {"linear": "linear models", "mid": "forests 50 KB-3 MB", "heavy": "forests 5-32 MB"}
    print(f"\nstore {store}: {args.models} models, seed {args.seed}, {args.jobs} jobs, "
          f"heavy-distinct {args.heavy_distinct}")
    print(f"{'class':<22}{'count':>7}{'written':>9}{'bytes':>12}{'mean':>11}{'cpu s':>9}")
    for tier, s in stats.items():
        mean = s["bytes"] / s["count"] if s["count"] else 0
        print(f"{ranges[tier]:<22}{s['count']:>7}{s['written']:>9}{human(s['bytes']):>12}"
              f"{human(mean):>11}{s['seconds']:>9.1f}")
    total_b = sum(s["bytes"] for s in stats.values())
    total_s = sum(s["seconds"] for s in stats.values()) + base_time
    print(f"{'total':<22}{args.models:>7}{sum(s['written'] for s in stats.values()):>9}"
          f"{human(total_b):>12}{'':>11}{total_s:>9.1f}")
    if base_time:
        print(f"(base forests for --heavy-distinct: {base_time:.1f} cpu s, included in total)")
    print(f"wall {wall:.1f}s; manifest {store / 'manifest.json'}")


if __name__ == "__main__":
    main()
