"""Sky sources: random empty circles for measuring the sky and the noise.

Follows meas_algorithms ``SkyObjectsTask`` (``reference/algorithms.md`` 6.1 c):
up to ``n_trials`` random integer centres are drawn uniformly such that the
circle lies inside the image; a trial is accepted if its circle (pixels with
``dx^2 + dy^2 <= radius^2``, afw's circular stencil) touches no pixel with an
``avoid`` bit (after growing those pixels by ``grow`` pixels) and no circle
accepted before it; placement stops at ``n_sources``.  All trials are tested
against the mask at once; only the mutual-overlap test runs trial by trial,
over at most ``n_trials`` small arrays.
"""

from __future__ import annotations

import warnings

import numpy as np

from store.masks import bits

from .detection import grow_mask

__all__ = ["DEFAULT_AVOID", "place_sky_sources"]

#: Rubin ``SkyObjectsConfig.avoidMask``.
DEFAULT_AVOID = bits("DETECTED", "DETECTED_NEGATIVE", "BAD", "NO_DATA")


def _disk(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = int(radius)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dx * dx + dy * dy <= r * r
    return dy[inside], dx[inside]


def place_sky_sources(mask: np.ndarray, n_sources: int = 100, radius: int = 8, n_trials: int = 500,
                      seed: int | None = 0, avoid: int = DEFAULT_AVOID, grow: int = 0,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Choose positions of sky-source circles that avoid masked pixels.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(ny, nx)`` integer mask (after detection, so DETECTED is set).
    n_sources : int
        Wanted number of sky sources [nSources].
    radius : int
        Circle radius, pixels [sourceRadius].
    n_trials : int
        Random positions tried [nSources * nTrialSourcesMultiplier].
    seed : int or None
        Seed of the random generator (Rubin uses the exposure id).
    avoid : int
        Mask bits the circles must not touch [avoidMask].
    grow : int
        Pixels by which the avoided pixels are grown first [growMask].

    Returns
    -------
    x, y : numpy.ndarray
        float64 centre positions (array pixel coordinates), in acceptance order.
        Fewer than ``n_sources`` (with a warning) if the image is too crowded.

    Examples
    --------
    >>> m = np.zeros((100, 100), np.int32); m[:, :50] = bits("DETECTED")
    >>> x, y = place_sky_sources(m, n_sources=5, radius=8, seed=1)
    >>> len(x), bool((x - 8 >= 50).all())
    (5, True)
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if radius < 0 or n_sources < 0 or n_trials < 0:
        raise ValueError(f"radius, n_sources and n_trials must be >= 0, got {radius}, "
                         f"{n_sources}, {n_trials}")
    ny, nx = mask.shape
    radius = int(radius)
    if nx <= 2 * radius or ny <= 2 * radius:
        raise ValueError(f"image {nx}x{ny} is too small for circles of radius {radius}")
    rng = np.random.default_rng(seed)
    tx = rng.integers(radius, nx - radius, size=n_trials)
    ty = rng.integers(radius, ny - radius, size=n_trials)
    blocked = (mask & avoid) != 0
    if grow > 0:
        blocked = grow_mask(blocked, grow)
    dy, dx = _disk(radius)
    clear = ~blocked[ty[:, None] + dy[None, :], tx[:, None] + dx[None, :]].any(axis=1)

    # Two stencils overlap iff their centre offset is a sum of two stencil offsets.
    span = 2 * radius
    clash = np.zeros((2 * span + 1, 2 * span + 1), dtype=bool)
    clash[(dy[:, None] + dy[None, :]).ravel() + span, (dx[:, None] + dx[None, :]).ravel() + span] = True
    accepted: list[int] = []
    for i in np.flatnonzero(clear):
        if len(accepted) >= n_sources:
            break
        if accepted:
            ox = tx[accepted] - tx[i]
            oy = ty[accepted] - ty[i]
            near = (np.abs(ox) <= span) & (np.abs(oy) <= span)
            if clash[oy[near] + span, ox[near] + span].any():
                continue
        accepted.append(int(i))
    if len(accepted) < n_sources:
        warnings.warn(f"placed {len(accepted)} of {n_sources} sky sources in {n_trials} trials; "
                      "the image is crowded or masked (try more trials or a smaller radius)",
                      stacklevel=2)
    idx = np.asarray(accepted, dtype=np.int64)
    return tx[idx].astype(float), ty[idx].astype(float)
