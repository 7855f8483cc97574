#!/usr/bin/env python3
"""MLflow model directories saved by the mlflow package itself, for tests/tests/it/cli/mlflow.rs.

    python3 tests/mlflow_models.py save OUT
    python3 tests/mlflow_models.py save-bad OUT
    python3 tests/mlflow_models.py metadata MODEL.onnx

`save` trains three small models on a pandas DataFrame with named columns (price, qty,
temp, promo) and saves each with its flavor's own save_model and a signature from
mlflow.models.infer_signature, with MLflow's defaults (skops for scikit-learn and the
LightGBM scikit-learn API, UBJ for XGBoost):

- OUT/src/sk-churn:   mlflow.sklearn, a Pipeline(StandardScaler, LogisticRegression) classifier
- OUT/src/lgb-demand: mlflow.lightgbm, an LGBMRegressor
- OUT/src/xgb-risk:   mlflow.xgboost, an XGBClassifier (binary)

and the directories import must refuse:

- OUT/bad/custom-pyfunc: mlflow.pyfunc.save_model of a PythonModel (flavor python_function only)
- OUT/bad/broken-yaml:   sk-churn's files with an MLmodel that is not YAML
- OUT/bad/text-column:   an sklearn model saved with a signature that has a string column

`save-bad` saves only the refusals. `save` also writes OUT/reference.json: the columns, 16 rows (float32 values, the type the scorer
feeds) and each model's library predictions on them ("values" for a regressor;
"probabilities" [rows, classes] and "labels" for a classifier).

`metadata` prints an ONNX file's metadata_props as one JSON object (the tests read
manymodels.columns from it). Versions: tests/requirements.txt, models/requirements.txt.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

COLUMNS = ["price", "qty", "temp", "promo"]
SEED = 7


def frame(rows: int, rng):
    import numpy as np
    import pandas as pd

    values = rng.standard_normal((rows, len(COLUMNS))).astype(np.float32).astype(np.float64)
    return pd.DataFrame(values, columns=COLUMNS)


def save(out: Path, good: bool = True) -> None:
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(SEED)
    train = frame(400, rng)
    y_value = 3 * train.price - 2 * train.qty + train.temp * train.promo + rng.normal(0, 0.1, len(train))
    y_class = (train.price + 0.5 * train.temp > 0.2).astype(int)
    rows = frame(16, rng)

    src, bad = out / "src", out / "bad"
    sk = make_pipeline(StandardScaler(), LogisticRegression()).fit(train, y_class)
    for folder in (src, bad):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    reference = {"columns": COLUMNS, "rows": rows.values.tolist(), "models": {}}
    mlflow.sklearn.save_model(sk, src / "sk-churn", signature=infer_signature(train, sk.predict(train)))
    if good:
        save_good(src, sk, train, y_value, y_class, rows, reference)
    save_bad(src, bad, train, sk)
    if good:
        (out / "reference.json").write_text(json.dumps(reference), encoding="utf-8")
    print(f"saved {', '.join(sorted(reference['models']))} and 3 refusals under {out}")


def save_good(src: Path, sk, train, y_value, y_class, rows, reference: dict) -> None:
    import lightgbm
    import mlflow.lightgbm
    import mlflow.sklearn
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    reference["models"]["sk-churn"] = {
        "flavor": "sklearn",
        "probabilities": sk.predict_proba(rows).tolist(),
        "labels": sk.predict(rows).tolist(),
    }

    lgb = lightgbm.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1).fit(train, y_value)
    mlflow.lightgbm.save_model(lgb, src / "lgb-demand", signature=infer_signature(train, lgb.predict(train)))
    reference["models"]["lgb-demand"] = {"flavor": "lightgbm", "values": lgb.predict(rows).tolist()}

    xgb = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(train, y_class)
    mlflow.xgboost.save_model(xgb, src / "xgb-risk", signature=infer_signature(train, xgb.predict(train)))
    reference["models"]["xgb-risk"] = {
        "flavor": "xgboost",
        "probabilities": xgb.predict_proba(rows).tolist(),
        "labels": xgb.predict(rows).tolist(),
    }


def save_bad(src: Path, bad: Path, train, sk) -> None:
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input * 2

    mlflow.pyfunc.save_model(bad / "custom-pyfunc", python_model=Doubler(),
                             signature=infer_signature(train, train * 2))

    shutil.copytree(src / "sk-churn", bad / "broken-yaml")
    (bad / "broken-yaml" / "MLmodel").write_text("flavors:\n  sklearn: [unclosed\n", encoding="utf-8")

    text = train.assign(region="north")
    mlflow.sklearn.save_model(sk, bad / "text-column", signature=infer_signature(text, sk.predict(train)))


def metadata(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    print(json.dumps({p.key: p.value for p in model.metadata_props}))


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    if len(argv) == 2 and argv[0] in ("save", "save-bad"):
        save(Path(argv[1]), good=argv[0] == "save")
    elif len(argv) == 2 and argv[0] == "metadata":
        metadata(Path(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
