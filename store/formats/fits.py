"""FITS formats: exposures (multi-extension), single images, and generic bundles.

An exposure file has a primary HDU with the visit, detector and calibration
cards, then ``IMAGE`` (float32), ``MASK`` (int32, one ``MP_<NAME>`` card per
plane) and ``VARIANCE`` (float32) extensions, each carrying the WCS, and
optional ``PSF`` and ``APCORR`` extensions.  Plain astropy and DS9 read it.
Sub-images keep their parent coordinates through ``LTV1/LTV2`` (DS9's
physical coordinates) and ``XY0`` cards.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .. import coadd_psf as _coadd_psf  # noqa: F401  (registers PSFTYPE 'COADD')
from ..calib import ApCorrMap, PhotoCalib
from ..errors import FormatError
from ..exposure import DetectorInfo, Exposure, ExposureInfo, VisitInfo
from ..geom import Box
from ..masks import header_cards, remap
from ..psf import psf_from_hdu

__all__ = [
    "FitsBundle",
    "read_bundle",
    "read_exposure",
    "read_exposure_info",
    "read_image",
    "write_bundle",
    "write_exposure",
    "write_image",
]

# VisitInfo field -> (FITS keyword, comment).  One definition, used both ways.
_VISIT_CARDS: dict[str, tuple[str, str]] = {
    "visit": ("VISIT", "visit id"),
    "instrument": ("INSTRUME", "instrument name"),
    "band": ("BAND", "abstract filter (band)"),
    "physical_filter": ("FILTER", "physical filter"),
    "exposure_time": ("EXPTIME", "[s] exposure time"),
    "dark_time": ("DARKTIME", "[s] dark time"),
    "mjd": ("MJD-AVG", "[d] TAI MJD of the exposure mid-point"),
    "mjd_begin": ("MJD-BEG", "[d] TAI MJD of the exposure start"),
    "boresight_ra": ("RA", "[deg] boresight right ascension"),
    "boresight_dec": ("DEC", "[deg] boresight declination"),
    "rotation_angle": ("ROTPA", "[deg] sky rotation angle"),
    "airmass": ("AIRMASS", "airmass at mid-exposure"),
    "azimuth": ("AZIMUTH", "[deg] azimuth at mid-exposure"),
    "altitude": ("ALTITUDE", "[deg] altitude at mid-exposure"),
    "day_obs": ("DAYOBS", "observing day YYYYMMDD"),
}
_DETECTOR_CARDS: dict[str, tuple[str, str]] = {
    "id": ("DETECTOR", "detector id"),
    "name": ("DETNAME", "detector name"),
    "gain": ("GAIN", "[e-/adu] gain"),
    "read_noise": ("RDNOISE", "[e-] read noise"),
    "saturation": ("SATURATE", "[adu] saturation level"),
}
_RESERVED = {c[0] for c in _VISIT_CARDS.values()} | {c[0] for c in _DETECTOR_CARDS.values()} | {
    "OBS-LONG", "OBS-LAT", "OBS-ELEV", "DETX0", "DETY0", "DETNX", "DETNY", "PHOTCALM", "PHOTCALE",
    "XY0X", "XY0Y", "BUNIT", "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "DRPFMT",
}


def _set(header, key: str, value, comment: str = "") -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        return  # FITS cannot hold NaN; absence means NaN on read
    if isinstance(value, np.generic):
        value = value.item()
    if len(key) > 8 and not key.startswith("HIERARCH"):
        key = f"HIERARCH {key}"
    header[key] = (value, comment)


def _wcs_header(wcs, xy0: tuple[int, int]):
    hdr = wcs.to_header(relax=True)
    # The WCS maps parent coordinates; the array starts at xy0.
    hdr["CRPIX1"] = hdr["CRPIX1"] - xy0[0]
    hdr["CRPIX2"] = hdr["CRPIX2"] - xy0[1]
    return hdr


def _image_hdu(data, name: str, wcs, xy0, extra=None):
    from astropy.io import fits

    hdu = fits.ImageHDU(data, name=name)
    if wcs is not None:
        hdu.header.update(_wcs_header(wcs, xy0))
    # DS9 "physical" coordinates are parent coordinates (1-based there).
    hdu.header["LTV1"] = -xy0[0]
    hdu.header["LTV2"] = -xy0[1]
    hdu.header["LTM1_1"] = 1.0
    hdu.header["LTM2_2"] = 1.0
    for key, value, comment in extra or []:
        _set(hdu.header, key, value, comment)
    return hdu


def _primary_header(exposure: Exposure):
    from astropy.io import fits

    hdr = fits.Header()
    hdr["DRPFMT"] = ("exposure/1", "drp exposure file format")
    _set(hdr, "BUNIT", exposure.units, "units of the IMAGE extension")
    _set(hdr, "XY0X", exposure.xy0[0], "parent x of pixel [0, 0]")
    _set(hdr, "XY0Y", exposure.xy0[1], "parent y of pixel [0, 0]")
    vi = exposure.visit_info
    if vi is not None:
        for attr, (key, comment) in _VISIT_CARDS.items():
            _set(hdr, key, getattr(vi, attr), comment)
        lon, lat, elev = vi.observatory
        _set(hdr, "OBS-LONG", lon, "[deg] observatory longitude")
        _set(hdr, "OBS-LAT", lat, "[deg] observatory latitude")
        _set(hdr, "OBS-ELEV", elev, "[m] observatory elevation")
    det = exposure.detector
    if det is not None:
        for attr, (key, comment) in _DETECTOR_CARDS.items():
            _set(hdr, key, getattr(det, attr), comment)
        for key, value in zip(("DETX0", "DETY0", "DETNX", "DETNY"), det.bbox.to_tuple(),
                              strict=True):
            _set(hdr, key, value, "detector bbox")
    pc = exposure.photo_calib
    if pc is not None:
        _set(hdr, "PHOTCALM", pc.calibration_mean, "[nJy/adu] photometric calibration")
        _set(hdr, "PHOTCALE", pc.calibration_err, "[nJy/adu] calibration error")
    for key, value in exposure.metadata.items():
        if key.upper() in _RESERVED:
            continue
        _set(hdr, key, value)
    return hdr


def write_exposure(exposure: Exposure, fileobj) -> None:
    """Write an exposure as multi-extension FITS to an open binary file.

    Parameters
    ----------
    exposure : Exposure
        What to write.
    fileobj : file-like
        Binary, writable.
    """
    from astropy.io import fits

    hdus = [fits.PrimaryHDU(header=_primary_header(exposure))]
    xy0 = exposure.xy0
    hdus.append(_image_hdu(exposure.image, "IMAGE", exposure.wcs, xy0,
                           [("BUNIT", exposure.units, "pixel units")]))
    mask_cards = [(key.replace("HIERARCH ", ""), bit, doc) for key, bit, doc in header_cards()]
    hdus.append(_image_hdu(exposure.mask, "MASK", exposure.wcs, xy0, mask_cards))
    hdus.append(_image_hdu(exposure.variance, "VARIANCE", exposure.wcs, xy0,
                           [("BUNIT", f"({exposure.units})^2", "variance units")]))
    if exposure.psf is not None:
        hdus.append(exposure.psf.to_hdu())
    if exposure.ap_corr_map is not None:
        hdus.append(exposure.ap_corr_map.to_hdu())
    fits.HDUList(hdus).writeto(fileobj, output_verify="silentfix")


def _get(header, key, default=float("nan")):
    value = header.get(key, default)
    return default if value is None else value


def _read_wcs(header, xy0):
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    if "CTYPE1" not in header:
        return None
    hdr = header.copy()
    hdr["CRPIX1"] = hdr["CRPIX1"] + xy0[0]
    hdr["CRPIX2"] = hdr["CRPIX2"] + xy0[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(hdr, relax=True)


def _mask_planes_of(header) -> dict[str, int]:
    planes = {}
    for key, value in header.items():
        if key.startswith("MP_"):
            planes[key[3:]] = int(value)
    return planes


def read_exposure(path, bbox: Box | None = None) -> Exposure:
    """Read an exposure written by :func:`write_exposure` (or a compatible file).

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    bbox : Box, optional
        Read only this parent-frame box (memory-mapped, so the rest of the
        file is not read).  Must lie inside the stored image.

    Returns
    -------
    Exposure
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            primary = hdul[0].header
            names = [h.name for h in hdul]
            if "IMAGE" not in names:
                raise FormatError(f"{path}: no IMAGE extension (not an exposure file)")
            xy0 = (int(primary.get("XY0X", 0)), int(primary.get("XY0Y", 0)))
            img_hdu = hdul["IMAGE"]
            full = Box.from_shape(img_hdu.shape, *xy0)
            if bbox is None:
                rows, cols = slice(None), slice(None)
                out_xy0 = xy0
            else:
                rows, cols = bbox.slices_in(full)
                out_xy0 = (bbox.x0, bbox.y0)
            image = np.array(img_hdu.section[rows, cols], dtype=np.float32)
            if "MASK" in names:
                mhdu = hdul["MASK"]
                mask = remap(np.array(mhdu.section[rows, cols]), _mask_planes_of(mhdu.header))
            else:
                mask = None
            variance = (np.array(hdul["VARIANCE"].section[rows, cols], dtype=np.float32)
                        if "VARIANCE" in names else None)
            wcs = _read_wcs(img_hdu.header, xy0)
            psf = psf_from_hdu(hdul["PSF"]) if "PSF" in names else None
            ap_corr = ApCorrMap.from_hdu(hdul["APCORR"]) if "APCORR" in names else None
            visit_info, detector, photo_calib, metadata = _read_primary(primary)
    except (OSError, TypeError, KeyError, ValueError) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"{path}: cannot read exposure ({err})") from err
    units = primary.get("BUNIT") or img_hdu.header.get("BUNIT", "adu")
    return Exposure(image=image, mask=mask, variance=variance, wcs=wcs, psf=psf,
                    photo_calib=photo_calib, ap_corr_map=ap_corr, visit_info=visit_info,
                    detector=detector, units=units, xy0=out_xy0, metadata=metadata)


def read_exposure_info(path) -> ExposureInfo:
    """Read an exposure's components and metadata without its pixel planes."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            primary = hdul[0].header
            names = [h.name for h in hdul]
            if "IMAGE" not in names:
                raise FormatError(f"{path}: no IMAGE extension (not an exposure file)")
            xy0 = (int(primary.get("XY0X", 0)), int(primary.get("XY0Y", 0)))
            header = hdul["IMAGE"].header
            bbox = Box(xy0[0], xy0[1], int(header["NAXIS1"]), int(header["NAXIS2"]))
            wcs = _read_wcs(header, xy0)
            psf = psf_from_hdu(hdul["PSF"]) if "PSF" in names else None
            ap_corr = ApCorrMap.from_hdu(hdul["APCORR"]) if "APCORR" in names else None
            visit_info, detector, photo_calib, metadata = _read_primary(primary)
            units = primary.get("BUNIT") or header.get("BUNIT", "adu")
    except (OSError, TypeError, KeyError, ValueError) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"{path}: cannot read exposure ({err})") from err
    return ExposureInfo(bbox=bbox, wcs=wcs, psf=psf, photo_calib=photo_calib,
                        ap_corr_map=ap_corr, visit_info=visit_info, detector=detector,
                        units=units, metadata=metadata)


def _read_primary(primary):
    visit_info = None
    if "VISIT" in primary or "EXPTIME" in primary:
        kwargs: dict[str, Any] = {}
        defaults = {f.name: f.default for f in fields(VisitInfo)}
        for attr, (key, _) in _VISIT_CARDS.items():
            kwargs[attr] = _get(primary, key, defaults[attr])
        kwargs["observatory"] = (
            float(_get(primary, "OBS-LONG", VisitInfo.observatory[0])),
            float(_get(primary, "OBS-LAT", VisitInfo.observatory[1])),
            float(_get(primary, "OBS-ELEV", VisitInfo.observatory[2])),
        )
        visit_info = VisitInfo(**kwargs)
    detector = None
    if "DETECTOR" in primary:
        bbox = Box(*(int(primary.get(k, 0)) for k in ("DETX0", "DETY0", "DETNX", "DETNY")))
        detector = DetectorInfo(
            id=int(primary["DETECTOR"]), name=str(primary.get("DETNAME", "")), bbox=bbox,
            gain=float(_get(primary, "GAIN")), read_noise=float(_get(primary, "RDNOISE")),
            saturation=float(_get(primary, "SATURATE")),
        )
    photo_calib = None
    if "PHOTCALM" in primary:
        photo_calib = PhotoCalib(float(primary["PHOTCALM"]), float(primary.get("PHOTCALE", 0.0)))
    metadata = {k: v for k, v in primary.items() if k not in _RESERVED and k != ""
                and not k.startswith(("NAXIS", "COMMENT", "HISTORY"))}
    return visit_info, detector, photo_calib, metadata


def write_image(array: np.ndarray, fileobj, header: dict | None = None) -> None:
    """Write a single 2-D array (e.g. ``deep_coadd_n_image``) as a FITS primary HDU."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.asarray(array))
    for key, value in (header or {}).items():
        _set(hdu.header, key, value)
    hdu.writeto(fileobj, output_verify="silentfix")


def read_image(path) -> np.ndarray:
    """Read the primary array of a FITS file written by :func:`write_image`."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            return np.array(hdul[0].data)
    except (OSError, TypeError, ValueError) as err:
        raise FormatError(f"{path}: cannot read image ({err})") from err


@dataclass
class FitsBundle:
    """Named arrays and tables with a header: the generic FITS container.

    Processing products with their own structure (background models, cell
    coadds) convert themselves to and from a bundle, so the store can write
    them without knowing their classes.

    Parameters
    ----------
    header : dict
        Scalar cards for the primary HDU.
    arrays : dict of str to numpy.ndarray
        Written as image extensions named by key (upper-cased).
    tables : dict of str to pyarrow.Table
        Written as binary-table extensions named by key.
    """

    header: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)


def write_bundle(bundle: FitsBundle, fileobj) -> None:
    """Write a :class:`FitsBundle` as multi-extension FITS."""
    from astropy.io import fits
    from astropy.table import Table

    primary = fits.PrimaryHDU()
    primary.header["DRPFMT"] = ("bundle/1", "drp generic FITS bundle")
    for key, value in bundle.header.items():
        _set(primary.header, key, value)
    hdus = [primary]
    for name, array in bundle.arrays.items():
        hdus.append(fits.ImageHDU(np.asarray(array), name=name.upper()))
    for name, table in bundle.tables.items():
        tab = table if isinstance(table, Table) else Table(table.to_pydict())
        hdus.append(fits.table_to_hdu(tab))
        hdus[-1].name = name.upper()
    fits.HDUList(hdus).writeto(fileobj, output_verify="silentfix")


def read_bundle(path) -> FitsBundle:
    """Read a file written by :func:`write_bundle`; tables come back as pyarrow."""
    import pyarrow as pa
    from astropy.io import fits

    out = FitsBundle()
    try:
        with fits.open(path, memmap=False) as hdul:
            out.header = {k: v for k, v in hdul[0].header.items()
                          if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "DRPFMT", "")}
            for hdu in hdul[1:]:
                if isinstance(hdu, fits.BinTableHDU):
                    data = hdu.data
                    cols = {}
                    for name in data.columns.names:
                        col = np.asarray(data[name])
                        if col.dtype.kind == "S":
                            col = col.astype(str)
                        if col.dtype.byteorder not in ("=", "|"):
                            col = col.astype(col.dtype.newbyteorder("="))
                        cols[name] = list(col) if col.ndim > 1 else col
                    out.tables[hdu.name.lower()] = pa.table(cols)
                else:
                    out.arrays[hdu.name.lower()] = np.array(hdu.data)
    except (OSError, TypeError, ValueError) as err:
        raise FormatError(f"{path}: cannot read FITS bundle ({err})") from err
    return out


def exposure_to_bytes(exposure: Exposure) -> bytes:
    """Serialise an exposure in memory (tests, checksums)."""
    buf = io.BytesIO()
    write_exposure(exposure, buf)
    return buf.getvalue()

