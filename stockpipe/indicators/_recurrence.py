"""First-order linear recurrences (EMA, Wilder smoothing) without a Python loop per bar.

y[t] = a * y[t-1] + b * x[t]. Within a block of B bars this is y_block = L @ x_block + a^(j+1) * y_prev
with L[j, i] = b * a^(j-i) for i <= j, so a 2,520-bar history takes 40 small matrix products for all
symbols at once. Only non-negative powers of a (0 < a < 1) appear, so nothing grows; each value is a
sum of at most B terms and stays within a few ulps of the bar-by-bar recursion.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 64
# A plain dict rather than functools.lru_cache: the Spark engine ships these kernels to executors by
# value (cloudpickle), and an lru_cache wrapper would be pickled by reference, i.e. need stockpipe
# installed (and its whole package imported) on every executor.
_OPERATORS: dict[tuple[float, float, int], tuple[np.ndarray, np.ndarray]] = {}


def _block_operators(a: float, b: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    found = _OPERATORS.get((a, b, block))
    if found is None:
        exponent = np.arange(block)[:, None] - np.arange(block)[None, :]
        lower = np.where(exponent >= 0, b * np.power(a, np.maximum(exponent, 0)), 0.0)
        carry = np.power(a, np.arange(1, block + 1))
        found = _OPERATORS[(a, b, block)] = (lower, carry)
    return found


def linear_recurrence(x: np.ndarray, a: float, b: float, initial: np.ndarray | float) -> np.ndarray:
    """y[t] = a*y[t-1] + b*x[t] along axis 0, with y[-1] = `initial`.

    NaN is only expected as trailing padding (a symbol with fewer bars than the matrix depth): it is
    treated as zero while summing and put back in the output, so it never leaks into earlier bars of
    the same block.
    """
    n = x.shape[0]
    out = np.empty(x.shape, dtype=np.float64)
    padding = np.isnan(x)
    values = np.where(padding, 0.0, x)
    previous = np.array(initial, dtype=np.float64) * np.ones(x.shape[1:])
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        size = stop - start
        lower, carry = _block_operators(a, b, _BLOCK)
        block = lower[:size, :size] @ values[start:stop]
        block += np.multiply.outer(carry[:size], previous)
        out[start:stop] = block
        previous = block[-1]
    out[padding] = np.nan
    return out
