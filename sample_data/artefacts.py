"""Image artefacts: cosmic rays, satellite trails, optical ghosts, bleed trails.

What each does to the pixels (all in electrons, before conversion to ADU):

cosmic rays
    ``rate x area x exposure`` events per detector (Poisson), 30 % of them
    near-normal "spots" and 70 % straight tracks 2-40 pixels long in a random
    direction, depositing a log-normal ~1500 e- per pixel of track (3000 e-
    per spot), with 0.3-pixel charge diffusion.  Added *after* the Poisson
    noise of the sky and sources; never masked (the pipeline must find them).
satellite trails
    A straight line across the whole focal plane with a Gaussian cross-section
    (sigma 1-2.5 PSF sigmas: satellites are out of focus) and a peak of
    100-1500 e-/pixel; part of the photon signal (Poisson noise applies).
optical ghosts
    A defocused pupil image of the visit's brightest star: a soft-edged
    annulus (radii 120 and 70 pixels) at the star's focal-plane position
    mirrored through the optical axis and scaled by 0.9, holding
    ``ghost_fraction`` of the star's flux.
bleed trails
    Charge above a pixel's full well spills along its column: each vertical
    run of saturated pixels pushes its excess up and down (half each way),
    filling pixels to the full well; those pixels are masked SAT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CosmicRays",
    "Ghost",
    "SatelliteTrail",
    "bleed",
    "cosmic_rays",
    "render_ghost",
    "render_satellite",
]


@dataclass(frozen=True)
class SatelliteTrail:
    """A satellite trail, fixed in the focal plane.

    Attributes
    ----------
    x, y : float
        A point on the trail, focal-plane mm.
    angle : float
        Direction of the trail from focal-plane +x, deg.
    width : float
        Gaussian sigma of the cross-section, pixels.
    peak : float
        Surface brightness on the trail's axis, e-/pixel.
    """

    x: float
    y: float
    angle: float
    width: float
    peak: float


@dataclass(frozen=True)
class Ghost:
    """An optical ghost of a bright star.

    Attributes
    ----------
    star_id : int
        Catalog id of the star.
    x, y : float
        Centre of the ghost, focal-plane mm.
    r_inner, r_outer : float
        Radii of the annulus, pixels.
    fraction : float
        Ghost flux as a fraction of the star's flux.
    """

    star_id: int
    x: float
    y: float
    r_inner: float = 70.0
    r_outer: float = 120.0
    fraction: float = 3.0e-3


@dataclass(frozen=True)
class CosmicRays:
    """Cosmic rays of one detector-visit.

    Attributes
    ----------
    x0, y0, x1, y1 : numpy.ndarray
        Track end points, pixels.
    charge : numpy.ndarray
        Total deposited charge per event, e-.
    pixels : numpy.ndarray
        Flat pixel indices (``y * width + x``) receiving charge, with repeats.
    values : numpy.ndarray
        Charge per entry of ``pixels``, e-.
    """

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    charge: np.ndarray
    pixels: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.x0.size)


def cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], *, exposure_time: float,
                pixel_size_mm: float, rate: float) -> CosmicRays:
    """Draw the cosmic rays hitting one detector during one exposure.

    Parameters
    ----------
    rng : numpy.random.Generator
        The detector-visit's stream.
    shape : tuple of int
        ``(height, width)`` of the detector, pixels.
    exposure_time : float
        Seconds (dark time would be more exact; the difference is small).
    pixel_size_mm : float
        Pixel size, mm (sets the area in cm^2).
    rate : float
        Events per cm^2 per minute.

    Returns
    -------
    CosmicRays
    """
    ny, nx = shape
    area_cm2 = nx * ny * (pixel_size_mm / 10.0) ** 2
    n = rng.poisson(rate * area_cm2 * exposure_time / 60.0)
    x0 = rng.uniform(-0.5, nx - 0.5, n)
    y0 = rng.uniform(-0.5, ny - 0.5, n)
    spot = rng.random(n) < 0.3
    length = np.where(spot, 0.0, np.exp(rng.uniform(np.log(2.0), np.log(40.0), n)))
    angle = rng.uniform(0, 2 * np.pi, n)
    x1 = x0 + length * np.cos(angle)
    y1 = y0 + length * np.sin(angle)
    per_px = np.exp(rng.normal(np.log(1500.0), 0.4, n))
    charge = np.where(spot, 2.0 * per_px, per_px * np.maximum(length, 1.0))
    # Sample each track every 0.25 pixel; every sample carries an equal share.
    n_samp = np.maximum(np.ceil(length / 0.25).astype(np.int64), 1) + 1
    owner = np.repeat(np.arange(n), n_samp)
    start = np.cumsum(n_samp) - n_samp
    t = (np.arange(owner.size) - start[owner]) / np.maximum(n_samp[owner] - 1, 1)
    xs = x0[owner] + t * (x1 - x0)[owner] + rng.normal(0, 0.3, owner.size)
    ys = y0[owner] + t * (y1 - y0)[owner] + rng.normal(0, 0.3, owner.size)
    ix = np.floor(xs + 0.5).astype(np.int64)
    iy = np.floor(ys + 0.5).astype(np.int64)
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    values = (charge / n_samp)[owner]
    return CosmicRays(x0, y0, x1, y1, charge, (iy * nx + ix)[ok], values[ok])


def _ranges(start: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], start[i] + counts[i])`` for all ``i``."""
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return offsets + np.repeat(start, counts)


def render_satellite(image: np.ndarray, trail: SatelliteTrail, origin_fp: tuple[float, float],
                     pixel_size_mm: float, scale: float = 1.0) -> None:
    """Add a satellite trail to an image in electrons, in place.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` image of one detector.
    trail : SatelliteTrail
        The trail.
    origin_fp : tuple of float
        Focal-plane position (mm) of pixel ``(0, 0)`` of the image.
    pixel_size_mm : float
        mm per pixel.
    scale : float
        Throughput of the detector (multiplies the surface brightness).
    """
    ny, nx = image.shape
    # The trail in this detector's pixel coordinates.
    px = (trail.x - origin_fp[0]) / pixel_size_mm
    py = (trail.y - origin_fp[1]) / pixel_size_mm
    a = np.radians(trail.angle)
    nxv, nyv = -np.sin(a), np.cos(a)  # unit normal
    reach = 6.0 * trail.width
    rows = np.arange(ny, dtype=float)
    if abs(nxv) > 1e-6:
        # Columns crossed by the trail band in each row, to touch only nearby pixels.
        centre = px - (rows - py) * nyv / nxv
        half = reach / abs(nxv)
        lo = np.clip(np.floor(centre - half), 0, nx).astype(np.int64)
        hi = np.clip(np.ceil(centre + half) + 1, 0, nx).astype(np.int64)
    else:
        near = np.abs((rows - py) * nyv) <= reach
        lo = np.where(near, 0, nx)
        hi = np.full(ny, nx)
    counts = np.maximum(hi - lo, 0)
    if counts.sum() == 0:
        return
    rr = np.repeat(np.arange(ny), counts)
    cc = _ranges(lo, counts)
    d = (cc - px) * nxv + (rr - py) * nyv
    image[rr, cc] += scale * trail.peak * np.exp(-0.5 * (d / trail.width) ** 2)


def render_ghost(image: np.ndarray, ghost: Ghost, star_flux_e: float,
                 origin_fp: tuple[float, float], pixel_size_mm: float) -> None:
    """Add a ghost (soft-edged annulus) to an image in electrons, in place.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` image of one detector.
    ghost : Ghost
        The ghost.
    star_flux_e : float
        Flux of the star on this detector's scale, e-.
    origin_fp : tuple of float
        Focal-plane position (mm) of pixel ``(0, 0)``.
    pixel_size_mm : float
        mm per pixel.
    """
    ny, nx = image.shape
    cx = (ghost.x - origin_fp[0]) / pixel_size_mm
    cy = (ghost.y - origin_fp[1]) / pixel_size_mm
    r_max = ghost.r_outer + 10.0
    x_lo, x_hi = int(max(np.floor(cx - r_max), 0)), int(min(np.ceil(cx + r_max) + 1, nx))
    y_lo, y_hi = int(max(np.floor(cy - r_max), 0)), int(min(np.ceil(cy + r_max) + 1, ny))
    if x_lo >= x_hi or y_lo >= y_hi:
        return
    yy, xx = np.mgrid[y_lo:y_hi, x_lo:x_hi]
    r = np.hypot(xx - cx, yy - cy)
    edge = 2.0  # softness of the rims, pixels
    profile = (1.0 / (1.0 + np.exp((r - ghost.r_outer) / edge))
               - 1.0 / (1.0 + np.exp((r - ghost.r_inner) / edge)))
    area = np.pi * (ghost.r_outer**2 - ghost.r_inner**2)
    image[y_lo:y_hi, x_lo:x_hi] += ghost.fraction * star_flux_e / area * profile


def bleed(image_e: np.ndarray, full_well: float) -> np.ndarray:
    """Spill charge above the full well along columns, in place, conserving charge.

    Each vertical run of pixels above the full well keeps a full well per
    pixel and pushes half of its excess up and half down; every pixel
    reached is topped up to the full well (absorbing ``full_well - value``)
    until the excess is used up, the last one partly.  Charge reaching the
    detector edge is lost, as in a real device.

    Parameters
    ----------
    image_e : numpy.ndarray
        ``(ny, nx)`` float image in electrons.
    full_well : float
        Full-well capacity, e-.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the pixels now at full well (saturated or bled into).
    """
    from scipy import ndimage

    over = image_e > full_well
    if not over.any():
        return over
    labels, n = ndimage.label(over, structure=[[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    excess = np.bincount(labels[over], weights=image_e[over] - full_well, minlength=n + 1)[1:]
    slices = ndimage.find_objects(labels)
    saturated = over.copy()
    image_e[over] = full_well
    # One short step per run (a saturated star has one run per column it covers);
    # the work inside is a cumulative sum along that column.
    for (rows, cols), spill in zip(slices, excess / 2.0, strict=True):
        col = cols.start
        ways = [slice(rows.stop, None)]  # up
        if rows.start > 0:
            ways.append(slice(rows.start - 1, None, -1))  # down, nearest pixel first
        for way in ways:
            column = image_e[way, col]  # a view
            filled = np.cumsum(np.maximum(full_well - column, 0.0))
            k = int(np.searchsorted(filled, spill))  # pixels topped up completely
            column[:k] = full_well
            saturated[way, col][:k] = True
            if k < column.size:
                column[k] += spill - (filled[k - 1] if k else 0.0)
    return saturated
