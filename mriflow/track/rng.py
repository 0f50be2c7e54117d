"""Counter-based random numbers: Philox4x32-10 keyed by (rng seed, seed id).

Each streamline draws from its own stream, addressed by the user's ``rng`` seed (the key)
and the streamline's global seed id plus a draw counter (the counter), so the numbers a
streamline sees do not depend on which batch, thread or worker tracks it (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

__all__ = ["RNG_STATE_SIZE", "new_rng_state", "philox4x32", "uniform"]

#: Length of the per-streamline state array: key, seed id, draw counter.
RNG_STATE_SIZE = 3

_MASK32 = np.uint64(0xFFFFFFFF)
_MULT0 = np.uint64(0xD2511F53)
_MULT1 = np.uint64(0xCD9E8D57)
_WEYL0 = np.uint64(0x9E3779B9)
_WEYL1 = np.uint64(0xBB67AE85)


@njit(
    types.UniTuple(types.uint64, 4)(types.uint64, types.uint64, types.uint64),
    nogil=True,
    cache=True,
)
def philox4x32(
    key: int, stream: int, counter: int
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """Ten Philox4x32 rounds on the block ``(counter, stream)`` with the 64-bit ``key``.

    Returns four 32-bit words (held in uint64).
    """
    c0 = counter & _MASK32
    c1 = (counter >> np.uint64(32)) & _MASK32
    c2 = stream & _MASK32
    c3 = (stream >> np.uint64(32)) & _MASK32
    k0 = key & _MASK32
    k1 = (key >> np.uint64(32)) & _MASK32
    for _ in range(10):
        p0 = _MULT0 * c0
        p1 = _MULT1 * c2
        hi0 = p0 >> np.uint64(32)
        lo0 = p0 & _MASK32
        hi1 = p1 >> np.uint64(32)
        lo1 = p1 & _MASK32
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = (k0 + _WEYL0) & _MASK32
        k1 = (k1 + _WEYL1) & _MASK32
    return c0, c1, c2, c3


@njit(types.float64(types.uint64[::1]), nogil=True, cache=True)
def uniform(state: np.ndarray) -> float:
    """Next uniform double in ``[0, 1)`` from ``state`` = ``[key, seed id, counter]``.

    Advances the counter by one.
    """
    word0, word1, _, _ = philox4x32(state[0], state[1], state[2])
    state[2] += np.uint64(1)
    high = word0 >> np.uint64(5)  # 27 bits
    low = word1 >> np.uint64(6)  # 26 bits
    return (float(high) * 67108864.0 + float(low)) / 9007199254740992.0


def new_rng_state(rng_seed: int, seed_id: int) -> np.ndarray:
    """The state array of one streamline's stream (counter at zero)."""
    return np.array([rng_seed, seed_id, 0], dtype=np.uint64)
