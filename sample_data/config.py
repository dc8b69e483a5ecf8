"""Configuration of the survey simulator: frozen dataclasses and the named presets.

Every number that shapes the simulated survey lives here, with its unit, so a
test or a scale run can change one of them with :func:`dataclasses.replace`
and nothing else.  The defaults follow the published LSSTComCam / Data
Preview 1 figures (``shared/reference/survey_facts.md``) and the LSST
system-engineering numbers for zero points, sky brightness and extinction.

Presets
-------
``demo``
    2 x 2 detectors of 2048 x 2048 pixels, 12 visits in g and r around the
    ECDFS field; a whole survey renders in well under a minute.
``comcam``
    The LSSTComCam geometry, 3 x 3 detectors of 4072 x 4000 pixels, 18 visits
    in g, r and i, for scale runs.
``tiny``
    One 512 x 512 detector, 4 visits in g and r dithered by at most 0.5
    arcmin (so they overlap): seconds to simulate, for tests.  Its cosmic-ray
    rate is 10x the real one so that every exposure has several (the real
    rate gives less than one per exposure on so small a detector).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = [
    "BANDS",
    "PRESETS",
    "ArtefactConfig",
    "CameraConfig",
    "ObservingConfig",
    "PsfConfig",
    "RefcatConfig",
    "SkyConfig",
    "SurveyConfig",
    "get_preset",
]

#: Bands the simulator knows, in wavelength order.
BANDS = ("u", "g", "r", "i", "z", "y")


@dataclass(frozen=True)
class CameraConfig:
    """A grid of identical, unrotated detectors on a flat focal plane.

    Attributes
    ----------
    name : str
        Instrument name (the ``instrument`` dimension).
    n_x, n_y : int
        Detectors per row and per column of the grid.
    width, height : int
        Detector size in pixels.
    gap : int
        Gap between neighbouring detectors, pixels.
    pixel_scale : float
        arcsec per pixel at the centre of the focal plane.
    pixel_size : float
        Physical pixel size, mm (10 micron for LSST sensors).
    gain_range : tuple of float
        Per-detector gain is drawn uniformly in this range, e-/ADU.
    read_noise_range : tuple of float
        Per-detector read noise drawn uniformly in this range, e-.
    full_well_range : tuple of float
        Per-detector full well drawn uniformly in this range, e-; the
        saturation level in ADU is ``full_well / gain``.
    qe_scatter : float
        Fractional r.m.s. of the detector-to-detector throughput (after
        flat-fielding each detector keeps its own zero point).
    n_bad_columns : int
        Bad columns per detector (masked BAD).
    n_hot_pixels : int
        Hot pixels per detector (masked BAD).
    distortion : float
        Radial optical distortion ``k`` in mm^-2: a focal-plane radius ``r``
        (mm) maps to the field angle of an ideal camera at radius
        ``r (1 + k r^2)``.  Exactly representable by third-order SIP.
    physical_filters : dict of str to str
        Band -> physical filter name.
    description : str
        Free text for the instrument record.
    """

    name: str = "SimCam"
    n_x: int = 2
    n_y: int = 2
    width: int = 2048
    height: int = 2048
    gap: int = 60
    pixel_scale: float = 0.2
    pixel_size: float = 0.010
    gain_range: tuple[float, float] = (1.4, 1.7)
    read_noise_range: tuple[float, float] = (5.0, 9.0)
    full_well_range: tuple[float, float] = (9.0e4, 1.1e5)
    qe_scatter: float = 0.01
    n_bad_columns: int = 2
    n_hot_pixels: int = 20
    distortion: float = 1.0e-7
    physical_filters: dict[str, str] = field(default_factory=lambda: {
        "u": "u_02", "g": "g_01", "r": "r_03", "i": "i_06", "z": "z_03", "y": "y_04"})
    description: str = "simulated LSST-like camera"

    @property
    def n_detectors(self) -> int:
        """Number of detectors."""
        return self.n_x * self.n_y


@dataclass(frozen=True)
class ObservingConfig:
    """How the visits are scheduled and what the sky and atmosphere do.

    Attributes
    ----------
    n_visits : int
        Number of visits.
    bands : tuple of str
        Bands observed, cycled in blocks of ``band_block`` visits.
    band_block : int
        Consecutive visits taken in the same band.
    visits_per_night : int
        Visits per night; nights follow each other.
    field_ra, field_dec : float
        Field centre, degrees (ICRS).
    dither_radius : float
        Boresights are spread uniformly over a disc of this radius, arcmin.
    rotation_range : float
        Sky rotation angles are uniform in ``[-rotation_range, rotation_range]``, deg.
    start_mjd : float
        MJD (TAI) of the first night's local noon.
    visit_interval : float
        Seconds from one visit start to the next (exposure + readout + slew).
    exposure_time : dict of str to float
        Seconds per band.
    seeing_quartiles : dict of str to tuple
        (25%, 50%, 75%) of the PSF FWHM in arcsec per band (DP1).  FWHM here is
        the moments FWHM ``2.3548 * det(M)^(1/4) * pixel_scale`` of the PSF at
        the focal-plane centre; visit seeing is log-normal with these
        quartiles.
    min_seeing : float
        Floor of the seeing, arcsec.
    zero_points : dict of str to float
        AB magnitude giving 1 e-/s at airmass 1, per band.
    extinction : dict of str to float
        Atmospheric extinction, mag per airmass.
    sky_brightness : dict of str to float
        Dark-sky brightness at zenith, AB mag / arcsec^2.
    sky_scatter : float
        Visit-to-visit r.m.s. of the sky brightness, mag.
    sky_gradient : tuple of float
        The sky changes linearly across the focal plane by a fraction drawn
        uniformly in this range from one side of the camera to the other.
    transparency_scatter : float
        Cloud extinction: transparency is ``1 - |N(0, scatter)|``, floored at 0.8.
    pointing_error : float
        r.m.s. error of the header boresight, arcsec (the pointing model).
    rotation_error : tuple of float
        |error| of the header sky rotation, deg, uniform in this range, random sign.
    """

    n_visits: int = 12
    bands: tuple[str, ...] = ("g", "r")
    band_block: int = 2
    visits_per_night: int = 4
    field_ra: float = 53.1
    field_dec: float = -28.1
    dither_radius: float = 5.0
    rotation_range: float = 90.0
    start_mjd: float = 60640.0
    visit_interval: float = 40.0
    exposure_time: dict[str, float] = field(default_factory=lambda: {
        "u": 38.0, "g": 30.0, "r": 30.0, "i": 30.0, "z": 30.0, "y": 30.0})
    seeing_quartiles: dict[str, tuple[float, float, float]] = field(default_factory=lambda: {
        "u": (1.34, 1.48, 1.67), "g": (1.07, 1.17, 1.29), "r": (0.99, 1.12, 1.22),
        "i": (0.92, 1.03, 1.13), "z": (0.98, 1.11, 1.21), "y": (0.94, 1.01, 1.10)})
    min_seeing: float = 0.58
    zero_points: dict[str, float] = field(default_factory=lambda: {
        "u": 26.5, "g": 28.3, "r": 28.1, "i": 27.9, "z": 27.5, "y": 26.7})
    extinction: dict[str, float] = field(default_factory=lambda: {
        "u": 0.47, "g": 0.21, "r": 0.13, "i": 0.10, "z": 0.07, "y": 0.17})
    sky_brightness: dict[str, float] = field(default_factory=lambda: {
        "u": 22.9, "g": 22.3, "r": 21.2, "i": 20.5, "z": 19.6, "y": 18.6})
    sky_scatter: float = 0.15
    sky_gradient: tuple[float, float] = (0.01, 0.05)
    transparency_scatter: float = 0.03
    pointing_error: float = 1.0
    rotation_error: tuple[float, float] = (0.05, 0.2)


@dataclass(frozen=True)
class PsfConfig:
    """The true PSF: an elliptical Moffat whose moments vary smoothly over the focal plane.

    Attributes
    ----------
    beta : float
        Moffat index (3.5: wings like a real atmospheric PSF, unlike a Gaussian).
    size_variation : float
        Fractional increase of the PSF size (``det(M)^(1/4)``) at the camera
        corner relative to the centre (quadratic in radius).
    e_scatter : float
        r.m.s. per component of the visit-wide PSF ellipticity (e1, e2); 0.07
        gives a mean |e| of 0.09 over visits and focal plane, as in DP1.
    e_field : float
        Amplitude of the astigmatism-like pattern ``e ~ (r/r_corner)^2 (cos 2phi, sin 2phi)``.
    e_gradient : float
        Amplitude of a linear ellipticity gradient across the camera, random
        direction per visit.
    """

    beta: float = 3.5
    size_variation: float = 0.05
    e_scatter: float = 0.07
    e_field: float = 0.03
    e_gradient: float = 0.02


@dataclass(frozen=True)
class SkyConfig:
    """Stars and galaxies: number counts, colours and shapes.

    Magnitudes are AB, in r; other bands follow from colours.

    Attributes
    ----------
    star_density : float
        Differential star counts at r = 20, stars / deg^2 / mag.
    star_slope : float
        d log10 N / dm of the star counts, dex/mag.
    star_mag_range : tuple of float
        Brightest and faintest star, r mag.
    galaxy_density : float
        Differential galaxy counts at r = 25, galaxies / deg^2 / mag
        (7.4e4 gives 1e5 / deg^2 brighter than r = 25 with the default slope).
    galaxy_slope : float
        d log10 N / dm of the galaxy counts, dex/mag.
    galaxy_mag_range : tuple of float
        Brightest and faintest galaxy, r mag.
    galaxy_size : tuple of float
        ``(median half-light radius at r = 22 in arcsec, dex per mag, r.m.s. dex)``
        of the log-normal size distribution.
    galaxy_truncation : float
        Sersic profiles are truncated at this many half-light radii (major axis).
    margin : float
        Objects are generated out to this far beyond any pixel of any
        visit, arcmin, so stamps crossing detector edges are complete.
    """

    star_density: float = 600.0
    star_slope: float = 0.22
    star_mag_range: tuple[float, float] = (10.0, 26.0)
    galaxy_density: float = 7.4e4
    galaxy_slope: float = 0.32
    galaxy_mag_range: tuple[float, float] = (16.0, 25.5)
    galaxy_size: tuple[float, float, float] = (0.55, -0.08, 0.2)
    galaxy_truncation: float = 4.0
    margin: float = 1.0


@dataclass(frozen=True)
class ArtefactConfig:
    """What the clipping and masking algorithms must find.

    Attributes
    ----------
    cosmic_ray_rate : float
        Cosmic rays per cm^2 of silicon per minute of exposure.
    satellite_every : int
        Visits whose index ``i`` has ``i % satellite_every == satellite_offset``
        carry a satellite trail (0 disables trails).
    satellite_offset : int
        See ``satellite_every``.
    ghost_visit : int or None
        Index of the visit with an optical ghost of its brightest star.
    ghost_fraction : float
        Ghost flux as a fraction of its star's flux.
    transient_visit : int or None
        Index of the visit in which a transient point source appears.
    transient_mag : float
        Its magnitude in that visit's band.
    """

    cosmic_ray_rate: float = 6.0
    satellite_every: int = 5
    satellite_offset: int = 2
    ghost_visit: int | None = 1
    ghost_fraction: float = 3.0e-3
    transient_visit: int | None = 4
    transient_mag: float = 20.5


@dataclass(frozen=True)
class RefcatConfig:
    """The Gaia-like reference catalog.

    Attributes
    ----------
    mag_limit : float
        Stars brighter than this (r) are in the catalog.
    position_error : tuple of float
        Position errors grow from the first value (bright end) to the second
        (at ``mag_limit``), mas per coordinate (proper motions are ignored,
        so these are epoch-propagation sized errors).
    flux_error : float
        Fractional flux error at the bright end; grows like a photon-limited
        survey towards ``mag_limit``.
    healpix : tuple of int or None
        Restrict the catalog to these nested order-6 HEALPix pixels (as a
        real catalog's coverage); ``None`` covers every pixel the field touches.
    """

    mag_limit: float = 21.0
    position_error: tuple[float, float] = (1.0, 5.0)
    flux_error: float = 0.005
    healpix: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SurveyConfig:
    """Everything the simulator needs besides the seed.

    Attributes
    ----------
    name : str
        Preset name, recorded in file headers.
    camera, observing, psf, sky, artefacts, refcat
        The component configurations.
    """

    name: str = "demo"
    camera: CameraConfig = field(default_factory=CameraConfig)
    observing: ObservingConfig = field(default_factory=ObservingConfig)
    psf: PsfConfig = field(default_factory=PsfConfig)
    sky: SkyConfig = field(default_factory=SkyConfig)
    artefacts: ArtefactConfig = field(default_factory=ArtefactConfig)
    refcat: RefcatConfig = field(default_factory=RefcatConfig)

    def with_visits(self, n_visits: int) -> SurveyConfig:
        """The same survey with another number of visits."""
        return replace(self, observing=replace(self.observing, n_visits=n_visits))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        cam, obs = self.camera, self.observing
        n = obs.n_visits
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_visits must be a positive integer, got {n!r}")
        for attr in ("n_x", "n_y", "width", "height"):
            value = getattr(cam, attr)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"camera.{attr} must be a positive integer, got {value!r}")
        if cam.gap < 0:
            raise ValueError(f"camera.gap must be >= 0 pixels, got {cam.gap}")
        if not -90.0 <= obs.field_dec <= 90.0:
            raise ValueError(f"field_dec must lie in [-90, 90] deg, got {obs.field_dec}")
        if abs(obs.field_dec) > 80.0:
            raise ValueError(f"field_dec {obs.field_dec} is too close to a pole for the "
                             "simulator's sky sampling (|dec| <= 80 deg)")
        if not obs.bands:
            raise ValueError("observing.bands must name at least one band")
        for band in obs.bands:
            if band not in BANDS:
                raise ValueError(f"unknown band {band!r}; known: {', '.join(BANDS)}")
        if obs.band_block < 1 or obs.visits_per_night < 1:
            raise ValueError("band_block and visits_per_night must be >= 1")
        if self.psf.beta <= 2.0:
            raise ValueError(f"psf.beta must exceed 2 (finite second moments), got {self.psf.beta}")
        lo, hi = self.sky.star_mag_range
        if not lo < hi:
            raise ValueError(f"star_mag_range must be increasing, got {self.sky.star_mag_range}")


_DEMO = SurveyConfig()

_COMCAM = SurveyConfig(
    name="comcam",
    camera=CameraConfig(name="SimComCam", n_x=3, n_y=3, width=4072, height=4000, gap=28,
                        description="simulated LSSTComCam-like camera (one raft)"),
    observing=ObservingConfig(n_visits=18, bands=("g", "r", "i"), visits_per_night=6,
                              dither_radius=10.0),
)

_TINY = SurveyConfig(
    name="tiny",
    camera=CameraConfig(name="SimTiny", n_x=1, n_y=1, width=512, height=512),
    observing=ObservingConfig(n_visits=4, dither_radius=0.5),
    artefacts=ArtefactConfig(cosmic_ray_rate=60.0, satellite_every=4, satellite_offset=2,
                             ghost_visit=None, transient_visit=3),
)

#: Named presets; ``simulate_survey(repo, preset="demo")`` looks them up here.
PRESETS: dict[str, SurveyConfig] = {"demo": _DEMO, "comcam": _COMCAM, "tiny": _TINY}


def get_preset(name: str) -> SurveyConfig:
    """Look up a preset by name (one-line error listing the known ones)."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; known presets: "
                         f"{', '.join(sorted(PRESETS))}") from None
