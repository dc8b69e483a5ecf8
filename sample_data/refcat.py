"""The Gaia-like reference catalog, sharded by HEALPix pixel.

Stars brighter than ``refcat.mag_limit`` in r, drawn over whole order-6
HEALPix pixels (see :mod:`sample_data.sky`), with:

* positions: truth plus Gaussian errors whose r.m.s. per coordinate grows
  from ``position_error[0]`` (bright) to ``position_error[1]`` at the limit,
  ``sigma = s0 + (s1 - s0) 10^(0.4 (r - limit))`` mas; proper motions are
  ignored (the stars do not move), so these stand for the epoch-propagation
  errors of a real catalog.  ``coord_raErr`` is the error of
  ``ra cos(dec)``;
* fluxes in u..y (nJy): truth scaled by ``1 + N(0, sigma)`` with
  ``sigma = hypot(flux_error, 0.02 10^(0.4 (m - limit)))`` per band.

Columns follow the LSST refcat convention: ``id, coord_ra, coord_dec``
(deg), ``coord_raErr, coord_decErr`` (mas), ``{band}_flux, {band}_fluxErr``
(nJy).  Every shard in the coverage is written, even an empty one.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.calib import AB_ZERO_NJY
from store.formats.parquet import with_units

from .config import BANDS
from .observing import rng_stream
from .plan import SurveyPlan
from .sky import HEALPIX_ORDER, KIND_STAR

__all__ = ["reference_catalog"]


def reference_catalog(plan: SurveyPlan) -> dict[int, pa.Table]:
    """The reference catalog of a survey, one table per HEALPix pixel.

    Parameters
    ----------
    plan : SurveyPlan
        The survey (its catalog, ``config.refcat`` and ``refcat_pixels``).

    Returns
    -------
    dict of int to pyarrow.Table
        Nested order-6 pixel -> shard, for every pixel in ``plan.refcat_pixels``.
    """
    import astropy.units as u
    from astropy_healpix import HEALPix

    cfg = plan.config.refcat
    cat = plan.catalog
    rows = np.flatnonzero((cat.kind == KIND_STAR) & (cat.mag["r"] < cfg.mag_limit))
    rng = rng_stream(plan.seed, 4)
    r = cat.mag["r"][rows]
    s0, s1 = cfg.position_error
    sigma_mas = s0 + (s1 - s0) * 10 ** (0.4 * (r - cfg.mag_limit))
    dec = cat.dec[rows] + rng.normal(0, 1, rows.size) * sigma_mas / 3.6e6
    cos_dec = np.cos(np.radians(cat.dec[rows]))
    ra = np.mod(cat.ra[rows] + rng.normal(0, 1, rows.size) * sigma_mas / 3.6e6 / cos_dec, 360.0)
    cols = {"id": cat.id[rows], "coord_ra": ra, "coord_dec": dec,
            "coord_raErr": sigma_mas, "coord_decErr": sigma_mas.copy()}
    units = {"coord_ra": "deg", "coord_dec": "deg", "coord_raErr": "mas", "coord_decErr": "mas"}
    for band in BANDS:
        mag = cat.mag[band][rows]
        rel = np.hypot(cfg.flux_error, 0.02 * 10 ** (0.4 * (mag - cfg.mag_limit)))
        true = AB_ZERO_NJY * 10 ** (-0.4 * mag)
        cols[f"{band}_flux"] = true * (1.0 + rel * rng.standard_normal(rows.size))
        cols[f"{band}_fluxErr"] = true * rel
        units[f"{band}_flux"] = units[f"{band}_fluxErr"] = "nJy"
    table = with_units(pa.table(cols), units, {
        "coord_raErr": "error of ra cos(dec)",
        "id": "truth_object id of the star",
    })
    hp = HEALPix(nside=2**HEALPIX_ORDER, order="nested")
    # Shard by the *true* position: a star belongs to one shard whatever its error.
    pix = hp.lonlat_to_healpix(cat.ra[rows] * u.deg, cat.dec[rows] * u.deg)
    return {int(p): table.filter(pa.array(pix == p)) for p in plan.refcat_pixels}
