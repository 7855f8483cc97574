#!/usr/bin/env python3
"""Generate small hand-built ONNX models that exercise every option of the ai.onnx.ml ops.

Real exporters (skl2onnx, onnxmltools) never emit some of the options a native scorer
claims to reproduce bit for bit against onnxruntime 1.31.1 (BRANCH_EQ/NEQ/GT/GTE/LT,
MIN/MAX aggregation, PROBIT, SOFTMAX_ZERO, multi-target leaves that leave a target
unweighted, leaves with two or zero weights, non depth-first node order, sparse node
ids, unordered tree ids, odd binary-classifier layouts, Normalizer MAX/L1, ...). This
script builds one tiny model per option with onnx.helper, seeded and deterministic.

Every model has one FP32 input `input` of shape [None, F] (F in 3..6), imports
{"": 17, "ai.onnx.ml": 3}, ir_version 8, and declares its outputs with their element
type and shape ([None, n] for scores / probabilities / values, [None] for labels).
Trees: 1-4 trees of depth 2-4, thresholds drawn in [-2, 2] (small integers 0..3 for
BRANCH_EQ / BRANCH_NEQ), leaf weights in [-3, 3] with some exactly 0.

Layout written (idempotent: the output directory is wiped and rewritten, and two runs
give byte-identical files):
    models/corpus/ops/<name>.onnx
    models/corpus/ops/manifest.json   list of {name, file, bytes, features, what}

Validation, per model: onnx.checker.check_model(full_check=True), then an onnxruntime
session (CPUExecutionProvider, intra_op_num_threads=1) run on 200 seeded rows mixing
ordinary values, small integers, NaN, +/-inf, 0, -0.0, huge and tiny values; the shape of
every result must match the declared output. A model that fails any of this is not
written and is reported as dropped (some are expected to be: see EXPECTED_DROPS).
Outputs containing NaN are fine (they are reported, not dropped).

ORT behaviours worth knowing when reading these models (observed with 1.31.1):
  * the root of a tree is the FIRST node listed for that tree id, not node id 0 and not
    "the node nobody points to"; te_order_* models therefore score only the subtree of
    whichever node comes first (that is the reference, not a bug in this script);
  * a true/false child id must be < the total number of nodes of the whole ensemble,
    otherwise the session is refused (te_ids_10_20_30 is kept in the list to show it).

Usage:  python3 models/make_op_models.py [--out DIR]
Takes a couple of seconds; nothing is downloaded. Needs onnx 1.23.2, onnxruntime 1.31.1,
numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from check_rows import float_rows

SEED = 20240611
OPSETS = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8
N_CHECK_ROWS = 200
ML = "ai.onnx.ml"

# Models that onnxruntime 1.31.1 is known to refuse; built anyway so the refusal is reported.
EXPECTED_DROPS = {"te_ids_10_20_30"}


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

MODELS = []


def add(name, features, what, build):
    """build(rng, F) -> (nodes, outputs [(name, elem_type, shape)], initializers)."""
    assert 3 <= features <= 6, name
    MODELS.append(dict(name=name, features=features, what=what, build=build))


def _seed(name):
    return int(hashlib.sha256(f"{SEED}:{name}".encode()).hexdigest()[:8], 16)


def make_model(name, F, nodes, outputs, inits=()):
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TP.FLOAT, [None, F])],
        [helper.make_tensor_value_info(n, t, shape) for n, t, shape in outputs],
        initializer=list(inits))
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(OPSETS.items())],
        ir_version=IR_VERSION, producer_name="make_op_models.py", producer_version="1")


# --------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------

ALL_MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]


def weight(rng, lo=-3.0, hi=3.0, p_zero=0.15):
    if p_zero and rng.random() < p_zero:
        return 0.0
    return float(np.float32(round(rng.uniform(lo, hi), 3)))


def gen_tree(rng, F, depth, leaf_weights, modes=("BRANCH_LEQ",), mvt=True, p_early_leaf=0.25):
    """A tree as a list of node dicts in depth-first preorder (node id == list index).

    leaf_weights(rng) -> [(target_or_class, weight), ...] for one leaf."""
    nodes = []

    def rec(d):
        i = len(nodes)
        n = {}
        nodes.append(n)
        if d == depth or (d >= 2 and rng.random() < p_early_leaf):
            n.update(mode="LEAF", feat=0, val=0.0, mvt=0, w=leaf_weights(rng))
            return i
        mode = modes[int(rng.integers(len(modes)))]
        if mode in ("BRANCH_EQ", "BRANCH_NEQ"):
            thr = float(rng.integers(0, 4))
        else:
            thr = float(np.float32(round(rng.uniform(-2, 2), 3)))
        n.update(mode=mode, feat=int(rng.integers(F)), val=thr,
                 mvt=int(rng.random() < 0.5) if mvt else 0, w=[])
        n["t"] = rec(d + 1)
        n["f"] = rec(d + 1)
        return i

    rec(0)
    if mvt and len(nodes) > 1:  # make sure both 0 and 1 occur among the splits
        splits = [n for n in nodes if n["mode"] != "LEAF"]
        if len(splits) >= 2 and len({n["mvt"] for n in splits}) == 1:
            splits[-1]["mvt"] = 1 - splits[-1]["mvt"]
    return nodes


def gen_trees(rng, F, n_trees, leaf_weights, depths=(2, 4), modes=("BRANCH_LEQ",), **kw):
    trees = [gen_tree(rng, F, int(rng.integers(depths[0], depths[1] + 1)), leaf_weights,
                      modes=modes, **kw)
             for _ in range(n_trees)]
    if len(modes) > 1:  # make sure every mode occurs at least once
        splits = [n for t in trees for n in t if n["mode"] != "LEAF"]
        assert len(splits) >= len(modes)
        for mode, j in zip(modes, rng.permutation(len(splits))):
            n = splits[int(j)]
            if mode in ("BRANCH_EQ", "BRANCH_NEQ") and n["mode"] not in ("BRANCH_EQ", "BRANCH_NEQ"):
                n["val"] = float(rng.integers(0, 4))
            elif mode not in ("BRANCH_EQ", "BRANCH_NEQ") and n["mode"] in ("BRANCH_EQ", "BRANCH_NEQ"):
                n["val"] = float(np.float32(round(rng.uniform(-2, 2), 3)))
            n["mode"] = mode
    return trees


def postorder(tree):
    out = []

    def rec(i):
        n = tree[i]
        if n["mode"] != "LEAF":
            rec(n["t"])
            rec(n["f"])
        out.append(i)

    rec(0)
    return out


def preorder_from(tree, i):
    out = []

    def rec(j):
        out.append(j)
        if tree[j]["mode"] != "LEAF":
            rec(tree[j]["t"])
            rec(tree[j]["f"])

    rec(i)
    return out


def ensemble_attrs(trees, *, kind="target", tree_ids=None, id_maps=None, orders=None,
                   mvt="mixed"):
    """Flatten trees into the TreeEnsemble* node/leaf attribute lists.

    kind: "target" (regressor) or "class" (classifier) prefix for the leaf lists.
    tree_ids[k]: id written for tree k (default k); id_maps[k][i]: node id written for
    node i of tree k (default i); orders[k]: listing order of tree k's nodes (default
    preorder). Leaf weights are listed tree by tree in the same node order.
    mvt: "mixed" (write nodes_missing_value_tracks_true) or "absent"."""
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_modes", "nodes_featureids",
                         "nodes_values", "nodes_truenodeids", "nodes_falsenodeids",
                         "nodes_missing_value_tracks_true", f"{kind}_treeids", f"{kind}_nodeids",
                         f"{kind}_ids", f"{kind}_weights")}
    for k, tree in enumerate(trees):
        tid = tree_ids[k] if tree_ids else k
        idm = id_maps[k] if id_maps else list(range(len(tree)))
        order = orders[k] if orders else list(range(len(tree)))
        assert sorted(order) == list(range(len(tree)))
        for i in order:
            n = tree[i]
            leaf = n["mode"] == "LEAF"
            a["nodes_treeids"].append(tid)
            a["nodes_nodeids"].append(idm[i])
            a["nodes_modes"].append(n["mode"])
            a["nodes_featureids"].append(n["feat"])
            a["nodes_values"].append(n["val"])
            a["nodes_truenodeids"].append(0 if leaf else idm[n["t"]])
            a["nodes_falsenodeids"].append(0 if leaf else idm[n["f"]])
            a["nodes_missing_value_tracks_true"].append(n["mvt"])
        for i in order:
            for c, w in tree[i]["w"]:
                a[f"{kind}_treeids"].append(tid)
                a[f"{kind}_nodeids"].append(idm[i])
                a[f"{kind}_ids"].append(c)
                a[f"{kind}_weights"].append(w)
    if mvt == "absent":
        del a["nodes_missing_value_tracks_true"]
    return a


def lw_single(rng):
    return [(0, weight(rng))]


def lw_subset(pool, max_k=None, lo=-3.0, hi=3.0, p_zero=0.15):
    """Leaf weights for a random non-empty subset of `pool` (targets or classes)."""
    pool = list(pool)
    max_k = max_k or len(pool)

    def f(rng):
        k = int(rng.integers(1, max_k + 1))
        chosen = sorted(rng.choice(pool, size=k, replace=False).tolist())
        return [(int(c), weight(rng, lo, hi, p_zero)) for c in chosen]

    return f


def base_vals(rng, n):
    return [float(np.float32(round(rng.uniform(-1.5, 1.5), 3))) for _ in range(n)]


def regressor(name, F, n_targets, trees_attrs, *, aggregate="SUM", post="NONE", base=None):
    def build(rng, F=F):
        attrs = trees_attrs(rng, F)
        kw = dict(n_targets=n_targets, aggregate_function=aggregate, post_transform=post)
        if base is not None:
            kw["base_values"] = base(rng)
        node = helper.make_node("TreeEnsembleRegressor", ["input"], ["variable"], domain=ML,
                                **kw, **attrs)
        return [node], [("variable", TP.FLOAT, [None, n_targets])], []
    return build


def classifier(F, labels, trees_attrs, *, post="NONE", base=None):
    n_out = len(labels)
    strings = isinstance(labels[0], str)

    def build(rng, F=F):
        attrs = trees_attrs(rng, F)
        kw = dict(post_transform=post)
        if strings:
            kw["classlabels_strings"] = list(labels)
        else:
            kw["classlabels_int64s"] = list(labels)
        if base is not None:
            kw["base_values"] = base(rng)
        node = helper.make_node("TreeEnsembleClassifier", ["input"], ["label", "probabilities"],
                                domain=ML, **kw, **attrs)
        return [node], [("label", TP.STRING if strings else TP.INT64, [None]),
                        ("probabilities", TP.FLOAT, [None, n_out])], []
    return build


def simple_trees(n_trees, leaf_weights, *, kind="target", modes=("BRANCH_LEQ",), mvt="mixed",
                 depths=(2, 4)):
    def f(rng, F):
        trees = gen_trees(rng, F, n_trees, leaf_weights, depths=depths, modes=modes,
                          mvt=(mvt != "absent"))
        return ensemble_attrs(trees, kind=kind, mvt=mvt)
    return f


# ---- TreeEnsembleRegressor: node modes -------------------------------------

for mode in ALL_MODES:
    short = mode.replace("BRANCH_", "").lower()
    thr = "thresholds small integers 0..3" if mode in ("BRANCH_EQ", "BRANCH_NEQ") else \
        "thresholds in [-2, 2]"
    add(f"te_mode_{short}", 4,
        f"TreeEnsembleRegressor, every split {mode} ({thr}), missing_value_tracks_true mixed 0/1, "
        "3 trees, SUM, n_targets=1",
        regressor(f"te_mode_{short}", 4, 1, simple_trees(3, lw_single, modes=(mode,))))

add("te_mode_mixed", 5,
    "TreeEnsembleRegressor, all six BRANCH_* modes mixed in each tree (EQ/NEQ thresholds 0..3), "
    "missing_value_tracks_true mixed 0/1, 4 trees, SUM, n_targets=1",
    regressor("te_mode_mixed", 5, 1, simple_trees(4, lw_single, modes=tuple(ALL_MODES), depths=(3, 4))))

add("te_mode_mixed_mvt_absent", 5,
    "TreeEnsembleRegressor, all six BRANCH_* modes mixed, nodes_missing_value_tracks_true attribute "
    "absent, 3 trees, SUM, n_targets=1",
    regressor("te_mode_mixed_mvt_absent", 5, 1,
              simple_trees(3, lw_single, modes=tuple(ALL_MODES), mvt="absent", depths=(3, 4))))

# ---- TreeEnsembleRegressor: aggregate functions ----------------------------

for k, (agg, nt, with_base) in enumerate((a, t, b) for a in ("SUM", "AVERAGE", "MIN", "MAX")
                                         for t in (1, 3) for b in (False, True)):
    nm = f"te_agg_{agg.lower()}_t{nt}" + ("_base" if with_base else "")
    if nt == 1:
        lw, desc = lw_single, "n_targets=1"
    else:
        lw = lw_subset([0, 1])  # target 2 is never weighted by any leaf
        desc = "n_targets=3, leaves weight targets 0 and/or 1, target 2 never weighted"
    F = 3 + k % 4
    add(nm, F,
        f"TreeEnsembleRegressor aggregate_function={agg}, {desc}, "
        + (f"base_values (length {nt})" if with_base else "no base_values")
        + ", 3 trees BRANCH_LEQ, post NONE",
        regressor(nm, F, nt, simple_trees(3, lw), aggregate=agg,
                  base=(lambda rng, nt=nt: base_vals(rng, nt)) if with_base else None))

# ---- TreeEnsembleRegressor: post transforms --------------------------------

for post in ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"):
    nm = f"te_post_{post.lower()}_t3"
    add(nm, 4,
        f"TreeEnsembleRegressor post_transform={post}, n_targets=3 (leaves weight 1-3 targets), "
        "3 trees, SUM, base_values length 3",
        regressor(nm, 4, 3, simple_trees(3, lw_subset([0, 1, 2])), post=post,
                  base=lambda rng: base_vals(rng, 3)))

add("te_post_probit_t1", 4,
    "TreeEnsembleRegressor post_transform=PROBIT, n_targets=1, leaf weights in [-0.05, 0.4] "
    "(some 0; the 3-tree sum is mostly inside (0, 1), sometimes outside), 3 trees, SUM",
    regressor("te_post_probit_t1", 4, 1,
              simple_trees(3, lambda rng: [(0, weight(rng, -0.05, 0.4, 0.15))]), post="PROBIT"))

add("te_post_logistic_t1", 4,
    "TreeEnsembleRegressor post_transform=LOGISTIC, n_targets=1, 3 trees, SUM, base_values length 1",
    regressor("te_post_logistic_t1", 4, 1, simple_trees(3, lw_single), post="LOGISTIC",
              base=lambda rng: base_vals(rng, 1)))

# ---- TreeEnsembleRegressor: odd leaves -------------------------------------


def _leaf_two_weights(rng, F):
    trees = gen_trees(rng, F, 2, lw_single, depths=(2, 3))
    leaves = [n for n in trees[0] if n["mode"] == "LEAF"]
    leaves[0]["w"] = [(0, weight(rng, p_zero=0)), (0, weight(rng, p_zero=0))]
    leaves[-1]["w"] = [(0, weight(rng, p_zero=0)), (0, 0.0)]
    return ensemble_attrs(trees)


add("te_leaf_two_weights", 4,
    "TreeEnsembleRegressor n_targets=1 where two leaves each carry two weights for target 0 "
    "(one pair is (w, 0.0)), 2 trees, SUM",
    regressor("te_leaf_two_weights", 4, 1, _leaf_two_weights))


def _leaf_no_weight(rng, F):
    trees = gen_trees(rng, F, 2, lw_single, depths=(2, 3))
    leaves = [n for n in trees[0] if n["mode"] == "LEAF"]
    leaves[0]["w"] = []
    leaves[0]["val"] = 1.5  # a leaf's nodes_values entry is nonzero (must be ignored)
    leaves[-1]["val"] = -0.75
    leaves2 = [n for n in trees[1] if n["mode"] == "LEAF"]
    leaves2[1]["w"] = []
    return ensemble_attrs(trees)


add("te_leaf_no_weight", 4,
    "TreeEnsembleRegressor n_targets=1 with leaves that have no weight at all (one with "
    "nodes_values 1.5, another leaf -0.75), 2 trees, SUM",
    regressor("te_leaf_no_weight", 4, 1, _leaf_no_weight))

add("te_leaf_no_weight_min", 4,
    "TreeEnsembleRegressor n_targets=1, aggregate MIN, leaves without weight (nodes_values 1.5 / "
    "-0.75), 2 trees, base_values length 1",
    regressor("te_leaf_no_weight_min", 4, 1, _leaf_no_weight, aggregate="MIN",
              base=lambda rng: base_vals(rng, 1)))

# ---- TreeEnsembleRegressor: node order / ids -------------------------------


def _order_postorder(rng, F):
    trees = gen_trees(rng, F, 3, lw_single, depths=(2, 4))
    return ensemble_attrs(trees, orders=[postorder(t) for t in trees])


add("te_order_postorder", 4,
    "TreeEnsembleRegressor, every tree listed children before parents (postorder, root last; "
    "ORT roots each tree at its first-listed node, here a leaf), ids 0..n-1, 3 trees, SUM",
    regressor("te_order_postorder", 4, 1, _order_postorder))


def _order_subtree_first(rng, F):
    trees = gen_trees(rng, F, 3, lw_single, depths=(3, 4), p_early_leaf=0.0)
    orders = []
    for t in trees:
        left = preorder_from(t, t[0]["t"])
        right = preorder_from(t, t[0]["f"])
        orders.append(left + [0] + right)
    return ensemble_attrs(trees, orders=orders)


add("te_order_subtree_first", 4,
    "TreeEnsembleRegressor, each tree listed as (true subtree, root, false subtree): ORT roots the "
    "tree at its first-listed node (the root's true child, a split), ids 0..n-1, 3 trees, SUM",
    regressor("te_order_subtree_first", 4, 1, _order_subtree_first))


def _ids_shuffled(root_first):
    def f(rng, F):
        trees = gen_trees(rng, F, 3, lw_single, depths=(2, 4))
        id_maps, orders = [], []
        for t in trees:
            id_maps.append([int(v) for v in rng.permutation(len(t))])
            if root_first:
                rest = [int(v) for v in rng.permutation(np.arange(1, len(t)))]
                orders.append([0] + rest)
            else:
                orders.append([int(v) for v in rng.permutation(len(t))])
        return ensemble_attrs(trees, id_maps=id_maps, orders=orders)
    return f


add("te_ids_shuffled", 5,
    "TreeEnsembleRegressor, node ids a random permutation of 0..n-1 within each tree, nodes listed "
    "in random order with the root first, 3 trees, SUM",
    regressor("te_ids_shuffled", 5, 1, _ids_shuffled(True)))

add("te_ids_shuffled_unordered", 5,
    "TreeEnsembleRegressor, node ids permuted and nodes listed in fully random order (root anywhere; "
    "ORT roots each tree at its first-listed node), 3 trees, SUM",
    regressor("te_ids_shuffled_unordered", 5, 1, _ids_shuffled(False)))


def _ids_gaps(rng, F):
    trees = gen_trees(rng, F, 3, lw_single, depths=(3, 4), p_early_leaf=0.1)
    total = sum(len(t) for t in trees)
    id_maps = []
    for t in trees:  # increasing ids with gaps, all < total node count (ORT requires child < total)
        ids = sorted(int(v) for v in rng.choice(np.arange(total), size=len(t), replace=False))
        id_maps.append(ids)
    return ensemble_attrs(trees, id_maps=id_maps)


add("te_ids_gaps", 4,
    "TreeEnsembleRegressor, node ids increasing with gaps (not 0..n-1, but < total node count), "
    "preorder listing, 3 trees, SUM",
    regressor("te_ids_gaps", 4, 1, _ids_gaps))


def _ids_10_20_30(rng, F):
    trees = gen_trees(rng, F, 2, lw_single, depths=(2, 3))
    return ensemble_attrs(trees, id_maps=[[10 * (i + 1) for i in range(len(t))] for t in trees])


add("te_ids_10_20_30", 4,
    "TreeEnsembleRegressor, node ids 10, 20, 30, ... in each tree (expected refused by ORT: "
    "child id >= total node count), 2 trees, SUM",
    regressor("te_ids_10_20_30", 4, 1, _ids_10_20_30))


def _tree_ids_592(rng, F):
    trees = gen_trees(rng, F, 3, lw_subset([0, 1]), depths=(2, 4))
    return ensemble_attrs(trees, tree_ids=[5, 2, 9])


add("te_tree_ids_5_2_9", 4,
    "TreeEnsembleRegressor, tree ids 5, 2, 9 in that order, n_targets=2, SUM, base_values length 2",
    regressor("te_tree_ids_5_2_9", 4, 2, _tree_ids_592, base=lambda rng: base_vals(rng, 2)))

add("te_tree_ids_5_2_9_avg", 4,
    "TreeEnsembleRegressor, tree ids 5, 2, 9 in that order, n_targets=2, AVERAGE, no base_values",
    regressor("te_tree_ids_5_2_9_avg", 4, 2, _tree_ids_592, aggregate="AVERAGE"))

# ---- TreeEnsembleClassifier -----------------------------------------------

for post in ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"):
    nm = f"tc3_base_{post.lower()}"
    add(nm, 5,
        f"TreeEnsembleClassifier 3 classes int labels [0, 1, 2], base_values length 3, "
        f"post_transform={post}, leaves weight 1-3 classes, 3 trees",
        classifier(5, [0, 1, 2], simple_trees(3, lw_subset([0, 1, 2]), kind="class"), post=post,
                   base=lambda rng: base_vals(rng, 3)))

add("tc3_nobase_none", 5,
    "TreeEnsembleClassifier 3 classes int labels [0, 1, 2], no base_values, post NONE, "
    "class 2 never weighted, 3 trees",
    classifier(5, [0, 1, 2], simple_trees(3, lw_subset([0, 1]), kind="class")))

add("tc2_both_ids_10_20", 4,
    "TreeEnsembleClassifier 2 classes, int labels [10, 20], class ids 0 and 1 both weighted, no "
    "base_values, post NONE (ORT returns literal 0/1 labels here)",
    classifier(4, [10, 20], simple_trees(3, lw_subset([0, 1]), kind="class")))

add("tc2_both_ids_10_20_logistic", 4,
    "TreeEnsembleClassifier 2 classes, int labels [10, 20], class ids 0 and 1 both weighted, "
    "post LOGISTIC",
    classifier(4, [10, 20], simple_trees(3, lw_subset([0, 1]), kind="class"), post="LOGISTIC"))

for post in ("NONE", "LOGISTIC"):
    nm = f"tc2_id0_positive_{post.lower()}"
    add(nm, 4,
        f"TreeEnsembleClassifier 2 classes [0, 1], only class id 0 weighted, all weights > 0 "
        f"(in [0.02, 0.33], so the 3-tree sum crosses 0.5), no base_values, post {post}",
        classifier(4, [0, 1], simple_trees(3, lambda rng: [(0, weight(rng, 0.02, 0.33, 0))],
                                           kind="class"), post=post))
for post in ("NONE", "LOGISTIC"):
    nm = f"tc2_id0_mixed_{post.lower()}"
    add(nm, 4,
        f"TreeEnsembleClassifier 2 classes [0, 1], only class id 0 weighted, mixed-sign weights "
        f"(some 0), no base_values, post {post}",
        classifier(4, [0, 1], simple_trees(3, lw_single, kind="class"), post=post))

add("tc2_id0_base1", 4,
    "TreeEnsembleClassifier 2 classes [0, 1], only class id 0 weighted (mixed sign), 1 base value, "
    "post NONE",
    classifier(4, [0, 1], simple_trees(3, lw_single, kind="class"), base=lambda rng: base_vals(rng, 1)))
add("tc2_id0_base1_logistic", 4,
    "TreeEnsembleClassifier 2 classes [0, 1], only class id 0 weighted (mixed sign), 1 base value, "
    "post LOGISTIC (sklearn GradientBoosting binary layout)",
    classifier(4, [0, 1], simple_trees(3, lw_single, kind="class"), post="LOGISTIC",
               base=lambda rng: base_vals(rng, 1)))
add("tc2_both_ids_base1", 4,
    "TreeEnsembleClassifier 2 classes [0, 1], class ids 0 and 1 weighted, 1 base value, post NONE",
    classifier(4, [0, 1], simple_trees(3, lw_subset([0, 1]), kind="class"),
               base=lambda rng: base_vals(rng, 1)))
add("tc2_id0_base2", 4,
    "TreeEnsembleClassifier 2 classes [0, 1], only class id 0 weighted, 2 base values, post NONE",
    classifier(4, [0, 1], simple_trees(3, lw_single, kind="class"), base=lambda rng: base_vals(rng, 2)))
add("tc2_both_ids_base2", 4,
    "TreeEnsembleClassifier 2 classes [0, 1], class ids 0 and 1 weighted, 2 (different) base values, "
    "post NONE",
    classifier(4, [0, 1], simple_trees(3, lw_subset([0, 1]), kind="class"),
               base=lambda rng: base_vals(rng, 2)))
add("tc3_strings_softmax", 5,
    "TreeEnsembleClassifier 3 classes string labels [cat, dog, bird], base_values length 3, "
    "post SOFTMAX",
    classifier(5, ["cat", "dog", "bird"], simple_trees(3, lw_subset([0, 1, 2]), kind="class"),
               post="SOFTMAX", base=lambda rng: base_vals(rng, 3)))
add("tc2_strings_id0_logistic", 4,
    "TreeEnsembleClassifier 2 classes string labels [no, yes], only class id 0 weighted, 1 base "
    "value, post LOGISTIC",
    classifier(4, ["no", "yes"], simple_trees(3, lw_single, kind="class"), post="LOGISTIC",
               base=lambda rng: base_vals(rng, 1)))
add("tc2_strings_both_ids", 4,
    "TreeEnsembleClassifier 2 classes string labels [no, yes], class ids 0 and 1 weighted, post NONE",
    classifier(4, ["no", "yes"], simple_trees(3, lw_subset([0, 1]), kind="class")))

# ---- Normalizer -----------------------------------------------------------


def normalizer(norm, via_double=False):
    def build(rng, F):
        nodes, src = [], "input"
        if via_double:
            nodes.append(helper.make_node("Cast", ["input"], ["input_f64"], to=TP.DOUBLE))
            src = "input_f64"
        nodes.append(helper.make_node("Normalizer", [src], ["variable"], domain=ML, norm=norm))
        return nodes, [("variable", TP.FLOAT, [None, F])], []
    return build


for norm in ("MAX", "L1", "L2"):
    add(f"normalizer_{norm.lower()}", 4, f"Normalizer norm={norm} on the FP32 input", normalizer(norm))
add("normalizer_l2_f64", 4, "Cast(to=DOUBLE) then Normalizer norm=L2 (FP64 input, FP32 output)",
    normalizer("L2", via_double=True))

# ---- LinearClassifier / LinearRegressor ------------------------------------


def coef(rng, n):
    return [weight(rng, p_zero=0.1) for _ in range(n)]


def linear_classifier(n_rows, labels, post, multi_class=None):
    strings = isinstance(labels[0], str)

    def build(rng, F):
        kw = dict(coefficients=coef(rng, n_rows * F), intercepts=coef(rng, n_rows),
                  post_transform=post)
        if strings:
            kw["classlabels_strings"] = list(labels)
        else:
            kw["classlabels_ints"] = list(labels)
        if multi_class is not None:
            kw["multi_class"] = multi_class
        node = helper.make_node("LinearClassifier", ["input"], ["label", "probabilities"],
                                domain=ML, **kw)
        return [node], [("label", TP.STRING if strings else TP.INT64, [None]),
                        ("probabilities", TP.FLOAT, [None, len(labels)])], []
    return build


add("linclf6_softmax", 6, "LinearClassifier 6 classes int labels 0..5, post SOFTMAX (MLAS softmax path)",
    linear_classifier(6, [0, 1, 2, 3, 4, 5], "SOFTMAX"))
add("linclf3_softmax_zero", 5, "LinearClassifier 3 classes int labels [0, 1, 2], post SOFTMAX_ZERO",
    linear_classifier(3, [0, 1, 2], "SOFTMAX_ZERO"))
add("linclf3_logistic", 5, "LinearClassifier 3 classes int labels [0, 1, 2], post LOGISTIC",
    linear_classifier(3, [0, 1, 2], "LOGISTIC"))
add("linclf3_none_strings", 5, "LinearClassifier 3 classes string labels [a, b, c], post NONE",
    linear_classifier(3, ["a", "b", "c"], "NONE"))
add("linclf_bin_none", 4,
    "LinearClassifier binary: 1 coefficient row + 1 intercept, 2 int labels [0, 1], post NONE",
    linear_classifier(1, [0, 1], "NONE"))
add("linclf_bin_logistic", 4,
    "LinearClassifier binary: 1 coefficient row + 1 intercept, 2 int labels [0, 1], post LOGISTIC",
    linear_classifier(1, [0, 1], "LOGISTIC"))


def linear_regressor(targets, post, reshape=None):
    def build(rng, F):
        node = helper.make_node("LinearRegressor", ["input"], ["variable" if reshape is None else "lin"],
                                domain=ML, coefficients=coef(rng, targets * F),
                                intercepts=coef(rng, targets), targets=targets, post_transform=post)
        if reshape is None:
            return [node], [("variable", TP.FLOAT, [None, targets])], []
        shape = numpy_helper.from_array(np.array(reshape, dtype=np.int64), "shape")
        rs = helper.make_node("Reshape", ["lin", "shape"], ["variable"])
        return [node, rs], [("variable", TP.FLOAT, [None, 1])], [shape]
    return build


add("linreg2_none", 5, "LinearRegressor targets=2, post NONE", linear_regressor(2, "NONE"))
add("linreg2_probit", 5, "LinearRegressor targets=2, post PROBIT (NaN outside (0, 1))",
    linear_regressor(2, "PROBIT"))
add("linreg1_reshape", 5, "LinearRegressor targets=1 then Reshape(shape=[-1, 1] initializer)",
    linear_regressor(1, "NONE", reshape=[-1, 1]))
add("linreg2_reshape_flat", 3,
    "LinearRegressor targets=2 then Reshape [-1, 1]: output has 2*N rows (row-major interleaved)",
    linear_regressor(2, "NONE", reshape=[-1, 1]))

# ---- Cast, ArrayFeatureExtractor, arithmetic --------------------------------


def _cast_i64(rng, F):
    return ([helper.make_node("Cast", ["input"], ["variable"], to=TP.INT64)],
            [("variable", TP.INT64, [None, F])], [])


def _cast_roundtrip(rng, F):
    return ([helper.make_node("Cast", ["input"], ["input_f64"], to=TP.DOUBLE),
             helper.make_node("Cast", ["input_f64"], ["variable"], to=TP.FLOAT)],
            [("variable", TP.FLOAT, [None, F])], [])


def _afe(rng, F):
    idx = numpy_helper.from_array(np.array([2, 0], dtype=np.int64), "indices")
    return ([helper.make_node("ArrayFeatureExtractor", ["input", "indices"], ["variable"], domain=ML)],
            [("variable", TP.FLOAT, [None, 2])], [idx])


add("cast_f32_to_i64", 4,
    "Cast FP32 -> INT64 as the graph output (NaN, +/-inf, huge, negative fractional inputs)", _cast_i64)
add("cast_f32_f64_f32", 4, "Cast FP32 -> DOUBLE -> FP32 (round trip)", _cast_roundtrip)
add("afe_2_0", 4, "ArrayFeatureExtractor with constant int64 indices [2, 0] on the input", _afe)


def arith(op, const_first, scalar):
    def build(rng, F):
        if scalar:
            c = np.array(weight(rng, -3, 3, 0) or 1.5, dtype=np.float32)
        else:
            c = np.array([weight(rng, -3, 3, 0) for _ in range(F)], dtype=np.float32)
            c[1] = 0.0  # exact zero column: inf*0 -> NaN, 0/0 -> NaN, 0-0 / -0.0+0 signs
            if F > 3:
                c[3] = -0.0
        init = numpy_helper.from_array(c, "c")
        ins = ["c", "input"] if const_first else ["input", "c"]
        return ([helper.make_node(op, ins, ["variable"])], [("variable", TP.FLOAT, [None, F])], [init])
    return build


for op, first in (("Add", False), ("Sub", True), ("Mul", False), ("Div", True)):
    for scalar in (False, True):
        nm = f"{op.lower()}_{'scalar' if scalar else 'vec'}" + ("_const_first" if first else "")
        operands = ("c, input" if first else "input, c")
        cdesc = "rank-0 scalar constant" if scalar else \
            "per-column constant vector [F] (column 1 = 0.0, column 3 = -0.0)"
        add(nm, 4 if not scalar else 3, f"{op}({operands}) with c a {cdesc} initializer",
            arith(op, first, scalar))


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 3.0e38, -3.0e38,
                     9.3e18, -9.3e18, 1e-30, 1e-45, -0.5, -1.5, -2.7, 0.5, 2.5])


def check_rows(F, seed):
    rng = np.random.default_rng(seed)
    # small integers: exact EQ/NEQ thresholds
    X = float_rows(rng, N_CHECK_ROWS, F, int_rate=0.15, int_high=5, specials=SPECIALS,
                   dtype=np.float32)
    X[6, :] = -0.5
    return X


def session(data):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def validate(onx, data, F, seed):
    """Returns (error or None, has_nan)."""
    try:
        onnx.checker.check_model(onx, full_check=True)
    except Exception as exc:  # noqa: BLE001
        return f"onnx.checker(full_check=True): {type(exc).__name__}: {_first_line(exc)}", False
    try:
        sess = session(data)
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime session creation: {_first_line(exc)}", False
    X = check_rows(F, seed)
    try:
        res = sess.run(None, {"input": X})
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime run: {_first_line(exc)}", False
    has_nan = False
    for out, r in zip(onx.graph.output, res):
        r = np.asarray(r)
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in out.type.tensor_type.shape.dim]
        if len(dims) != r.ndim or any(d is not None and d != s for d, s in zip(dims, r.shape)):
            return f"output {out.name}: declared {dims}, onnxruntime returned {list(r.shape)}", False
        if r.shape[0] % N_CHECK_ROWS:
            return f"output {out.name}: {r.shape[0]} rows for {N_CHECK_ROWS} input rows", False
        if r.dtype.kind == "f" and np.isnan(r).any():
            has_nan = True
    return None, has_nan


def _first_line(exc, n=300):
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", str(exc).strip())
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    # an ORT_ENFORCE failure: keep the file:line and the condition, not the C++ signature
    m = re.search(r"([\w/]+\.(?:h|cc):\d+) .*?\] (.*)$", lines[0])
    if m:
        return f"{m.group(1).split('/')[-1]}: {m.group(2)}"[:n]
    return lines[0][:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "corpus" / "ops")
    args = parser.parse_args()
    out: Path = args.out

    names = [m["name"] for m in MODELS]
    assert len(names) == len(set(names)), "duplicate model names"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    manifest, dropped = [], []
    for m in MODELS:
        name, F = m["name"], m["features"]
        s = _seed(name)
        rng = np.random.default_rng(s)
        nodes, outputs, inits = m["build"](rng, F)
        onx = make_model(name, F, nodes, outputs, inits)
        data = onx.SerializeToString()
        err, has_nan = validate(onx, data, F, s + 1)
        if err:
            tag = "expected" if name in EXPECTED_DROPS else "UNEXPECTED"
            print(f"DROP {name} ({tag}): {err}")
            dropped.append((name, err))
            continue
        (out / f"{name}.onnx").write_bytes(data)
        manifest.append({"name": name, "file": f"{name}.onnx", "bytes": len(data),
                         "features": F, "what": m["what"]})
        print(f"ok   {name:<30} {len(data):>5} B  F={F}{'  (NaN in outputs)' if has_nan else ''}")

    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{len(manifest)} models written to {out} ({total} bytes); {len(dropped)} dropped")
    for name, err in dropped:
        print(f"dropped {name}: {err}")
    unexpected = [n for n, _ in dropped if n not in EXPECTED_DROPS]
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
