"""Learning-rate schedules as pure functions of training progress.

Every schedule here has the signature `f(t, T, **params) -> float` where
    t = images shown to D so far (`cur_nimg`),
    T = images in the whole run (`total_kimg * 1000`).
Counting in images (not optimizer steps or epochs) keeps a curve the same whatever the batch size or
GPU count, and makes a resumed run land on exactly the value it would have had.

The functions assume already-validated parameters (schedulers.spec checks them) and a progress value
already clamped to [0, T] (schedulers.lr_at does that). They keep no state: the same (t, T, params)
always gives the same lr, so nothing about the schedule needs to be checkpointed.

Formulas follow the study (Sugiura & Nakamura, "Descending Damped Cyclical Learning Rates",
paper-ddclr-ja.txt, eqs. (1)-(3) and Table 1), with the paper's `last_epoch / total_epoch` read as
`t / T`.
"""

import math

# ----------------------------------------------------------------------------
# Shared shapes.


def triangle(t, T, cycles):
    """Triangle wave w(t) in [0, 1]: 0 at t = 0, 1 at the middle of each cycle, 0 at each cycle end.

    This is the scale factor of PyTorch's CyclicLR in 'triangular' mode with equal up and down
    halves (step_size_down = step_size_up), which is what the study builds on (paper section 2.3).

    Args:
        t: Progress in images, 0 <= t <= T.
        T: Total images (> 0).
        cycles: Number of full cycles over T (> 0, need not be an integer).

    Returns:
        w(t) as a float.
    """
    # Position inside the current cycle as a fraction of T. `(cycles * t) % T` is exact for integer
    # inputs, so cycle boundaries give exactly 0 and midpoints exactly 1 when T divides evenly.
    frac = ((cycles * t) % T) / T
    return 1.0 - abs(2.0 * frac - 1.0)


def damping(t, T):
    """Damping ratio (T - t) / (T + t): 1 at the start, 1/3 at mid-training, 0 at the end.

    Paper eqs. (1) and (2) use this factor for both the descending floor and the amplitude.
    """
    return (T - t) / (T + t)


# ----------------------------------------------------------------------------
# The study's schedules (Table 1).


def fixed(t, T, lr):
    """Constant learning rate: lr (study: 0.0025)."""
    del t, T  # a constant does not depend on progress
    return float(lr)


def clr(t, T, base, max, cycles):  # noqa: A002 (`max` is the spec key users type)
    """Cyclical LR (Smith 2017): base + (max - base) * w(t)."""
    return float(base + (max - base) * triangle(t, T, cycles))


def dclr(t, T, base, max, cycles):  # noqa: A002
    """Damped cyclical LR: base + d(t) * w(t), d(t) = (max - base)(T - t)/(T + t)  (paper eq. 2)."""
    d = (max - base) * damping(t, T)
    return float(base + d * triangle(t, T, cycles))


def ddclr(t, T, base, max, cycles):  # noqa: A002
    """Descending damped cyclical LR (the study's proposal): b(t) + d(t) * w(t).

    b(t) = base (T - t)/(T + t)          (paper eq. 1, `newbase_lr`)
    d(t) = (max - base)(T - t)/(T + t)   (paper eq. 2, `d_cycle`)
    Both the floor and the amplitude shrink, so the lr reaches 0 at t = T.
    """
    r = damping(t, T)
    return float(base * r + (max - base) * r * triangle(t, T, cycles))


def exp(t, T, first, final):
    """Exponential decay from `first` to `final`: first * (final / first) ** (t / T)  (paper eq. 3)."""
    return float(first * (final / first) ** (t / T))


# ----------------------------------------------------------------------------
# Common extras (not in the study).


def cosine(t, T, lr, min=0.0, warmup=0.0):  # noqa: A002
    """Cosine annealing from lr to min, after an optional linear warm-up from 0.

    For t < warmup*T: lr * t / (warmup*T).
    Afterwards:       min + (lr - min) * (1 + cos(pi * s)) / 2, s = (t - warmup*T) / (T - warmup*T).

    Args:
        warmup: Warm-up length as a fraction of T, 0 <= warmup < 1.
    """
    w = warmup * T
    if t < w:
        return float(lr * t / w)
    s = (t - w) / (T - w)
    return float(min + (lr - min) * 0.5 * (1.0 + math.cos(math.pi * s)))


def step(t, T, lr, gamma, drops):
    """Step decay: lr * gamma ** k, where k counts the `drops` equally spaced drop points passed.

    Training is split into drops + 1 equal stages; stage k (0-based) uses lr * gamma**k. The last
    stage runs up to and including t = T.
    """
    k = min(int((drops + 1) * t // T), drops)
    return float(lr * gamma ** k)


def none(t, T):
    """No schedule: the optimizer keeps its configured lr. Returns None (see schedulers.lr_at)."""
    del t, T
    return None
