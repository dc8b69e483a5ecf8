"""Sky maps: tracts with their own TAN projection, cut into patches of cells (lsst/skymap).

See ``reference/algorithms.md`` 7 and 4.1.  A sky map tessellates the sphere
into *tracts*; each tract has a WCS (projection centred on the tract, north up,
east left, ``pixel_scale`` arcsec/pixel) whose pixel box starts at (0, 0) and
is a whole number of patches.  Patches are ``patch_inner`` pixels square with an
outer box grown by ``patch_border`` and **not** clipped to the tract (the cell
builder); each patch holds ``(patch_inner // cell_inner + 2 n_b)^2`` cells of
``cell_inner`` pixels (22 x 22 by default), where ``n_b = (patch_border -
cell_border) / cell_inner`` rows of cells lie in the patch border; a cell's
outer box is its inner box grown by ``cell_border``.  The defaults are those of
Rubin's ``lsst_cells_v1``: 120 rings, 0.2 arcsec/pixel, 1 arcmin tract overlap.

* :class:`RingsSkyMap` -- declination rings of tracts plus two polar caps;
  ``find_tract`` uses each tract's RA/Dec "inner region", so every point of the
  sphere belongs to exactly one tract.
* :class:`DiscreteSkyMap` -- tracts at given centres with given radii;
  ``find_tract`` returns the nearest centre.

A tract's pixel box is lsst/skymap's: the four points at distance ``radius +
tract_overlap`` north/east/south/west of the centre, expanded to whole pixels,
then to whole patches (padding split evenly), then shifted to start at (0, 0).
So tract WCSs match Rubin's pixel for pixel.  Safeguard (an addition): near the
poles a ring tract's inner region is a curved wedge whose corners stick out of
that four-point square (by up to ~470 px in the first rings of 120); the
rounding to whole patches absorbs this for the default geometry, but where it
would not, the box is grown to hold the inner region plus the overlap, so every
point always lies inside the pixel box of the tract ``find_tract`` names.
"""

from ._maps import DiscreteSkyMap, RingsSkyMap, SkyMap, sky_map_from_config
from ._tract import CellInfo, PatchInfo, RaDecBox, SkyMapGeometry, TractInfo

__all__ = [
    "CellInfo",
    "DiscreteSkyMap",
    "PatchInfo",
    "RaDecBox",
    "RingsSkyMap",
    "SkyMap",
    "SkyMapGeometry",
    "TractInfo",
    "sky_map_from_config",
]
