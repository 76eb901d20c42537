"""The runner's zeroth-order step (MeZO / SPSA) in numpy: the same perturbations, bit for bit where the
platform's libm agrees, so a host process can replay what the device did (tests, the eager column of
``benchmarks/finetune_memory.py``) and nobody has to trust the device's loss curve on its word.

The rule (``runtime/native/src/train_mezo.cpp`` is the other half and says the same):

* the trainable parameters, in the program's order, are one vector; element ``j`` of the perturbation
  ``z`` comes from a counter-based generator keyed by ``(seed, step, sample)``: SplitMix64's ``i``-th
  output from state ``key``, ``draw(key, i) = mix64(key + (i + 1) * golden)``;
* ``gaussian``: pair ``k = j // 2`` takes ``u1 = 1 - unit(draw(key, 2k))``, ``u2 = unit(draw(key, 2k+1))``,
  ``r = sqrt(-2 ln u1)``, ``z = r cos(2 pi u2)`` (even ``j``) or ``r sin(2 pi u2)`` (odd ``j``);
  ``rademacher``: ``z = +-1`` by bit ``j % 64`` of ``draw(key, j // 64)`` (no libm at all);
* a pass sets ``w = float32(float64(w) * (1 - decay) + scale * z)``;
* a step, per perturbation ``s``: ``+eps`` -> loss ``l+``, ``-2 eps`` -> loss ``l-``,
  ``g_s = (l+ - l-) / (2 eps)``, ``+eps`` back (all but the last); then ``-lr g_s / S`` along each ``z_s``,
  the last perturbation's ``+eps`` restore, update and ``lr * weight_decay`` shrink in one pass.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1
NOISES = ("gaussian", "rademacher")


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def step_key(seed: int, step: int, sample: int = 0) -> int:
    """The key of perturbation ``sample`` of optimizer step ``step`` (0-based) of a run seeded ``seed``."""
    return _mix64_int((seed * 0xD1B54A32D192ED03 + step * 0x10000 + sample + 7) & MASK)


def _draws(key: int, start: int, count: int) -> np.ndarray:
    i = np.arange(start, start + count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix64(np.uint64(key) + (i + np.uint64(1)) * np.uint64(GOLDEN))


def _unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def noise(key: int, n: int, kind: str = "gaussian", start: int = 0) -> np.ndarray:
    """``z`` for elements ``start .. start + n`` (float64), as the runner draws them."""
    if kind not in NOISES:
        raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {kind!r}")
    if n <= 0:
        return np.zeros(0)
    if kind == "rademacher":
        first, last = start // 64, (start + n - 1) // 64
        words = _draws(key, first, last - first + 1)
        bits = (words[:, None] >> np.arange(64, dtype=np.uint64)[None, :]) & np.uint64(1)
        off = start - first * 64
        return np.where(bits.reshape(-1)[off:off + n] == 1, 1.0, -1.0)
    first, last = start // 2, (start + n - 1) // 2
    raw = _draws(key, 2 * first, 2 * (last - first + 1))
    u1, u2 = 1.0 - _unit(raw[0::2]), _unit(raw[1::2])
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(2 * (last - first + 1))
    z[0::2], z[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    off = start - 2 * first
    return z[off:off + n]


#: elements drawn at a time by :func:`perturb` (bounded temporaries, ~50 MB, whatever the model's size)
CHUNK = 1 << 21


def perturb(weights: Sequence[np.ndarray], key: int, scale: float, decay: float = 0.0,
            kind: str = "gaussian") -> None:
    """``w = float32(w * (1 - decay) + scale * z)`` over the float32 arrays ``weights`` (in place, one vector)."""
    keep, at = 1.0 - decay, 0
    for w in weights:
        flat = w.reshape(-1)
        if not np.shares_memory(flat, w):
            raise ValueError("perturb needs contiguous arrays (it writes them in place)")
        for a in range(0, flat.size, CHUNK):
            b = min(flat.size, a + CHUNK)
            z = noise(key, b - a, kind, start=at + a)
            flat[a:b] = (flat[a:b].astype(np.float64) * keep + scale * z).astype(np.float32)
        at += flat.size


def step(weights: Sequence[np.ndarray], loss: Callable[[], float], *, seed: int, step: int, lr: float,
         eps: float, samples: int = 1, weight_decay: float = 0.0, kind: str = "gaussian") -> tuple[float, float]:
    """One zeroth-order step as the runner takes it: ``loss()`` evaluates the batch at the current
    ``weights``. Returns ``(mean loss, mean projected gradient)``, the ``step`` line's figures."""
    g, total = [], 0.0
    for s in range(samples):
        key = step_key(seed, step, s)
        perturb(weights, key, eps, kind=kind)
        lp = float(loss())
        perturb(weights, key, -2 * eps, kind=kind)
        lm = float(loss())
        g.append((lp - lm) / (2 * eps))
        if s + 1 < samples:
            perturb(weights, key, eps, kind=kind)
        total += 0.5 * (lp + lm)
    _update(weights, g, seed=seed, step=step, lr=lr, eps=eps, weight_decay=weight_decay, kind=kind)
    return total / samples, sum(x / samples for x in g)


def replay(weights: Sequence[np.ndarray], grads: Sequence[float], *, seed: int, step: int, lr: float, eps: float,
           weight_decay: float = 0.0, kind: str = "gaussian") -> None:
    """Step ``step``'s passes over ``weights`` given its projected gradients (one per perturbation, as the
    device computed them): what the runner did to its weights, without running a forward."""
    for s in range(len(grads)):
        key = step_key(seed, step, s)
        perturb(weights, key, eps, kind=kind)
        perturb(weights, key, -2 * eps, kind=kind)
        if s + 1 < len(grads):
            perturb(weights, key, eps, kind=kind)
    _update(weights, list(grads), seed=seed, step=step, lr=lr, eps=eps, weight_decay=weight_decay, kind=kind)


def _update(weights, g, *, seed, step, lr, eps, weight_decay, kind) -> None:
    samples = len(g)
    for s in range(samples):
        scale = -lr * g[s] / samples
        key = step_key(seed, step, s)
        if s + 1 < samples:
            perturb(weights, key, scale, kind=kind)
        else:  # back from w - eps z, the update along z and the decay in one pass
            perturb(weights, key, eps + scale, lr * weight_decay, kind=kind)
