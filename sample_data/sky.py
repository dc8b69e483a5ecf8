"""The simulated sky: stars and galaxies with number counts, colours and shapes.

Stars
    Differential counts ``dN/dm = star_density 10^(star_slope (r - 20))`` per
    deg^2 per mag (defaults: 600 / deg^2 / mag at r = 20, 0.22 dex/mag: ~15,000
    stars / deg^2 to r = 25, a high-latitude field).  Colours follow the
    stellar locus: ``g - r`` is bimodal (blue halo turn-off stars around 0.35,
    red M dwarfs around 1.3, 35 %), the other colours are read off a locus
    table as functions of ``g - r`` plus 0.02 mag scatter.
Galaxies
    ``dN/dm = galaxy_density 10^(galaxy_slope (r - 25))`` (1e5 / deg^2 to
    r = 25).  80 % are discs (Sersic ``n`` log-uniform in [0.5, 1.5], axis ratio
    uniform in [0.2, 1], blue colours), 20 % spheroids (``n`` uniform in
    [2.5, 4], axis ratio in [0.5, 1], red colours).  Half-light radii are
    log-normal with a median of 0.55" at r = 22 shrinking by 0.08 dex/mag,
    0.2 dex scatter.  ``half_light_radius`` is the semi-major axis of the
    (untruncated) Sersic profile; ``position_angle`` is the major axis, deg
    East of North.

Positions are uniform on the sphere (no clustering).  Stars brighter than the
reference-catalog limit are drawn over whole HEALPix pixels (so the catalog
shards are complete); fainter stars and galaxies inside a circle that covers
every visit.  Everything is in one :class:`SkyCatalog` with integer ids.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .config import SkyConfig

__all__ = [
    "HEALPIX_ORDER",
    "KIND_GALAXY",
    "KIND_NAMES",
    "KIND_STAR",
    "KIND_TRANSIENT",
    "SkyCatalog",
    "expected_count",
    "healpix_area_deg2",
    "make_sky",
    "sample_magnitudes",
    "uniform_in_cap",
    "uniform_in_healpix",
]

KIND_STAR = 0
KIND_GALAXY = 1
KIND_TRANSIENT = 2
KIND_NAMES = {KIND_STAR: "star", KIND_GALAXY: "galaxy", KIND_TRANSIENT: "transient"}

#: HEALPix order of the reference-catalog shards (nside 64, nested).
HEALPIX_ORDER = 6

# Stellar locus as a function of g - r: (g-r, u-g, r-i, i-z, z-y).
_LOCUS = np.array([
    [0.10, 0.85, 0.02, -0.02, -0.01],
    [0.20, 0.90, 0.05, 0.00, 0.00],
    [0.40, 1.05, 0.13, 0.04, 0.02],
    [0.60, 1.30, 0.20, 0.08, 0.04],
    [0.80, 1.70, 0.28, 0.13, 0.06],
    [1.00, 2.10, 0.38, 0.20, 0.09],
    [1.20, 2.40, 0.55, 0.30, 0.13],
    [1.35, 2.50, 0.85, 0.45, 0.20],
    [1.45, 2.50, 1.30, 0.70, 0.30],
    [1.55, 2.50, 1.80, 0.95, 0.42],
])


@dataclass(frozen=True, eq=False)
class SkyCatalog:
    """Objects of the simulated sky (one entry per object, arrays of equal length).

    Attributes
    ----------
    id : numpy.ndarray
        int64 object ids, unique.
    kind : numpy.ndarray
        int8: :data:`KIND_STAR`, :data:`KIND_GALAXY` or :data:`KIND_TRANSIENT`.
    ra, dec : numpy.ndarray
        True ICRS position, deg.
    mag : dict of str to numpy.ndarray
        True AB magnitude per band (NaN where an object is absent in a band).
    sersic_n, half_light_radius, axis_ratio, position_angle : numpy.ndarray
        Galaxy shapes (NaN for point sources): index, arcsec (semi-major),
        b/a, deg East of North.
    visit : numpy.ndarray
        int64: for transients the visit id they appear in, else -1.
    """

    id: np.ndarray
    kind: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: dict[str, np.ndarray]
    sersic_n: np.ndarray
    half_light_radius: np.ndarray
    axis_ratio: np.ndarray
    position_angle: np.ndarray
    visit: np.ndarray

    def __len__(self) -> int:
        return int(self.id.size)

    def __repr__(self) -> str:
        counts = {name: int(np.sum(self.kind == code)) for code, name in KIND_NAMES.items()}
        return f"SkyCatalog({', '.join(f'{v} {k}s' for k, v in counts.items())})"

    def select(self, rows) -> SkyCatalog:
        """The catalog restricted to ``rows`` (boolean mask or indices)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ({b: m[rows] for b, m in value.items()} if isinstance(value, dict)
                           else value[rows])
        return SkyCatalog(**out)

    @classmethod
    def concatenate(cls, parts: list[SkyCatalog]) -> SkyCatalog:
        """One catalog holding the rows of all ``parts`` in order."""
        out = {}
        for f in fields(cls):
            if f.name == "mag":
                out["mag"] = {b: np.concatenate([p.mag[b] for p in parts]) for b in parts[0].mag}
            else:
                out[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        return cls(**out)


def expected_count(density: float, slope: float, m_ref: float,
                   mag_range: tuple[float, float], area_deg2: float) -> float:
    """Mean number of objects for counts ``dN/dm = density 10^(slope (m - m_ref))``.

    Parameters
    ----------
    density : float
        Objects / deg^2 / mag at ``m_ref``.
    slope : float
        dex / mag.
    mag_range : tuple of float
        ``(bright, faint)`` limits.
    area_deg2 : float
        Sky area, deg^2.
    """
    lo, hi = mag_range
    a = slope * np.log(10.0)
    return area_deg2 * density * (10 ** (slope * (hi - m_ref)) - 10 ** (slope * (lo - m_ref))) / a


def sample_magnitudes(rng: np.random.Generator, slope: float, mag_range: tuple[float, float],
                      n: int) -> np.ndarray:
    """``n`` magnitudes from counts rising by ``slope`` dex/mag within ``mag_range``."""
    lo, hi = mag_range
    a = slope * np.log(10.0)
    return lo + np.log1p(rng.random(n) * np.expm1(a * (hi - lo))) / a


def uniform_in_cap(rng: np.random.Generator, n: int, ra0: float, dec0: float,
                   radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere within ``radius_deg`` of ``(ra0, dec0)``."""
    cos_r = np.cos(np.radians(radius_deg))
    z = rng.uniform(cos_r, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    s = np.sqrt(1.0 - z * z)
    # Point around the north pole, then rotate the pole onto (ra0, dec0).
    v = np.stack([s * np.cos(phi), s * np.sin(phi), z])
    colat = np.radians(90.0 - dec0)
    ry = np.array([[np.cos(colat), 0, np.sin(colat)], [0, 1, 0],
                   [-np.sin(colat), 0, np.cos(colat)]])
    a = np.radians(ra0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    x, y, zz = rz @ ry @ v
    return np.mod(np.degrees(np.arctan2(y, x)), 360.0), np.degrees(np.arcsin(np.clip(zz, -1, 1)))


def uniform_in_healpix(rng: np.random.Generator, counts: np.ndarray,
                       pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions uniform inside nested order-6 HEALPix pixels, ``counts[i]`` in ``pixels[i]``."""
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=2**HEALPIX_ORDER, order="nested")
    ras, decs = [], []
    for pix, n in zip(pixels, counts, strict=True):
        if n == 0:
            continue
        # Rejection sampling from the pixel's (ra, sin dec) bounding box; the
        # loop is over a handful of shards, the sampling is vectorised.
        lon, lat = hp.boundaries_lonlat([pix], step=8)
        lon = np.asarray(lon.to_value("deg")).ravel()
        lat = np.asarray(lat.to_value("deg")).ravel()
        lon0 = float(lon[0])
        dlon = np.mod(lon - lon0 + 180.0, 360.0) - 180.0
        lo_ra, hi_ra = lon0 + dlon.min(), lon0 + dlon.max()
        lo_z, hi_z = np.sin(np.radians(lat.min())), np.sin(np.radians(lat.max()))
        got_ra, got_dec, have = [], [], 0
        while have < n:
            m = 4 * (n - have) + 16
            ra = np.mod(rng.uniform(lo_ra, hi_ra, m), 360.0)
            dec = np.degrees(np.arcsin(rng.uniform(lo_z, hi_z, m)))
            inside = hp.lonlat_to_healpix(ra * _deg(), dec * _deg()) == pix
            got_ra.append(ra[inside])
            got_dec.append(dec[inside])
            have += int(inside.sum())
        ras.append(np.concatenate(got_ra)[:n])
        decs.append(np.concatenate(got_dec)[:n])
    if not ras:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ras), np.concatenate(decs)


def _deg():
    import astropy.units as u

    return u.deg


def healpix_area_deg2() -> float:
    """Area of one order-6 HEALPix pixel, deg^2."""
    return 4 * np.pi * (180 / np.pi) ** 2 / (12 * 4**HEALPIX_ORDER)


def _star_colours(rng: np.random.Generator, r: np.ndarray) -> dict[str, np.ndarray]:
    n = r.size
    red = rng.random(n) < 0.35
    g_r = np.where(red, rng.normal(1.30, 0.12, n), rng.normal(0.35, 0.08, n))
    g_r = np.clip(g_r, _LOCUS[0, 0], _LOCUS[-1, 0])
    cols = [np.interp(g_r, _LOCUS[:, 0], _LOCUS[:, k]) + rng.normal(0, 0.02, n)
            for k in range(1, 5)]
    u_g, r_i, i_z, z_y = cols
    g = r + g_r
    i = r - r_i
    z = i - i_z
    return {"u": g + u_g, "g": g, "r": r, "i": i, "z": z, "y": z - z_y}


def _galaxy_colours(rng: np.random.Generator, r: np.ndarray, early: np.ndarray):
    n = r.size

    def pick(late_mu, late_sd, early_mu, early_sd):
        return np.where(early, rng.normal(early_mu, early_sd, n), rng.normal(late_mu, late_sd, n))

    g_r = pick(0.45, 0.15, 0.85, 0.08)
    u_g = pick(0.90, 0.30, 1.80, 0.20)
    r_i = pick(0.30, 0.10, 0.45, 0.08)
    i_z = pick(0.15, 0.10, 0.30, 0.08)
    z_y = pick(0.10, 0.10, 0.15, 0.08)
    g = r + g_r
    i = r - r_i
    z = i - i_z
    return {"u": g + u_g, "g": g, "r": r, "i": i, "z": z, "y": z - z_y}


def _empty_shapes(n: int) -> dict[str, np.ndarray]:
    nan = np.full(n, np.nan)
    return {"sersic_n": nan, "half_light_radius": nan.copy(), "axis_ratio": nan.copy(),
            "position_angle": nan.copy()}


def _stars(rng, r: np.ndarray, ra: np.ndarray, dec: np.ndarray, first_id: int) -> SkyCatalog:
    n = r.size
    return SkyCatalog(id=np.arange(first_id, first_id + n, dtype=np.int64),
                      kind=np.full(n, KIND_STAR, np.int8), ra=ra, dec=dec,
                      mag=_star_colours(rng, r), visit=np.full(n, -1, np.int64),
                      **_empty_shapes(n))


def _galaxies(rng, config: SkyConfig, r: np.ndarray, ra, dec, first_id: int) -> SkyCatalog:
    n = r.size
    early = rng.random(n) < 0.2
    sersic = np.where(early, rng.uniform(2.5, 4.0, n), np.exp(rng.uniform(np.log(0.5),
                                                                            np.log(1.5), n)))
    median_22, per_mag, scatter = config.galaxy_size
    log_re = np.log10(median_22) + per_mag * (r - 22.0) + rng.normal(0.0, scatter, n)
    re = np.clip(10**log_re, 0.05, 10.0)
    q = np.where(early, rng.uniform(0.5, 1.0, n), rng.uniform(0.2, 1.0, n))
    pa = rng.uniform(0.0, 180.0, n)
    return SkyCatalog(id=np.arange(first_id, first_id + n, dtype=np.int64),
                      kind=np.full(n, KIND_GALAXY, np.int8), ra=ra, dec=dec,
                      mag=_galaxy_colours(rng, r, early), sersic_n=sersic,
                      half_light_radius=re, axis_ratio=q, position_angle=pa,
                      visit=np.full(n, -1, np.int64))


def make_sky(config: SkyConfig, *, center: tuple[float, float], radius_deg: float,
             bright_pixels: np.ndarray, bright_limit: float,
             rngs: tuple[np.random.Generator, ...]) -> SkyCatalog:
    """Draw the sky.

    Parameters
    ----------
    config : SkyConfig
        Counts, colours and shapes.
    center : tuple of float
        ``(ra, dec)`` of the circle holding faint stars and galaxies, deg.
    radius_deg : float
        Its radius, deg.
    bright_pixels : numpy.ndarray
        Nested order-6 HEALPix pixels over which stars brighter than
        ``bright_limit`` are drawn (must cover the circle).
    bright_limit : float
        r magnitude separating the two star populations (the refcat limit).
    rngs : tuple of numpy.random.Generator
        Three independent streams: bright stars, faint stars, galaxies.

    Returns
    -------
    SkyCatalog
        Bright stars, then faint stars, then galaxies; ids from 1.
    """
    rng_bright, rng_faint, rng_gal = rngs
    lo, hi = config.star_mag_range
    area_pix = healpix_area_deg2()
    pixels = np.asarray(bright_pixels, dtype=np.int64)
    # Bright stars shard by shard so that every shard is complete.
    bright_range = (lo, min(bright_limit, hi))
    mean = expected_count(config.star_density, config.star_slope, 20.0, bright_range, area_pix)
    counts = rng_bright.poisson(mean, pixels.size)
    r_bright = sample_magnitudes(rng_bright, config.star_slope, bright_range, int(counts.sum()))
    ra_b, dec_b = uniform_in_healpix(rng_bright, counts, pixels)
    bright = _stars(rng_bright, r_bright, ra_b, dec_b, 1)

    cap_area = 2 * np.pi * (1 - np.cos(np.radians(radius_deg))) * (180 / np.pi) ** 2
    parts = [bright]
    next_id = len(bright) + 1
    if bright_limit < hi:
        faint_range = (max(bright_limit, lo), hi)
        n = rng_faint.poisson(expected_count(config.star_density, config.star_slope, 20.0,
                                             faint_range, cap_area))
        r_faint = sample_magnitudes(rng_faint, config.star_slope, faint_range, n)
        ra_f, dec_f = uniform_in_cap(rng_faint, r_faint.size, *center, radius_deg)
        parts.append(_stars(rng_faint, r_faint, ra_f, dec_f, next_id))
        next_id += r_faint.size
    n = rng_gal.poisson(expected_count(config.galaxy_density, config.galaxy_slope, 25.0,
                                       config.galaxy_mag_range, cap_area))
    r_gal = sample_magnitudes(rng_gal, config.galaxy_slope, config.galaxy_mag_range, n)
    ra_g, dec_g = uniform_in_cap(rng_gal, r_gal.size, *center, radius_deg)
    parts.append(_galaxies(rng_gal, config, r_gal, ra_g, dec_g, next_id))
    return SkyCatalog.concatenate(parts)
