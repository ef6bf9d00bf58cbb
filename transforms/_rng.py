"""Counter-based random numbers for the event generators: draw *k* of event *i* is a pure
function of (seed, stream, i, k), so any split of an event range into pieces gives the same
bits for every event.

Written by hand (not numpy.random.Philox) because the draws must be callable inside Numba
kernels, one event at a time, with no generator state to carry between events.

The construction follows SplitMix64 (Steele, Lea & Flood 2014), whose output function is a
64-bit bijective mixer (Stafford's "Mix13"):

* ``stream_key(seed, stream) = mix(mix(seed) + stream * G)``
* ``event_base(key, i)       = mix(key + (i + 1) * G2)``
* ``uniform(base, k)         = to_unit(mix(base + (k + 1) * G))``

so the draws of one event are exactly a SplitMix64 sequence started at a pseudo-random
64-bit state, which passes BigCrush. ``to_unit`` keeps 53 bits and maps them to the open
interval (0, 1), so ``log(u)`` is always finite.

Hand-written normal and Poisson samplers, for the same reason: one draw each, inside Numba.

Kernels give each quantity a fixed draw number ``k`` (documented where the kernel lives):
changing that layout changes the output and needs a generator ``version`` bump. The same
holds for any change here that changes output: Numba's on-disk cache of the kernels in
``generators.py`` is keyed on that file alone and does not notice edits to this one, and the
version bump there is what refreshes it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["event_base", "normal", "poisson", "stream_key", "uniform"]

_G = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, SplitMix64's increment
_G2 = np.uint64(0xD1B54A32D192ED03)  # a second odd constant (R2 sequence) for event indices
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def stream_key(seed: np.uint64, stream: np.uint64) -> np.uint64:
    """The key of one random stream (one generator) for a seed in [0, 2**64).

    Numba boxes the result as a Python int: wrap it in ``np.uint64`` before passing it on,
    or kernels would be typed (and compiled) for int64 keys too."""
    return _mix(_mix(np.uint64(seed)) + np.uint64(stream) * _G)


@njit(cache=True, inline="always")
def event_base(key: np.uint64, index: np.int64) -> np.uint64:
    """The SplitMix64 starting state of event ``index`` (>= 0) in the stream ``key``."""
    return _mix(np.uint64(key) + (np.uint64(index) + _ONE) * _G2)


@njit(cache=True, inline="always")
def uniform(base: np.uint64, k: np.int64) -> float:
    """Draw number ``k`` (>= 0) of the event whose base is ``base``: a float64 in (0, 1)."""
    bits = _mix(base + (np.uint64(k) + _ONE) * _G) >> _S11
    return (np.float64(bits) + 0.5) * _TWO_M53


@njit(cache=True, inline="always")
def normal(base: np.uint64, k: np.int64) -> float:
    """A standard normal from the single draw ``k``, by the inverse CDF (Wichura's AS241,
    the algorithm and coefficients of CPython's ``statistics.NormalDist.inv_cdf``; relative
    error ~1e-16). One draw per normal, and cheaper than Box-Muller in the central region."""
    p = uniform(base, k)
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        num = (((((((2.50908_09287_30122_6727e+3 * r +
                     3.34305_75583_58812_8105e+4) * r +
                     6.72657_70927_00870_0853e+4) * r +
                     4.59219_53931_54987_1457e+4) * r +
                     1.37316_93765_50946_1125e+4) * r +
                     1.97159_09503_06551_4427e+3) * r +
                     1.33141_66789_17843_7745e+2) * r +
                     3.38713_28727_96366_6080e+0) * q
        den = (((((((5.22649_52788_52854_5610e+3 * r +
                     2.87290_85735_72194_2674e+4) * r +
                     3.93078_95800_09271_0610e+4) * r +
                     2.12137_94301_58659_5867e+4) * r +
                     5.39419_60214_24751_1077e+3) * r +
                     6.87187_00749_20579_0830e+2) * r +
                     4.23133_30701_60091_1252e+1) * r +
                     1.0)
        return num / den
    r = math.sqrt(-math.log(p if q <= 0.0 else 1.0 - p))
    if r <= 5.0:
        r = r - 1.6
        num = (((((((7.74545_01427_83414_07640e-4 * r +
                     2.27238_44989_26918_45833e-2) * r +
                     2.41780_72517_74506_11770e-1) * r +
                     1.27045_82524_52368_38258e+0) * r +
                     3.64784_83247_63204_60504e+0) * r +
                     5.76949_72214_60691_40550e+0) * r +
                     4.63033_78461_56545_29590e+0) * r +
                     1.42343_71107_49683_57734e+0)
        den = (((((((1.05075_00716_44416_84324e-9 * r +
                     5.47593_80849_95344_94600e-4) * r +
                     1.51986_66563_61645_71966e-2) * r +
                     1.48103_97642_74800_74590e-1) * r +
                     6.89767_33498_51000_04550e-1) * r +
                     1.67638_48301_83803_84940e+0) * r +
                     2.05319_16266_37758_82187e+0) * r +
                     1.0)
    else:
        r = r - 5.0
        num = (((((((2.01033_43992_92288_13265e-7 * r +
                     2.71155_55687_43487_57815e-5) * r +
                     1.24266_09473_88078_43860e-3) * r +
                     2.65321_89526_57612_30930e-2) * r +
                     2.96560_57182_85048_91230e-1) * r +
                     1.78482_65399_17291_33580e+0) * r +
                     5.46378_49111_64114_36990e+0) * r +
                     6.65790_46435_01103_77720e+0)
        den = (((((((2.04426_31033_89939_78564e-15 * r +
                     1.42151_17583_16445_88870e-7) * r +
                     1.84631_83175_10054_68180e-5) * r +
                     7.86869_13114_56132_59100e-4) * r +
                     1.48753_61290_85061_48525e-2) * r +
                     1.36929_88092_27358_05310e-1) * r +
                     5.99832_20655_58879_37690e-1) * r +
                     1.0)
    x = num / den
    return -x if q < 0.0 else x


@njit(cache=True, inline="always")
def poisson(base: np.uint64, k: np.int64, mean: float, cap: np.int64) -> np.int64:
    """A Poisson(``mean``) count from the single draw ``k``, by inverting the CDF; at most ``cap``.

    One draw per count keeps the draw layout fixed; the cost is O(mean), fine for the small
    means of jet multiplicities (validated to at most 50).
    """
    if mean <= 0.0:
        return 0
    u = uniform(base, k)
    p = math.exp(-mean)
    cdf = p
    n = 0
    while u > cdf and n < cap:
        n += 1
        p *= mean / n
        cdf += p
    return n
