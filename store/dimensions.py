"""The dimension universe: the keys of every data ID, declared as data.

A *dimension* is a key of data IDs (``visit``, ``detector``...).  Most have a
table of records with real metadata (a visit's boresight and exposure time, a
patch's sky polygon) so dataset queries can filter and join on them.  This
module is the single definition used to build the registry tables, validate
data IDs and document the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DIMENSIONS",
    "DIMENSION_ORDER",
    "ELEMENTS",
    "REFCAT_HEALPIX_ORDER",
    "SKYPIX_ORDER",
    "Column",
    "Element",
    "canonical_order",
]

#: Order (nside = 2**order, nested scheme) of the ``healpix`` dimension used to
#: shard reference catalogs.  Order 6 pixels are about 0.92 deg across.
REFCAT_HEALPIX_ORDER = 6

#: HEALPix order (nested) of the ``center_pixel`` index column of each spatial
#: element, chosen so a pixel is about the size of a typical region: spatial
#: queries look up the pixels within (query radius + largest region radius)
#: and test the few candidates exactly.
SKYPIX_ORDER: dict[str, int] = {"visit": 5, "visit_detector_region": 8, "tract": 4, "patch": 8}


@dataclass(frozen=True)
class Column:
    """A column of a dimension-record table."""

    name: str
    sql_type: str
    doc: str
    unit: str = ""
    nullable: bool = True


@dataclass(frozen=True)
class Element:
    """A dimension element: a record table with a primary key.

    Attributes
    ----------
    name : str
        Table name, and the data-ID key when this element is a dimension.
    required : tuple of str
        Dimensions that identify a record besides its own key (e.g. a
        detector needs its instrument).
    key : Column or None
        The element's own key column (``None`` for pure join elements such as
        ``visit_detector_region``).
    implied : tuple of str
        Dimensions whose values a record determines (a visit implies its band).
    columns : tuple of Column
        Metadata columns.
    spatial : bool
        Whether records carry a sky region (polygon + bounding cap columns).
    has_table : bool
        ``False`` for dimensions without records (``healpix``).
    """

    name: str
    required: tuple[str, ...] = ()
    key: Column | None = None
    implied: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    spatial: bool = False
    has_table: bool = True
    doc: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def is_dimension(self) -> bool:
        """Whether the element's key is a data-ID key."""
        return self.key is not None

    @property
    def primary_key(self) -> tuple[str, ...]:
        """Columns identifying one record."""
        own = (self.name,) if self.key is not None else ()
        return self.required + own


def _c(name, sql_type, doc, unit=""):
    return Column(name, sql_type, doc, unit)


_INT, _BIG, _DBL, _STR = "INTEGER", "BIGINT", "DOUBLE", "VARCHAR"

ELEMENTS: dict[str, Element] = {
    e.name: e
    for e in (
        Element("instrument", key=_c("instrument", _STR, "instrument name"), columns=(
            _c("pixel_scale", _DBL, "nominal pixel scale", "arcsec/pixel"),
            _c("n_detectors", _INT, "number of science detectors"),
            _c("description", _STR, "free text"),
        ), doc="a camera on a telescope"),
        Element("band", key=_c("band", _STR, "abstract filter name (u g r i z y)"),
                doc="abstract filter"),
        Element("physical_filter", required=("instrument",),
                key=_c("physical_filter", _STR, "filter name as the instrument knows it"),
                implied=("band",), doc="a filter of an instrument"),
        Element("detector", required=("instrument",), key=_c("detector", _INT, "detector number"),
                columns=(
                    _c("name", _STR, "detector name"),
                    _c("x0", _INT, "first column of the pixel bbox", "pixel"),
                    _c("y0", _INT, "first row of the pixel bbox", "pixel"),
                    _c("width", _INT, "pixel bbox width", "pixel"),
                    _c("height", _INT, "pixel bbox height", "pixel"),
                    _c("gain", _DBL, "gain", "electron/adu"),
                    _c("read_noise", _DBL, "read noise", "electron"),
                    _c("saturation", _DBL, "saturation level", "adu"),
                    _c("fp_x", _DBL, "focal-plane x of the detector centre", "mm"),
                    _c("fp_y", _DBL, "focal-plane y of the detector centre", "mm"),
                ), doc="a detector of an instrument"),
        Element("day_obs", required=("instrument",),
                key=_c("day_obs", _INT, "observing day YYYYMMDD"), doc="an observing night"),
        Element("visit", required=("instrument",), key=_c("visit", _BIG, "visit number"),
                implied=("band", "physical_filter", "day_obs"), spatial=True, columns=(
                    _c("ra", _DBL, "boresight right ascension", "deg"),
                    _c("dec", _DBL, "boresight declination", "deg"),
                    _c("sky_rotation", _DBL, "sky rotation angle", "deg"),
                    _c("exposure_time", _DBL, "exposure time", "s"),
                    _c("dark_time", _DBL, "dark time", "s"),
                    _c("obs_start_mjd", _DBL, "TAI MJD of the exposure start", "d"),
                    _c("exp_midpt_mjd", _DBL, "TAI MJD of the exposure mid-point", "d"),
                    _c("airmass", _DBL, "airmass at mid-exposure"),
                    _c("zenith_distance", _DBL, "boresight zenith distance", "deg"),
                    _c("azimuth", _DBL, "boresight azimuth", "deg"),
                    _c("altitude", _DBL, "boresight altitude", "deg"),
                ), doc="one pointing of the telescope"),
        Element("visit_detector_region", required=("instrument", "visit", "detector"),
                spatial=True, doc="the sky region of one detector in one visit"),
        Element("skymap", key=_c("skymap", _STR, "sky map name"), columns=(
            _c("config", _STR, "JSON configuration of the sky map"),
            _c("n_tracts", _INT, "number of tracts"),
        ), doc="a tessellation of the sky into tracts and patches"),
        Element("tract", required=("skymap",), key=_c("tract", _INT, "tract number"),
                spatial=True, columns=(
                    _c("ra", _DBL, "tract centre right ascension", "deg"),
                    _c("dec", _DBL, "tract centre declination", "deg"),
                ), doc="a region of sky with its own TAN projection"),
        Element("patch", required=("skymap", "tract"), key=_c("patch", _INT, "patch index nx*y+x"),
                spatial=True, columns=(
                    _c("patch_x", _INT, "patch column within the tract"),
                    _c("patch_y", _INT, "patch row within the tract"),
                    _c("x0", _INT, "outer bbox first column (tract pixels)", "pixel"),
                    _c("y0", _INT, "outer bbox first row (tract pixels)", "pixel"),
                    _c("width", _INT, "outer bbox width", "pixel"),
                    _c("height", _INT, "outer bbox height", "pixel"),
                    _c("inner_x0", _INT, "inner bbox first column", "pixel"),
                    _c("inner_y0", _INT, "inner bbox first row", "pixel"),
                    _c("inner_width", _INT, "inner bbox width", "pixel"),
                    _c("inner_height", _INT, "inner bbox height", "pixel"),
                ), doc="a rectangular piece of a tract"),
        Element("healpix", key=_c("healpix", _BIG,
                                  f"nested HEALPix index at order {REFCAT_HEALPIX_ORDER}"),
                has_table=False, doc="a HEALPix pixel (reference catalog shards)"),
    )
}

#: Dimension names in the order data IDs are written and stored.
DIMENSION_ORDER: tuple[str, ...] = (
    "instrument", "skymap", "tract", "patch", "band", "physical_filter", "day_obs",
    "visit", "detector", "healpix",
)
DIMENSIONS: dict[str, Element] = {n: ELEMENTS[n] for n in DIMENSION_ORDER}

#: SQL type of each dimension's key column.
KEY_TYPES: dict[str, str] = {n: ELEMENTS[n].key.sql_type for n in DIMENSION_ORDER}


def canonical_order(names) -> tuple[str, ...]:
    """Sort dimension names in :data:`DIMENSION_ORDER`; unknown names raise KeyError."""
    names = set(names)
    unknown = names - set(DIMENSION_ORDER)
    if unknown:
        raise KeyError(", ".join(sorted(unknown)))
    return tuple(n for n in DIMENSION_ORDER if n in names)
