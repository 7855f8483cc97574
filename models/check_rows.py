"""The rows the corpus generators (make_corpus.py, make_op_models.py) check each model on.

Normal values, a share of small integers (exact thresholds for EQ/NEQ and categorical
splits), 15% special values, and the first six rows fixed: NaN, 0, -0, +inf, -inf, 1e30.
"""

import numpy as np


def float_rows(rng: np.random.Generator, n_rows: int, n_features: int, *, int_rate: float,
               int_high: int, specials: np.ndarray, dtype) -> np.ndarray:
    """Rows of `dtype`; small integers are drawn from [-1, int_high) at `int_rate`."""
    X = rng.normal(scale=2.0, size=(n_rows, n_features))
    ints = rng.random(X.shape) < int_rate
    X[ints] = rng.integers(-1, int_high, size=int(ints.sum()))
    special = rng.random(X.shape) < 0.15
    X[special] = rng.choice(specials, size=int(special.sum()))
    X[0, :] = np.nan
    X[1, :] = 0.0
    X[2, :] = -0.0
    X[3, :] = np.inf
    X[4, :] = -np.inf
    X[5, :] = 1e30
    with np.errstate(over="ignore"):
        return X.astype(dtype)
