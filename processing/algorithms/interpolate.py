"""Fill masked pixels by interpolation (``InterpImageTask`` / ``interpolateOverDefects``).

See ``reference/algorithms.md`` A.8.  Bad pixels (those with any of
``bad_bits``, and non-finite ones) form runs along each row; every pixel of a
run is replaced by the straight line between the nearest good pixels on its
left and right.  A run that touches the left or right edge of the image has
only one neighbour and takes the fallback value instead (afw
``useFallbackValueAtEdge``), by default ``max(median of the good pixels, 0)``.
Interpolated pixels get the INTRP bit; their other bits are kept.

A bad column is a vertical run, so row-wise interpolation fills it from the
columns on either side; a bad row is interpolated from its ends only where the
row is partly good, and otherwise takes the fallback.  afw's exact choice
between horizontal and vertical interpolation per defect was not read; rows
are used throughout.
"""

from __future__ import annotations

import numpy as np

from store.masks import bits

from ._repair_kernels import bad_rows, fill_rows

__all__ = ["interpolate_masked"]


def interpolate_masked(
    image: np.ndarray,
    mask: np.ndarray,
    bad_bits: int,
    *,
    fallback: float | None = None,
    variance: np.ndarray | None = None,
    include_nan: bool = True,
) -> int:
    """Interpolate over masked pixels along rows, in place.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float image, modified in place.
    mask : numpy.ndarray
        ``(ny, nx)`` integer mask, modified in place (INTRP set on filled pixels).
    bad_bits : int
        Mask bits marking pixels to replace (e.g. ``bits("NO_DATA")``).
    fallback : float, optional
        Value for runs touching the image edge (image units); default
        ``max(median of the good pixels, 0)``, 0 if there are none.
    variance : numpy.ndarray, optional
        ``(ny, nx)`` variance, modified in place: set to +inf wherever it is
        not positive or NaN (afw does this after interpolating coadds).
    include_nan : bool
        Also replace non-finite image pixels that carry no bad bit.

    Returns
    -------
    int
        Number of pixels interpolated.

    Examples
    --------
    >>> img = np.array([[1.0, 9.0, 9.0, 4.0]])
    >>> msk = np.array([[0, 1, 1, 0]], dtype=np.int32)
    >>> interpolate_masked(img, msk, 1)
    2
    >>> img.tolist()
    [[1.0, 2.0, 3.0, 4.0]]
    """
    if image.ndim != 2 or mask.shape != image.shape:
        raise ValueError(f"image and mask must be 2-D of one shape, got {image.shape} and {mask.shape}")
    if variance is not None and variance.shape != image.shape:
        raise ValueError(f"variance shape {variance.shape} differs from image shape {image.shape}")
    # Rows with bad pixels first (one compiled pass, no image-sized temporaries).
    rows, n_bad, edge = bad_rows(image, mask, int(bad_bits), bool(include_nan))
    if n_bad:
        # The fallback only fills runs touching the left or right edge: skip the
        # (full-image) median when there are none.
        if fallback is None and edge:
            bad = (mask & bad_bits) != 0
            if include_nan:
                bad |= ~np.isfinite(image)
            good_values = image[~bad]
            fallback = max(float(np.median(good_values)), 0.0) if good_values.size else 0.0
        elif fallback is None:
            fallback = 0.0  # never used
        fill_rows(image, mask, int(bad_bits), bool(include_nan), rows, float(fallback),
                  mask.dtype.type(bits("INTRP")))
    if variance is not None:
        with np.errstate(invalid="ignore"):
            variance[~(variance > 0)] = np.inf
    return n_bad
