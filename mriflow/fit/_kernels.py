"""Small numba building blocks shared by the fit kernels (serial, GIL-free)."""

from __future__ import annotations

import numpy as np
from numba import njit

from mriflow.fit.mapper import NUMBA_OPTIONS

__all__ = ["cholesky_solve", "usable_signal"]


@njit(**NUMBA_OPTIONS)
def usable_signal(row: np.ndarray) -> bool:
    """Whether every sample of a voxel is finite and non-negative (else it fits to NaN)."""
    for value in row:  # noqa: SIM110 (a plain loop is what numba compiles)
        if not (value >= 0.0 and value < np.inf):
            return False
    return True


@njit(**NUMBA_OPTIONS)
def cholesky_solve(
    matrix: np.ndarray, rhs: np.ndarray, factor: np.ndarray, out: np.ndarray
) -> bool:
    """Solve ``matrix @ out = rhs`` for a symmetric positive definite ``matrix`` (n, n).

    ``factor`` (n, n) is scratch space for the lower Cholesky factor. Returns ``False``
    (leaving ``out`` undefined) when ``matrix`` is not positive definite.
    """
    n = matrix.shape[0]
    for col in range(n):
        total = matrix[col, col]
        for k in range(col):
            total -= factor[col, k] * factor[col, k]
        if not total > 0.0:
            return False
        diagonal = np.sqrt(total)
        factor[col, col] = diagonal
        for row in range(col + 1, n):
            total = matrix[row, col]
            for k in range(col):
                total -= factor[row, k] * factor[col, k]
            factor[row, col] = total / diagonal
    for row in range(n):  # forward: L y = rhs
        total = rhs[row]
        for k in range(row):
            total -= factor[row, k] * out[k]
        out[row] = total / factor[row, row]
    for row in range(n - 1, -1, -1):  # backward: L^T x = y
        total = out[row]
        for k in range(row + 1, n):
            total -= factor[k, row] * out[k]
        out[row] = total / factor[row, row]
    return True
