"""The simulator's truth tables of a repository, read once and indexed for the figures."""

from __future__ import annotations

import warnings
from functools import cached_property

import numpy as np

from .core import PolyField

__all__ = ["Truth"]

_PSF_COLUMNS = ("ixx", "iyy", "ixy", "ixx_cont", "iyy_cont", "ixy_cont")


def _wcs_from_string(text: str):
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text), relax=True)


class Truth:
    """``truth_object``, ``truth_visit_detector``, ``truth_psf_grid`` and ``truth_artefact``.

    Parameters
    ----------
    repo : store.Repo
        The repository.
    collection : str
        Where the truth tables are (``truth`` for ``drp demo``).
    """

    def __init__(self, repo, collection: str = "truth"):
        import pyarrow as pa

        self.repo, self.collection = repo, collection
        refs = list(repo.query_datasets("truth_object", collections=collection))
        if not refs:
            raise LookupError(f"no truth_object in collection {collection!r}")
        self.instrument = refs[0].data_id["instrument"]
        obj = repo.get(refs[0])
        self.objects = {name: obj.column(name).to_numpy(zero_copy_only=False)
                        for name in obj.column_names if name not in ("type", "visit")}
        self.type = np.array(obj.column("type").to_pylist())
        self.is_star = self.type == "star"

        def _all(name):
            parts = [repo.get(r) for r in repo.query_datasets(name, collections=collection)]
            return pa.concat_tables(parts) if parts else None

        vd = _all("truth_visit_detector")
        self.visit_detector = {(int(r["visit"]), int(r["detector"])): r
                               for r in (vd.to_pylist() if vd is not None else [])}
        grid = _all("truth_psf_grid")
        self._grid = grid.to_pandas() if grid is not None else None
        art = _all("truth_artefact")
        self.artefacts = art.to_pandas() if art is not None else None
        self._fields: dict[tuple[int, int], PolyField] = {}
        self._wcs: dict[tuple[int, int], object] = {}

    def flux(self, band: str) -> np.ndarray:
        """True flux of every object in ``band``, nJy."""
        return self.objects[f"{band}_flux"]

    def mag(self, band: str) -> np.ndarray:
        """True AB magnitude of every object in ``band``."""
        return self.objects[f"{band}_mag"]

    @cached_property
    def hlr(self) -> np.ndarray:
        """Half-light radius, arcsec (0 for point sources)."""
        return np.nan_to_num(self.objects["half_light_radius"], nan=0.0)

    def wcs(self, visit: int, detector: int):
        """The true WCS of a detector-visit (0-based pixels)."""
        key = (int(visit), int(detector))
        if key not in self._wcs:
            self._wcs[key] = _wcs_from_string(self.visit_detector[key]["wcs"])
        return self._wcs[key]

    def psf_field(self, visit: int, detector: int) -> PolyField | None:
        """Interpolator of the true PSF moments over a detector.

        Calling it gives ``(n, 6)``: adaptive moments of the pixel-integrated
        PSF ``ixx, iyy, ixy`` then the continuous-profile ``ixx_cont...``,
        pixel^2.  None when the grid has no rows for the detector-visit.
        """
        key = (int(visit), int(detector))
        if key not in self._fields:
            rows = self.psf_grid(*key)
            if rows is None or len(rows) == 0:
                return None
            self._fields[key] = PolyField(rows["x"].to_numpy(), rows["y"].to_numpy(),
                                          rows[list(_PSF_COLUMNS)].to_numpy(), degree=3)
        return self._fields[key]

    def psf_grid(self, visit: int, detector: int):
        """The ``truth_psf_grid`` rows of a detector-visit (pandas DataFrame, maybe empty)."""
        g = self._grid
        if g is None:
            return None
        return g[(g["visit"] == int(visit)) & (g["detector"] == int(detector))]

    def on_detector(self, visit: int, detector: int, width: int, height: int,
                    margin: float = 0.0):
        """Indices and true pixel positions of the objects that fall on a detector.

        Returns
        -------
        idx, x, y : numpy.ndarray
            Object indices and their 0-based pixel positions (within ``margin``
            pixels outside the detector too).
        """
        wcs = self.wcs(visit, detector)
        ra0, dec0 = wcs.all_pix2world([(width - 1) / 2], [(height - 1) / 2], 0)
        ra, dec = self.objects["ra"], self.objects["dec"]
        # cheap pre-selection on the sky: the detector's half diagonal plus 10%
        scale = 0.2 / 3600.0
        try:
            from astropy.wcs.utils import proj_plane_pixel_scales

            scale = float(np.mean(proj_plane_pixel_scales(wcs)))
        except (ValueError, TypeError):
            pass
        radius = 1.1 * 0.5 * np.hypot(width, height) * scale + margin * scale
        cosd = np.cos(np.radians(dec0[0]))
        near = np.flatnonzero((np.abs(((ra - ra0[0] + 180) % 360 - 180) * cosd) < radius)
                              & (np.abs(dec - dec0[0]) < radius))
        x, y = wcs.all_world2pix(ra[near], dec[near], 0)
        inside = ((x > -0.5 - margin) & (x < width - 0.5 + margin) & (y > -0.5 - margin)
                  & (y < height - 0.5 + margin))
        return near[inside], x[inside], y[inside]

    def pixel_scale(self, visit: int, detector: int, x: float, y: float) -> float:
        """Local true pixel scale (arcsec/pixel, geometric mean of the axes) at ``(x, y)``."""
        from .core import jacobian

        wcs = self.wcs(visit, detector)

        def to_arcsec(px, py):
            ra, dec = wcs.all_pix2world(px, py, 0)
            return ((ra - ra[0]) * np.cos(np.radians(dec)) * 3600.0, (dec - dec[0]) * 3600.0)

        jac = jacobian(to_arcsec, [x], [y])[0]
        return float(np.sqrt(abs(np.linalg.det(jac))))
