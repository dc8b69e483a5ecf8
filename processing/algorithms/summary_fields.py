"""The per-detector summary statistics record and the settings that compute it.

:class:`ExposureSummaryStats` holds every field of afw's ``ExposureSummaryStats``
(``reference/algorithms.md`` 1.6) under its Rubin (camelCase) name, in Rubin's
order, plus the three newer optional fields (``psfAdaptiveThresholdValue``,
``psfAdaptiveIncludeThresholdMultiplier``, ``refCatSourceDensity``).  Floats
default to NaN, ``nPsfStar`` to 0.  Each field declares its unit and a
one-line description in the dataclass field metadata; the FITS cards and the
Parquet columns of the visit summary take them from there.

FITS cards are ``HIERARCH SUMMARY <NAME>`` (upper case, as FITS stores
keywords); the corners become ``SUMMARY RACORNERS0`` ... ``3``.  NaN cannot be
written to FITS, so a NaN field has no card and a missing card reads as NaN.

Fiducial values of :class:`SummaryStatsConfig` (used by ``effTime*``)
--------------------------------------------------------------------
The reference (1.5) gives placeholders (1.0 / 25.0 / 9.0 / 30 s / 25.0).  drp
uses the LSSTCam values that Rubin's ``obs_lsst`` configuration sets
(``config/lsstCam/fiducial*.py``; derived there from SMTN-002 v2024-03-06 /
v2025-07-16 and syseng_throughputs v1.9, gains from LSSTComCam PTCs, DM-45333 /
DM-51841).  They describe the *design* observing conditions, which is what
``effTime`` is normalised to (``effTime = 30 s`` for a visit as deep as the
design):

======  ===========  =============  ===========  ===========
band    psf sigma    sky (ADU/s)    ZP (1 s)     magLim (5s)
======  ===========  =============  ===========  ===========
u       1.72 px      0.91           25.97        23.70
g       1.63         9.35           27.96        24.97
r       1.56         19.94          27.81        24.52
i       1.51         32.04          27.62        24.13
z       1.47         48.05          27.23        23.56
y       1.44         54.81          26.27        22.55
======  ===========  =============  ===========  ===========

* ``fiducial_psf_sigma`` (pixels, 0.2"/px): SMTN-002 design FWHM of ~0.7-0.8".
  This is *better* than the DP1 median seeing (survey_facts: r FWHM 1.12",
  sigma 2.38 px), so typical DP1 visits get ``effTimePsfSigmaScale ~ 0.45``.
* ``fiducial_sky_background``: dark-sky counts per pixel per second, ADU
  (compared with ``skyBg / expTime``, 1.5.G).
* ``fiducial_zero_point``: AB magnitude of 1 ADU/s, i.e. a **1-second** zero
  point (1.5.G compares it with ``zeroPoint - 2.5 log10(expTime)``); the
  SMTN-002 e-/s zero points minus ``2.5 log10(gain ~ 1.66)``.  A 30 s visit's
  ``zeroPoint`` is these plus 3.69 mag (r: 31.50).
* ``fiducial_read_noise``: 8.8 e-, the SMTN-002 read noise (not used by any
  formula of 1.5; kept for completeness).
* ``fiducial_exp_time``: 30 s in every band (Rubin's default; DP1 u-band
  visits were 38 s, which simply gives them a larger ``effTime``).
* ``fiducial_mag_lim``: SMTN-002 single-visit 5-sigma point-source depths.
  Consistency check: the 1.5.F formula with the r fiducials (30 s, gain 1.6,
  Gaussian ``psfArea = 4 pi 1.56^2``) gives 24.62, vs 24.52 tabulated (SMTN-002
  uses the larger ``N_eff`` of its FWHM_eff).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from store.masks import bits

__all__ = [
    "SUMMARY_FIELDS",
    "ExposureSummaryStats",
    "SummaryStatsConfig",
    "summary_descriptions",
    "summary_units",
]

_NAN = float("nan")
_CORNER_FIELDS = ("raCorners", "decCorners")
_HEADER_PREFIX = "SUMMARY "


def _f(unit: str, doc: str):
    """A NaN-defaulted float field carrying its unit and description."""
    return field(default=_NAN, metadata={"unit": unit, "doc": doc})


def _corners(doc: str):
    return field(default=(_NAN,) * 4, metadata={"unit": "deg", "doc": doc})


@dataclass(eq=False)
class ExposureSummaryStats:
    """Summary statistics of one detector image (afw ``ExposureSummaryStats``).

    Every float defaults to NaN ("not measured"); ``nPsfStar`` to 0.  Units and
    definitions: ``reference/algorithms.md`` 1.5, and ``summary_units()``.
    Equality treats NaN as equal to NaN, so round trips compare with ``==``.

    Examples
    --------
    >>> s = ExposureSummaryStats(psfSigma=2.0)
    >>> ExposureSummaryStats.from_dict(s.to_dict()) == s
    True
    """

    version: int = field(default=0, metadata={"unit": "", "doc": "field-set version"})
    psfSigma: float = _f("pixel", "PSF determinant radius at the detector centre")
    psfArea: float = _f("pixel", "PSF effective area (sum K)^2 / sum K^2 at the centre")
    psfIxx: float = _f("pixel**2", "PSF xx second moment at the centre")
    psfIyy: float = _f("pixel**2", "PSF yy second moment at the centre")
    psfIxy: float = _f("pixel**2", "PSF xy second moment at the centre")
    ra: float = _f("deg", "right ascension of the detector centre")
    dec: float = _f("deg", "declination of the detector centre")
    pixelScale: float = _f("arcsec/pixel", "pixel scale at the detector centre")
    zenithDistance: float = _f("deg", "zenith distance of the detector centre")
    expTime: float = _f("s", "exposure time")
    zeroPoint: float = _f("mag", "AB magnitude of one instrumental count (whole exposure)")
    skyBg: float = _f("adu", "sky background level (sum of layer medians)")
    skyNoise: float = _f("adu", "clipped standard deviation of the image")
    meanVar: float = _f("adu**2", "clipped mean of the variance plane")
    raCorners: tuple[float, float, float, float] = _corners("right ascension of the 4 corners")
    decCorners: tuple[float, float, float, float] = _corners("declination of the 4 corners")
    astromOffsetMean: float = _f("arcsec", "mean separation of astrometric matches")
    astromOffsetStd: float = _f("arcsec", "standard deviation of astrometric match separations")
    nPsfStar: int = field(default=0, metadata={"unit": "", "doc": "number of PSF stars"})
    psfStarDeltaE1Median: float = _f("", "median star - PSF e1")
    psfStarDeltaE2Median: float = _f("", "median star - PSF e2")
    psfStarDeltaE1Scatter: float = _f("", "scaled MAD of star - PSF e1")
    psfStarDeltaE2Scatter: float = _f("", "scaled MAD of star - PSF e2")
    psfStarDeltaSizeMedian: float = _f("pixel", "median star - PSF trace radius")
    psfStarDeltaSizeScatter: float = _f("pixel", "scaled MAD of star - PSF trace radius")
    psfStarScaledDeltaSizeScatter: float = _f("", "size scatter / median star size")
    psfTraceRadiusDelta: float = _f("pixel", "max - min PSF trace radius over the grid")
    psfApFluxDelta: float = _f("", "max - min PSF aperture flux over the grid")
    psfApCorrSigmaScaledDelta: float = _f("", "max - min PSF-flux ap. correction / psfSigma")
    maxDistToNearestPsf: float = _f("pixel", "largest distance of a good pixel to a PSF star")
    starEMedian: float = _f("", "median star ellipticity |e|")
    starUnNormalizedEMedian: float = _f("pixel**2", "median unnormalised star ellipticity")
    starComa1Median: float = _f("", "median star coma 1 (HSM moments)")
    starComa2Median: float = _f("", "median star coma 2 (HSM moments)")
    starTrefoil1Median: float = _f("", "median star trefoil 1 (HSM moments)")
    starTrefoil2Median: float = _f("", "median star trefoil 2 (HSM moments)")
    starKurtosisMedian: float = _f("", "median star radial fourth moment (HSM moments)")
    starE41Median: float = _f("", "median star spin-2 fourth moment 1 (HSM moments)")
    starE42Median: float = _f("", "median star spin-2 fourth moment 2 (HSM moments)")
    effTime: float = _f("s", "effective exposure time")
    effTimePsfSigmaScale: float = _f("", "effTime PSF factor (psfSigma / fiducial)^-2")
    effTimeSkyBgScale: float = _f("", "effTime sky factor fiducial / (skyBg / expTime)")
    effTimeZeroPointScale: float = _f("", "effTime transparency factor")
    magLim: float = _f("mag", "5-sigma point-source magnitude limit")
    psfAdaptiveThresholdValue: float = _f("", "adaptive PSF-star detection threshold")
    psfAdaptiveIncludeThresholdMultiplier: float = _f("", "adaptive threshold multiplier")
    refCatSourceDensity: float = _f("deg**-2", "reference-catalog source density")

    def __post_init__(self) -> None:
        self.version = int(self.version)
        self.nPsfStar = int(self.nPsfStar)
        for name in _CORNER_FIELDS:
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 4:
                raise ValueError(f"{name} needs 4 values, got {len(value)}")
            setattr(self, name, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExposureSummaryStats):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in SUMMARY_FIELDS)

    def reset(self, *names: str) -> None:
        """Set the named fields back to their defaults (NaN, 0, or four NaNs)."""
        for name in names:
            setattr(self, name, _DEFAULTS[name])

    def to_dict(self) -> dict[str, Any]:
        """Field name -> plain Python value (corners as lists of 4 floats)."""
        out: dict[str, Any] = {}
        for name in SUMMARY_FIELDS:
            value = getattr(self, name)
            out[name] = list(value) if name in _CORNER_FIELDS else value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExposureSummaryStats:
        """Build from a mapping of field names; missing or None values take the default.

        Unknown keys are ignored, so a whole visit-summary row can be passed.
        """
        kwargs = {}
        for name in SUMMARY_FIELDS:
            value = values.get(name)
            if value is None:
                continue
            if name in _CORNER_FIELDS:
                kwargs[name] = tuple(_NAN if v is None else float(v) for v in value)
            elif name in ("version", "nPsfStar"):
                kwargs[name] = int(value)
            else:
                kwargs[name] = float(value)
        return cls(**kwargs)

    def to_header_cards(self) -> list[tuple[str, Any, str]]:
        """FITS cards ``(keyword, value, comment)``; NaN fields are left out.

        Keywords are ``HIERARCH SUMMARY <FIELD>`` (corners:
        ``HIERARCH SUMMARY RACORNERS<i>``); comments hold the unit when the
        card has room for it.
        """
        cards = []
        for name in SUMMARY_FIELDS:
            value = getattr(self, name)
            values = enumerate(value) if name in _CORNER_FIELDS else [(None, value)]
            for i, v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    continue
                key = f"HIERARCH {_HEADER_PREFIX}{name.upper()}{'' if i is None else i}"
                unit = _UNITS[name]
                comment = f"[{unit}]" if unit else ""
                # key + " = " + 20-char value + " / " + comment must fit in 80 chars.
                if len(key) + 26 + len(comment) > 80:
                    comment = ""
                cards.append((key, v, comment))
        return cards

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> ExposureSummaryStats:
        """Read the cards written by :meth:`to_header_cards` (missing cards -> defaults).

        Parameters
        ----------
        header : astropy.io.fits.Header or mapping
            Keys are matched case-insensitively, with or without ``HIERARCH``.
        """
        found: dict[str, Any] = {}
        for key, value in header.items():
            k = str(key).upper()
            k = k[len("HIERARCH "):] if k.startswith("HIERARCH ") else k
            if k.startswith(_HEADER_PREFIX):
                found[k[len(_HEADER_PREFIX):].strip()] = value
        values: dict[str, Any] = {}
        for name in SUMMARY_FIELDS:
            upper = name.upper()
            if name in _CORNER_FIELDS:
                values[name] = [found.get(f"{upper}{i}", _NAN) for i in range(4)]
            elif upper in found:
                values[name] = found[upper]
        return cls.from_dict(values)


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


#: Field names in afw order (the column order of the visit summary).
SUMMARY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ExposureSummaryStats))
_DEFAULTS = {f.name: f.default for f in fields(ExposureSummaryStats)}
_UNITS = {f.name: f.metadata["unit"] for f in fields(ExposureSummaryStats)}
_DOCS = {f.name: f.metadata["doc"] for f in fields(ExposureSummaryStats)}


def summary_units() -> dict[str, str]:
    """Field name -> astropy unit string (only fields that have a unit)."""
    return {k: v for k, v in _UNITS.items() if v}


def summary_descriptions() -> dict[str, str]:
    """Field name -> one-line description."""
    return dict(_DOCS)


def _bands(u, g, r, i, z, y) -> dict[str, float]:
    return {"u": u, "g": g, "r": r, "i": i, "z": z, "y": y}


# LSSTCam fiducials (obs_lsst / SMTN-002; see the module docstring).
_FIDUCIAL_PSF_SIGMA = _bands(1.72, 1.63, 1.56, 1.51, 1.47, 1.44)
_FIDUCIAL_SKY_BG = _bands(0.91, 9.35, 19.94, 32.04, 48.05, 54.81)
_FIDUCIAL_ZERO_POINT = _bands(25.97, 27.96, 27.81, 27.62, 27.23, 26.27)
_FIDUCIAL_READ_NOISE = _bands(8.8, 8.8, 8.8, 8.8, 8.8, 8.8)
_FIDUCIAL_EXP_TIME = _bands(30.0, 30.0, 30.0, 30.0, 30.0, 30.0)
_FIDUCIAL_MAG_LIM = _bands(23.70, 24.97, 24.52, 24.13, 23.56, 22.55)


@dataclass(frozen=True)
class SummaryStatsConfig:
    """Settings of the summary statistics (``ComputeExposureSummaryStatsConfig``).

    Attributes
    ----------
    sigma_clip, clip_iter : float, int
        Clipping of ``skyNoise`` / ``meanVar`` (A.1).
    bad_mask_planes : tuple of str
        Pixels excluded from ``skyNoise`` / ``meanVar``.
    psf_bad_mask_planes : tuple of str
        Grid points with these planes do not count for the PSF grid statistics
        and ``maxDistToNearestPsf``.
    psf_sampling : int
        Grid step of ``maxDistToNearestPsf``, pixels.
    psf_grid_sampling : int
        Grid step of the PSF trace-radius / aperture-flux / ap-corr deltas, pixels.
    min_psf_ap_radius_pix : float
        Smallest aperture radius of ``psfApFluxDelta``; the radius is
        ``max(this, 3 psfSigma)``.
    psf_ap_corr_field_name : str
        Aperture-correction field of ``psfApCorrSigmaScaledDelta``.
    star_selection, star_shape, psf_shape, psf_flux, centroid : str
        PSF-star table column (prefixes): the PSF-star flag, the star's and the
        PSF model's second moments (``<prefix>_xx`` ...), the S/N flux, the centroid.
    star_higher_order_moment_base : str
        Prefix of the optional HSM higher-order moment columns.
    star_snr_min, star_snr_max : float
        Open S/N interval of the stars used for the star statistics.
    mag_lim_snr : float
        S/N of ``magLim``.
    max_effective_transparency : float
        Upper bound of ``effTimeZeroPointScale``.
    fiducial_psf_sigma, fiducial_sky_background, fiducial_zero_point, \
fiducial_read_noise, fiducial_exp_time, fiducial_mag_lim : dict of str to float
        Per-band fiducials (pixels, ADU/s/pixel, mag of 1 ADU/s, e-, s, mag);
        values and provenance in the module docstring.
    """

    sigma_clip: float = 3.0
    clip_iter: int = 2
    bad_mask_planes: tuple[str, ...] = ("NO_DATA", "SUSPECT")
    psf_bad_mask_planes: tuple[str, ...] = ("BAD", "CR", "EDGE", "INTRP", "NO_DATA", "SAT",
                                            "SUSPECT")
    psf_sampling: int = 8
    psf_grid_sampling: int = 96
    min_psf_ap_radius_pix: float = 2.0
    psf_ap_corr_field_name: str = "base_PsfFlux_instFlux"
    star_selection: str = "calib_psf_used"
    star_shape: str = "slot_Shape"
    psf_shape: str = "slot_PsfShape"
    psf_flux: str = "slot_PsfFlux"
    centroid: str = "slot_Centroid"
    star_higher_order_moment_base: str = "ext_shapeHSM_HigherOrderMomentsSource"
    star_snr_min: float = 50.0
    star_snr_max: float = 1000.0
    mag_lim_snr: float = 5.0
    max_effective_transparency: float = float("inf")
    fiducial_psf_sigma: dict[str, float] = field(default_factory=lambda: dict(_FIDUCIAL_PSF_SIGMA))
    fiducial_sky_background: dict[str, float] = field(default_factory=lambda: dict(_FIDUCIAL_SKY_BG))
    fiducial_zero_point: dict[str, float] = field(default_factory=lambda: dict(_FIDUCIAL_ZERO_POINT))
    fiducial_read_noise: dict[str, float] = field(default_factory=lambda: dict(_FIDUCIAL_READ_NOISE))
    fiducial_exp_time: dict[str, float] = field(default_factory=lambda: dict(_FIDUCIAL_EXP_TIME))
    fiducial_mag_lim: dict[str, float] = field(default_factory=lambda: dict(_FIDUCIAL_MAG_LIM))

    def __post_init__(self) -> None:
        bits(self.bad_mask_planes)  # fail early on an unknown plane name
        bits(self.psf_bad_mask_planes)
        if self.psf_sampling < 1 or self.psf_grid_sampling < 1:
            raise ValueError(f"grid samplings must be >= 1 pixel, got psf_sampling="
                             f"{self.psf_sampling}, psf_grid_sampling={self.psf_grid_sampling}")
        if not self.star_snr_min < self.star_snr_max:
            raise ValueError(f"need star_snr_min < star_snr_max, got {self.star_snr_min} >= "
                             f"{self.star_snr_max}")
        if self.sigma_clip <= 0 or self.clip_iter < 1:
            raise ValueError(f"need sigma_clip > 0 and clip_iter >= 1, got {self.sigma_clip}, "
                             f"{self.clip_iter}")
        if not self.mag_lim_snr > 0:
            raise ValueError(f"mag_lim_snr must be > 0, got {self.mag_lim_snr}")
