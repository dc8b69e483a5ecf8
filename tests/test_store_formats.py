"""Round trips of exposures, PSFs, calibrations and tables through their files."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS, Sip

from store import (
    ApCorrMap,
    Box,
    ChebyshevField,
    DetectorInfo,
    Exposure,
    GaussianPsf,
    GridPsf,
    PhotoCalib,
    PixelBasisPsf,
    VisitInfo,
)
from store.errors import FormatError
from store.formats.fits import FitsBundle, read_bundle, read_exposure, write_bundle, write_exposure
from store.formats.parquet import column_units, read_table, with_units, write_table
from store.masks import MASK_PLANES, bits, plane_names, remap


def make_wcs(crpix=(150.0, 100.0)) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [53.1, -28.1]
    w.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]
    w.wcs.cd = np.array([[-0.2, 0.001], [0.001, 0.2]]) / 3600
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[0, 2], a[3, 0] = 2e-6, -1e-6, 1e-9
    b[0, 2], b[1, 1] = 3e-6, 1e-6
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def make_exposure(rng, xy0=(10, 20)) -> Exposure:
    shape = (200, 300)
    mask = np.zeros(shape, dtype=np.int32)
    mask[5, :] = bits("BAD")
    mask[50:52, 60:62] = bits("SAT", "DETECTED")
    basis = rng.random((6, 21, 21))
    return Exposure(
        image=rng.normal(size=shape).astype(np.float32), mask=mask,
        variance=rng.random(shape).astype(np.float32) + 1.0, wcs=make_wcs(),
        psf=PixelBasisPsf(basis, 2, (0, 0, 300, 200)), photo_calib=PhotoCalib(1.2, 0.01),
        ap_corr_map=ApCorrMap({"base_PsfFlux_instFlux": ChebyshevField(rng.random((3, 3)),
                                                                       (0, 0, 300, 200))}),
        visit_info=VisitInfo(visit=5, instrument="Cam", band="r", physical_filter="r_01",
                             exposure_time=30.0, mjd=60000.5, boresight_ra=53.0,
                             boresight_dec=-28.0, rotation_angle=12.5, airmass=1.1,
                             altitude=65.0, day_obs=20261121),
        detector=DetectorInfo(3, "S3", Box(0, 0, 300, 200), 1.5, 6.0, 9e4),
        units="adu", xy0=xy0, metadata={"SEEING": 1.2, "LONGKEYWORDNAME": "value"},
    )


def roundtrip(exposure: Exposure, tmp_path, **kwargs) -> Exposure:
    path = tmp_path / "e.fits"
    with open(path, "wb") as f:
        write_exposure(exposure, f)
    return read_exposure(path, **kwargs)


def test_exposure_roundtrip_keeps_every_component(tmp_path):
    rng = np.random.default_rng(1)
    exp = make_exposure(rng)
    back = roundtrip(exp, tmp_path)
    np.testing.assert_array_equal(back.image, exp.image)
    np.testing.assert_array_equal(back.mask, exp.mask)
    np.testing.assert_array_equal(back.variance, exp.variance)
    assert back.xy0 == exp.xy0 and back.units == "adu"
    assert back.visit_info == exp.visit_info
    assert back.detector == exp.detector
    assert back.photo_calib == exp.photo_calib
    assert back.metadata["SEEING"] == 1.2 and back.metadata["LONGKEYWORDNAME"] == "value"
    x, y = np.array([10.0, 150.0, 309.0]), np.array([20.0, 100.0, 219.0])
    np.testing.assert_allclose(back.pixel_to_sky(x, y), exp.pixel_to_sky(x, y), atol=1e-12)
    np.testing.assert_allclose(back.psf.kernel_image(40, 50), exp.psf.kernel_image(40, 50))
    field = "base_PsfFlux_instFlux"
    assert back.ap_corr_map[field].evaluate(33.0, 44.0) == pytest.approx(
        exp.ap_corr_map[field].evaluate(33.0, 44.0))


def test_exposure_file_is_plain_fits_with_named_mask_planes(tmp_path):
    exp = make_exposure(np.random.default_rng(2), xy0=(0, 0))
    path = tmp_path / "e.fits"
    with open(path, "wb") as f:
        write_exposure(exp, f)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF", "APCORR"]
        assert hdul["IMAGE"].data.dtype == np.dtype(">f4")
        assert hdul["MASK"].data.dtype == np.dtype(">i4")
        assert hdul["MASK"].header["MP_BAD"] == MASK_PLANES["BAD"][0]
        assert hdul["MASK"].header["MP_DETECTED"] == MASK_PLANES["DETECTED"][0]
        # astropy alone maps the array pixels with the stored (SIP) WCS
        plain = WCS(hdul["IMAGE"].header)
        ra, dec = plain.all_pix2world([150.0], [100.0], 0)
        assert ra[0] == pytest.approx(53.1, abs=1e-9) and dec[0] == pytest.approx(-28.1, abs=1e-9)


def test_cutout_read_keeps_parent_coordinates(tmp_path):
    exp = make_exposure(np.random.default_rng(3))
    box = Box(50, 60, 40, 30)
    cut = roundtrip(exp, tmp_path, bbox=box)
    assert cut.bbox == box
    np.testing.assert_array_equal(cut.image, exp.image[40:70, 40:80])
    np.testing.assert_allclose(cut.pixel_to_sky(55.0, 66.0), exp.pixel_to_sky(55.0, 66.0))
    with pytest.raises(ValueError, match="does not lie inside"):
        roundtrip(exp, tmp_path, bbox=Box(0, 0, 1000, 10))


def test_corrupt_exposure_file_is_a_format_error(tmp_path):
    path = tmp_path / "bad.fits"
    path.write_bytes(b"SIMPLE  =   this is not fits")
    with pytest.raises(FormatError, match=r"bad\.fits"):
        read_exposure(path)


def test_mask_vocabulary_and_remap():
    assert bits("BAD", "SAT") == 3
    assert plane_names(bits("CR", "NO_DATA")) == ["CR", "NO_DATA"]
    with pytest.raises(KeyError, match="unknown mask plane 'NOPE'"):
        bits("NOPE")
    foreign = np.array([[1 << 4, 1 << 0]])  # a file where SAT is bit 4 and BAD bit 0
    out = remap(foreign, {"SAT": 4, "BAD": 0})
    assert out.tolist() == [[bits("SAT"), bits("BAD")]]


@pytest.mark.parametrize("psf", [
    GaussianPsf(2.0, size=25, axis_ratio=0.8, theta=0.3),
    PixelBasisPsf(np.random.default_rng(4).random((3, 15, 15)), 1, (0, 0, 100, 100)),
    GridPsf(np.random.default_rng(5).random((2, 3, 11, 11)), [0, 50, 100], [0, 100]),
])
def test_psf_models_normalised_and_roundtrip(psf, tmp_path):
    from store.psf import psf_from_hdu

    k = psf.kernel_image(30.0, 40.0)
    assert k.shape == (psf.kernel_size, psf.kernel_size) and k.shape[0] % 2 == 1
    assert k.sum() == pytest.approx(1.0)
    hdu = psf.to_hdu()
    path = tmp_path / "psf.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path) as hdul:
        back = psf_from_hdu(hdul["PSF"])
    np.testing.assert_allclose(back.kernel_image(30.0, 40.0), k, rtol=1e-6, atol=1e-9)


def test_psf_image_is_centred_at_subpixel_position():
    psf = GaussianPsf(2.0, size=31)
    stamp, x0, y0 = psf.image(100.3, 50.7)
    yy, xx = np.mgrid[: stamp.shape[0], : stamp.shape[1]]
    assert (stamp * (xx + x0)).sum() / stamp.sum() == pytest.approx(100.3, abs=1e-4)
    assert (stamp * (yy + y0)).sum() / stamp.sum() == pytest.approx(50.7, abs=1e-4)


def test_gaussian_psf_moments_match_kernel():
    psf = GaussianPsf(2.5, size=41, axis_ratio=0.7, theta=0.4)
    k = psf.kernel_image(0, 0)
    yy, xx = np.mgrid[-20:21, -20:21]
    ixx = (k * xx * xx).sum()
    iyy = (k * yy * yy).sum()
    ixy = (k * xx * yy).sum()
    np.testing.assert_allclose([ixx, iyy, ixy], psf.moments(), rtol=1e-3, atol=1e-4)


def test_photocalib_zero_point_and_conversion():
    pc = PhotoCalib.from_zero_point(27.0)
    assert pc.zero_point == pytest.approx(27.0)
    # a source of 27 - 2.5 log10(1000) mag gives 1000 counts
    flux = pc.instflux_to_njy(1000.0)
    mag = -2.5 * np.log10(flux / 3631e9)
    assert mag == pytest.approx(27.0 - 7.5)
    with pytest.raises(ValueError, match="positive"):
        PhotoCalib(0.0)
    img, var = pc.calibrate_image(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert img[0, 0] == pytest.approx(pc.calibration_mean)
    assert var[0, 0] == pytest.approx(pc.calibration_mean**2, rel=1e-6)


def test_chebyshev_field_evaluates_series():
    coeffs = np.array([[1.0, 0.5], [0.25, 0.0]])  # 1 + 0.5 T1(x) + 0.25 T1(y)
    field = ChebyshevField(coeffs, (0, 0, 100, 200))
    assert field.evaluate(100.0, 0.0) == pytest.approx(1.5 - 0.25)
    assert field.evaluate(50.0, 100.0) == pytest.approx(1.0)


def test_parquet_units_survive_roundtrip(tmp_path):
    table = with_units(pa.table({"flux": [1.0, 2.0], "id": [1, 2]}), {"flux": "nJy"},
                       {"flux": "PSF flux"})
    buf = io.BytesIO()
    write_table(table, buf)
    path = tmp_path / "t.parquet"
    path.write_bytes(buf.getvalue())
    back = read_table(path)
    assert back.equals(table)
    assert column_units(back) == {"flux": "nJy"}
    assert back.schema.field("flux").metadata[b"description"] == b"PSF flux"


def test_astropy_and_polars_tables_are_accepted(tmp_path):
    import astropy.units as u
    import polars as pl
    from astropy.table import Table

    from store.formats.parquet import as_arrow

    t = Table({"ra": [1.0, 2.0] * u.deg, "n": [3, 4]})
    arrow = as_arrow(t)
    assert column_units(arrow) == {"ra": "deg"}
    assert as_arrow(pl.DataFrame({"a": [1, 2]})).column("a").to_pylist() == [1, 2]
    with pytest.raises(TypeError, match="cannot store"):
        as_arrow(object())


def test_fits_bundle_roundtrip(tmp_path):
    bundle = FitsBundle(header={"BINSIZE": 128}, arrays={"stats": np.arange(6.0).reshape(2, 3)},
                        tables={"cells": pa.table({"index": [1, 2], "value": [0.5, 1.5]})})
    path = tmp_path / "b.fits"
    with open(path, "wb") as f:
        write_bundle(bundle, f)
    back = read_bundle(path)
    assert back.header["BINSIZE"] == 128
    np.testing.assert_array_equal(back.arrays["stats"], bundle.arrays["stats"])
    assert back.tables["cells"].column("value").to_pylist() == [0.5, 1.5]
