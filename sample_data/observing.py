"""Visits: schedule, pointing, atmosphere and sky of each exposure.

Schedule
    Visits are taken ``visits_per_night`` a night on consecutive nights from
    ``start_mjd``, ``visit_interval`` seconds apart, starting each night at
    an hour angle drawn in [-2, +1] h around the field's transit closest to
    local midnight at the Rubin site.  Bands come in blocks of
    ``band_block`` visits.  ``day_obs`` is the date of ``MJD - 0.5`` (Rubin's
    rollover at 12:00 UTC) and visit ids are ``day_obs * 100000 + seq_num``
    like Rubin's.  Altitude, azimuth and airmass (Kasten & Young) follow from
    the hour angle; the sidereal time is the IAU 1982 GMST polynomial.
Pointing
    Boresights are uniform over a disc of ``dither_radius`` about the field
    centre, rotations uniform in ``+-rotation_range``.  The header (pointing
    model) boresight is off by ``pointing_error`` x U(0.7, 1.3) arcsec in a
    random direction and its rotation by U(``rotation_error``) deg, random sign.
Atmosphere and sky
    Seeing (moments FWHM at the optical axis) is log-normal with the band's
    median and an r.m.s. set by its inter-quartile range, floored at
    ``min_seeing``; it is *not* rescaled with airmass (the DP1 quartiles are
    of delivered image quality).  Transparency ``1 - |N(0, 0.03)|`` makes zero
    points differ by a few per cent.  The sky is the band's dark-sky
    brightness brightened by ``2.5 log10(airmass)`` with 0.15 mag scatter,
    changing linearly across the focal plane by 1-5 % in a random direction.

Each visit draws from its own random stream (``SeedSequence(seed,
spawn_key=(2, index))``), so the first visits of a survey do not change when
more visits are asked for.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from .artefacts import Ghost, SatelliteTrail
from .camera import Camera
from .config import SurveyConfig
from .psf import FWHM_PER_SIGMA, PsfField

__all__ = ["RUBIN_SITE", "Visit", "airmass", "day_obs_of", "plan_visits", "rng_stream"]

#: Longitude (deg, East positive), latitude (deg) and elevation (m) of Rubin.
RUBIN_SITE = (-70.749417, -30.244639, 2663.0)


def rng_stream(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for ``key`` under ``seed`` (order of use never matters)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


@dataclass(frozen=True, eq=False)
class Visit:
    """Everything true about one exposure except its pixels.

    Angles in degrees, times MJD (TAI), durations seconds, fluxes electrons.

    Attributes
    ----------
    index : int
        Position in the survey (0-based).
    id : int
        Visit id ``day_obs * 100000 + seq_num``.
    day_obs, seq_num : int
        Observing day (YYYYMMDD) and sequence number in it.
    band, physical_filter : str
        Filter.
    exposure_time, dark_time : float
        Seconds.
    mjd_begin, mjd : float
        Start and mid-point.
    ra, dec, rotation : float
        True boresight and sky rotation (position angle of focal-plane +y).
    header_ra, header_dec, header_rotation : float
        What the pointing model wrote in the header.
    airmass, altitude, azimuth, hour_angle : float
        At mid-exposure (hour angle in hours).
    seeing : float
        Moments FWHM at the optical axis, arcsec.
    psf : PsfField
        The true PSF over the focal plane.
    transparency : float
        Fraction of light getting through clouds.
    zero_point : float
        AB magnitude giving 1 e- in the exposure for a detector of unit throughput.
    sky_mag : float
        Sky brightness, AB mag / arcsec^2.
    sky_level : float
        Sky at the optical axis, e-/pixel for unit throughput.
    sky_gradient : tuple of float
        Fractional change of the sky per mm along focal-plane x and y.
    satellite : SatelliteTrail or None
        Trail crossing the focal plane in this visit.
    ghost : Ghost or None
        Optical ghost in this visit (set by the survey plan, which knows the stars).
    """

    index: int
    id: int
    day_obs: int
    seq_num: int
    band: str
    physical_filter: str
    exposure_time: float
    dark_time: float
    mjd_begin: float
    mjd: float
    ra: float
    dec: float
    rotation: float
    header_ra: float
    header_dec: float
    header_rotation: float
    airmass: float
    altitude: float
    azimuth: float
    hour_angle: float
    seeing: float
    psf: PsfField
    transparency: float
    zero_point: float
    sky_mag: float
    sky_level: float
    sky_gradient: tuple[float, float]
    satellite: SatelliteTrail | None = None
    ghost: Ghost | None = None

    def __repr__(self) -> str:
        return (f"Visit(id={self.id}, band={self.band!r}, mjd={self.mjd:.5f}, "
                f"ra={self.ra:.4f}, dec={self.dec:.4f}, rot={self.rotation:.2f}, "
                f"seeing={self.seeing:.3f}\", airmass={self.airmass:.3f})")

    @property
    def zenith_distance(self) -> float:
        """90 - altitude, deg."""
        return 90.0 - self.altitude


def day_obs_of(mjd: float) -> int:
    """Rubin observing day (YYYYMMDD) of an MJD: the date 12 hours earlier."""
    date = _dt.date(1858, 11, 17) + _dt.timedelta(days=int(np.floor(mjd - 0.5)))
    return date.year * 10000 + date.month * 100 + date.day


def _lst_deg(mjd: float, lon_deg: float) -> float:
    # GMST from the IAU 1982 polynomial (UT1 ~ TAI for this purpose).
    t = mjd - 51544.5
    gmst = 280.46061837 + 360.98564736629 * t
    return float(np.mod(gmst + lon_deg, 360.0))


def airmass(altitude_deg):
    """Kasten & Young (1989) airmass of an altitude in degrees."""
    alt = np.asarray(altitude_deg, float)
    return 1.0 / (np.sin(np.radians(alt)) + 0.50572 * (alt + 6.07995) ** -1.6364)


def _alt_az(ha_deg: float, dec_deg: float, lat_deg: float) -> tuple[float, float]:
    h, d, p = np.radians(ha_deg), np.radians(dec_deg), np.radians(lat_deg)
    sin_alt = np.sin(p) * np.sin(d) + np.cos(p) * np.cos(d) * np.cos(h)
    alt = np.arcsin(np.clip(sin_alt, -1, 1))
    az = np.arctan2(-np.cos(d) * np.sin(h), np.sin(d) * np.cos(p) - np.cos(d) * np.sin(p) * np.cos(h))
    return float(np.degrees(alt)), float(np.mod(np.degrees(az), 360.0))


def _night_start(config: SurveyConfig, seed: int, night: int) -> float:
    """MJD of the first visit of a night."""
    obs = config.observing
    lon = RUBIN_SITE[0]
    # Local midnight after the evening of day `night` is at UTC 0h - lon/15 h of the
    # next date; observe around the field's transit closest to it.
    midnight = np.floor(obs.start_mjd) + night + 1.0 + np.mod(-lon / 360.0, 1.0)
    delta = np.mod(obs.field_ra - _lst_deg(midnight, lon) + 180.0, 360.0) - 180.0
    transit = midnight + delta / 360.98564736629
    ha_start = rng_stream(seed, 6, night).uniform(-2.0, 1.0)
    return float(transit + ha_start / 24.0 * 0.99726957)


def _offset_position(ra: float, dec: float, dist_deg: float, pa_deg: float) -> tuple[float, float]:
    """Point at angular distance ``dist_deg`` and position angle ``pa_deg`` (E of N)."""
    d, p = np.radians(dist_deg), np.radians(pa_deg)
    d0, a0 = np.radians(dec), np.radians(ra)
    sin_dec = np.sin(d0) * np.cos(d) + np.cos(d0) * np.sin(d) * np.cos(p)
    dec1 = np.arcsin(sin_dec)
    ra1 = a0 + np.arctan2(np.sin(p) * np.sin(d) * np.cos(d0), np.cos(d) - np.sin(d0) * sin_dec)
    return float(np.mod(np.degrees(ra1), 360.0)), float(np.degrees(dec1))


def _visit(config: SurveyConfig, camera: Camera, seed: int, index: int, start: float) -> Visit:
    obs, psf_cfg, cam = config.observing, config.psf, camera.config
    rng = rng_stream(seed, 2, index)
    seq = index % obs.visits_per_night
    band = obs.bands[(index // obs.band_block) % len(obs.bands)]
    exptime = float(obs.exposure_time[band])
    mjd_begin = start + seq * obs.visit_interval / 86400.0
    mjd = mjd_begin + exptime / 2.0 / 86400.0
    day_obs = day_obs_of(mjd_begin)

    # Pointing: dither over a disc, rotation, then the pointing model's error.
    dist = obs.dither_radius / 60.0 * np.sqrt(rng.random())
    ra, dec = _offset_position(obs.field_ra, obs.field_dec, dist, rng.uniform(0, 360))
    rotation = float(rng.uniform(-obs.rotation_range, obs.rotation_range))
    err = obs.pointing_error * rng.uniform(0.7, 1.3) / 3600.0
    header_ra, header_dec = _offset_position(ra, dec, err, rng.uniform(0, 360))
    header_rotation = rotation + rng.choice([-1.0, 1.0]) * rng.uniform(*obs.rotation_error)

    lon, lat, _ = RUBIN_SITE
    ha = np.mod(_lst_deg(mjd, lon) - ra + 180.0, 360.0) - 180.0
    alt, az = _alt_az(ha, dec, lat)
    x = float(airmass(alt))

    q25, q50, q75 = obs.seeing_quartiles[band]
    sigma_ln = (np.log(q75) - np.log(q25)) / (2 * 0.6744897501960817)
    seeing = max(float(q50 * np.exp(sigma_ln * rng.standard_normal())), obs.min_seeing)
    r_ref = camera.corner_radius
    psf = PsfField(
        sigma=seeing / (FWHM_PER_SIGMA * cam.pixel_scale), beta=psf_cfg.beta,
        e1=float(rng.normal(0, psf_cfg.e_scatter)), e2=float(rng.normal(0, psf_cfg.e_scatter)),
        size_variation=psf_cfg.size_variation,
        e_field=psf_cfg.e_field * float(rng.uniform(0.5, 1.5)),
        e_gradient=tuple(float(g) for g in rng.normal(0, psf_cfg.e_gradient / 2, 4)),
        r_ref=r_ref,
    )
    transparency = max(1.0 - abs(float(rng.normal(0, obs.transparency_scatter))), 0.8)
    zero_point = (obs.zero_points[band] + 2.5 * np.log10(exptime * transparency)
                  - obs.extinction[band] * (x - 1.0))
    sky_mag = obs.sky_brightness[band] - 2.5 * np.log10(x) + rng.normal(0, obs.sky_scatter)
    sky_level = 10 ** (-0.4 * (sky_mag - obs.zero_points[band])) * exptime * cam.pixel_scale**2
    grad = rng.uniform(*obs.sky_gradient) / (2.0 * max(camera.half_extent))
    grad_angle = rng.uniform(0, 2 * np.pi)

    satellite = None
    art = config.artefacts
    if art.satellite_every > 0 and index % art.satellite_every == art.satellite_offset:
        hx, hy = camera.half_extent
        satellite = SatelliteTrail(
            x=float(rng.uniform(-0.5, 0.5) * hx), y=float(rng.uniform(-0.5, 0.5) * hy),
            angle=float(rng.uniform(0, 180)),
            width=float(psf.sigma * rng.uniform(1.0, 2.5)),
            peak=float(np.exp(rng.uniform(np.log(100.0), np.log(1500.0)))),
        )
    return Visit(
        index=index, id=day_obs * 100000 + seq + 1, day_obs=day_obs, seq_num=seq + 1,
        band=band, physical_filter=cam.physical_filters[band], exposure_time=exptime,
        dark_time=exptime + 1.0, mjd_begin=float(mjd_begin), mjd=float(mjd), ra=ra, dec=dec,
        rotation=rotation, header_ra=header_ra, header_dec=header_dec,
        header_rotation=float(header_rotation), airmass=x, altitude=alt, azimuth=az,
        hour_angle=float(ha / 15.0), seeing=seeing, psf=psf, transparency=transparency,
        zero_point=float(zero_point), sky_mag=float(sky_mag), sky_level=float(sky_level),
        sky_gradient=(float(grad * np.cos(grad_angle)), float(grad * np.sin(grad_angle))),
        satellite=satellite,
    )


def plan_visits(config: SurveyConfig, camera: Camera, seed: int) -> tuple[Visit, ...]:
    """Draw every visit of the survey.

    Parameters
    ----------
    config : SurveyConfig
        Survey configuration (``observing``, ``psf``, ``artefacts``).
    camera : Camera
        The camera (pixel scale, extent for PSF and sky variation).
    seed : int
        Survey seed.

    Returns
    -------
    tuple of Visit
        In observing order.
    """
    obs = config.observing
    n_nights = -(-obs.n_visits // obs.visits_per_night)
    starts = [_night_start(config, seed, night) for night in range(n_nights)]
    return tuple(_visit(config, camera, seed, i, starts[i // obs.visits_per_night])
                 for i in range(obs.n_visits))
