"""Tests of store.coadd_psf.CoaddPsf and processing.algorithms.coadd_psf.combine_coadd_psfs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from processing.algorithms.coadd_psf import combine_coadd_psfs
from store.coadd_psf import CoaddPsf, points_in_polygon
from store.exposure import Exposure
from store.formats.fits import read_exposure, write_exposure
from store.geom import Box
from store.psf import GaussianPsf, psf_from_hdu

SIZE = 21


def _kernel(sigma: float) -> np.ndarray:
    return GaussianPsf(sigma, SIZE).kernel_image(0.0, 0.0)


def _width(kernel: np.ndarray) -> float:
    """Mean of the second moments (sigma^2 of a round Gaussian), pixels^2."""
    h = kernel.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1].astype(float)
    s = kernel.sum()
    return float(((xx**2 + yy**2) * kernel).sum() / s / 2.0)


def _square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


@pytest.fixture
def two_detectors():
    """Detector A on x in [0, 60), B on x in [40, 100): they overlap on [40, 60)."""
    kernels = np.stack([np.broadcast_to(_kernel(s), (2, 2, SIZE, SIZE)) for s in (1.5, 3.0)])
    xs = [[10.0, 50.0], [50.0, 90.0]]
    ys = [[10.0, 40.0], [10.0, 40.0]]
    polys = [_square(-0.5, -0.5, 59.5, 49.5), _square(39.5, -0.5, 99.5, 49.5)]
    return CoaddPsf(kernels, xs, ys, [1.0, 3.0], polys)


def test_each_position_gets_the_psf_of_the_inputs_covering_it(two_detectors):
    psf = two_detectors
    assert psf.inputs_at(20.0, 25.0).tolist() == [0]
    assert psf.inputs_at(80.0, 25.0).tolist() == [1]
    assert psf.inputs_at(50.0, 25.0).tolist() == [0, 1]
    np.testing.assert_allclose(psf.kernel_image(20.0, 25.0), _kernel(1.5), atol=1e-6)
    np.testing.assert_allclose(psf.kernel_image(80.0, 25.0), _kernel(3.0), atol=1e-6)
    # In the overlap: the 1:3 weighted mean, whose second moment is the weighted mean one.
    mixed = psf.kernel_image(50.0, 25.0)
    assert mixed.sum() == pytest.approx(1.0)
    expected = (1.0 * _width(_kernel(1.5)) + 3.0 * _width(_kernel(3.0))) / 4.0
    assert _width(mixed) == pytest.approx(expected, rel=1e-4)


def test_outside_every_polygon_the_nearest_input_is_used(two_detectors):
    psf = two_detectors
    assert psf.inputs_at(-10.0, 25.0).tolist() == [0]
    assert psf.inputs_at(130.0, 25.0).tolist() == [1]
    np.testing.assert_allclose(psf.kernel_image(130.0, 25.0), _kernel(3.0), atol=1e-6)


def test_points_in_polygon_handles_concave_outlines():
    # An L shape: the notch at the top right is outside.
    vx = np.array([0.0, 4.0, 4.0, 2.0, 2.0, 0.0])
    vy = np.array([0.0, 0.0, 2.0, 2.0, 4.0, 4.0])
    got = points_in_polygon([1.0, 3.0, 3.0, 1.0, 5.0], [1.0, 1.0, 3.0, 3.0, 1.0], vx, vy)
    assert got.tolist() == [True, True, False, True, False]


def test_fits_round_trip_alone_and_in_an_exposure(two_detectors, tmp_path):
    psf = two_detectors
    again = psf_from_hdu(fits.BinTableHDU(psf.to_hdu().data, psf.to_hdu().header))
    assert isinstance(again, CoaddPsf) and again.n_components == 2
    for x, y in [(20.0, 25.0), (50.0, 25.0), (80.0, 3.0)]:
        np.testing.assert_allclose(again.kernel_image(x, y), psf.kernel_image(x, y), atol=1e-7)
    exp = Exposure(np.zeros((50, 100), np.float32), psf=psf)
    path = tmp_path / "coadd.fits"
    write_exposure(exp, path)
    read = read_exposure(path)
    assert isinstance(read.psf, CoaddPsf)
    np.testing.assert_allclose(read.psf.kernel_image(50.0, 25.0), psf.kernel_image(50.0, 25.0),
                               atol=1e-7)
    # The store reads it without the processing package (store never imports processing).
    code = ("import sys; from store.formats.fits import read_exposure; "
            f"p = read_exposure({str(path)!r}).psf; "
            "assert 'processing' not in sys.modules; print(type(p).__name__, p.n_components)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["CoaddPsf", "2"]


def test_combining_warps_multiplies_their_weights(two_detectors):
    other = CoaddPsf(np.broadcast_to(_kernel(2.0), (1, 2, 2, SIZE, SIZE)), [[10.0, 90.0]],
                     [[10.0, 40.0]], [1.0], [_square(-0.5, -0.5, 99.5, 49.5)])
    coadd = combine_coadd_psfs([two_detectors, other], [2.0, 4.0], Box(0, 0, 100, 50), n_grid=2)
    assert coadd.n_components == 3
    np.testing.assert_allclose(coadd.weights, [2.0, 6.0, 4.0])
    # At x = 20 the inputs are detector A (weight 2) and the other warp (weight 4).
    expected = (2.0 * _width(_kernel(1.5)) + 4.0 * _width(_kernel(2.0))) / 6.0
    assert _width(coadd.kernel_image(20.0, 25.0)) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="finite and > 0"):
        combine_coadd_psfs([two_detectors], [0.0], Box(0, 0, 100, 50))


def test_bad_construction_is_refused():
    k = np.broadcast_to(_kernel(1.5), (1, 2, 2, SIZE, SIZE))
    square = _square(0, 0, 10, 10)
    with pytest.raises(ValueError, match="positive weights"):
        CoaddPsf(k, [[0.0, 10.0]], [[0.0, 10.0]], [-1.0], [square])
    with pytest.raises(ValueError, match="polygons"):
        CoaddPsf(k, [[0.0, 10.0]], [[0.0, 10.0]], [1.0], [square, square])
    with pytest.raises(ValueError, match="k odd"):
        CoaddPsf(np.zeros((1, 2, 2, 4, 4)), [[0.0, 10.0]], [[0.0, 10.0]], [1.0], [square])
