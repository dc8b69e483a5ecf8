"""Simulator geometry: camera layout and defects, optical distortion, true and header WCS."""

from dataclasses import replace

import numpy as np
import pytest
from astropy.wcs import WCS

from sample_data import PRESETS, plan_survey
from sample_data.camera import build_camera
from sample_data.optics import (
    distort,
    field_to_sky,
    gnomonic,
    gnomonic_inverse,
    sky_to_field,
    undistort,
)
from sample_data.wcs import detector_wcs, wcs_to_header_string


@pytest.fixture(scope="module")
def comcam():
    return build_camera(PRESETS["comcam"].camera, np.random.default_rng(3))


def test_demo_and_comcam_layouts():
    demo = build_camera(PRESETS["demo"].camera, np.random.default_rng(0))
    assert len(demo.detectors) == 4
    assert {(d.width, d.height) for d in demo.detectors} == {(2048, 2048)}
    cam = build_camera(PRESETS["comcam"].camera, np.random.default_rng(0))
    assert len(cam.detectors) == 9
    assert {(d.width, d.height) for d in cam.detectors} == {(4072, 4000)}
    assert cam.config.pixel_scale == 0.2
    # Neighbouring detectors are separated by the configured gap (in pixels).
    d0, d1, d3 = cam.detectors[0], cam.detectors[1], cam.detectors[3]
    p = cam.config.pixel_size
    assert (d1.fp_x - d0.fp_x) / p == pytest.approx(4072 + 28)
    assert (d3.fp_y - d0.fp_y) / p == pytest.approx(4000 + 28)
    # The grid is centred on the optical axis.
    assert np.mean([d.fp_x for d in cam.detectors]) == pytest.approx(0.0, abs=1e-9)
    assert np.mean([d.fp_y for d in cam.detectors]) == pytest.approx(0.0, abs=1e-9)


def test_detector_electronics_and_defects(comcam):
    gains = np.array([d.gain for d in comcam.detectors])
    noise = np.array([d.read_noise for d in comcam.detectors])
    sat = np.array([d.saturation for d in comcam.detectors])
    assert np.all((gains >= 1.4) & (gains <= 1.7)) and np.ptp(gains) > 0
    assert np.all((noise >= 5) & (noise <= 9)) and np.ptp(noise) > 0
    assert np.all((sat > 50_000) & (sat < 80_000))
    det = comcam.detectors[4]
    mask = det.defect_mask()
    cols = det.bad_columns
    assert mask.sum() >= sum(int(c["y1"] - c["y0"]) for c in cols)
    for c in cols:
        assert mask[c["y0"]:c["y1"], c["x"]].all()
    assert mask[det.hot_pixels["y"], det.hot_pixels["x"]].all()
    # Defects spoil the pixel values they mask.
    img = np.full((det.height, det.width), 1000.0)
    det.apply_defects(img)
    assert np.all(img[mask] != 1000.0) and np.all(img[~mask] == 1000.0)


def test_pixel_focal_plane_round_trip(comcam):
    x, y = np.array([0.0, 2035.5, 4071.0]), np.array([0.0, 1999.5, 3999.0])
    fx, fy = comcam.pixel_to_focal_plane(5, x, y)
    bx, by = comcam.focal_plane_to_pixel(5, fx, fy)
    np.testing.assert_allclose(bx, x, atol=1e-9)
    np.testing.assert_allclose(by, y, atol=1e-9)
    det = comcam.detectors[5]
    assert fx[1] == pytest.approx(det.fp_x) and fy[1] == pytest.approx(det.fp_y)


def test_distortion_inverse_and_size(comcam):
    k = comcam.config.distortion
    rng = np.random.default_rng(1)
    fx, fy = rng.uniform(-62, 62, 1000), rng.uniform(-61, 61, 1000)
    tx, ty = distort(fx, fy, k)
    bx, by = undistort(tx, ty, k)
    np.testing.assert_allclose(bx, fx, atol=1e-12)
    np.testing.assert_allclose(by, fy, atol=1e-12)
    # A few pixels of distortion at the ComCam corner: real work for astrometry.
    r = comcam.corner_radius
    shift_px = k * r**3 / comcam.config.pixel_size
    assert 3.0 < shift_px < 10.0


def test_gnomonic_round_trip_and_orientation():
    ra, dec = np.array([53.0, 53.3, 52.8]), np.array([-28.1, -27.9, -28.4])
    xi, eta = gnomonic(ra, dec, 53.1, -28.1)
    r2, d2 = gnomonic_inverse(xi, eta, 53.1, -28.1)
    np.testing.assert_allclose(r2, ra, atol=1e-12)
    np.testing.assert_allclose(d2, dec, atol=1e-12)
    # theta = 0: focal-plane +y is North, +x is West (East to the left).
    ra_n, dec_n = field_to_sky(0.0, 10.0, 53.1, -28.1, 0.0, 20.0)
    ra_w, dec_w = field_to_sky(10.0, 0.0, 53.1, -28.1, 0.0, 20.0)
    assert dec_n > -28.1 and ra_n == pytest.approx(53.1)
    assert ra_w < 53.1 and dec_w == pytest.approx(-28.1, abs=1e-4)  # great-circle curvature
    # theta = 90: +y points East.
    ra_e, dec_e = field_to_sky(0.0, 10.0, 53.1, -28.1, 90.0, 20.0)
    assert ra_e > 53.1
    tx, ty = sky_to_field(ra_e, dec_e, 53.1, -28.1, 90.0, 20.0)
    assert tx == pytest.approx(0.0, abs=1e-6) and ty == pytest.approx(10.0, rel=1e-6)


def test_tan_sip_wcs_is_exact(comcam):
    ra0, dec0, theta = 53.1, -28.1, 33.0
    rng = np.random.default_rng(2)
    for det in (0, 4, 8):
        w = detector_wcs(comcam, det, ra0, dec0, theta)
        x, y = rng.uniform(0, 4071, 500), rng.uniform(0, 3999, 500)
        fx, fy = comcam.pixel_to_focal_plane(det, x, y)
        tx, ty = distort(fx, fy, comcam.config.distortion)
        ra, dec = field_to_sky(tx, ty, ra0, dec0, theta, comcam.plate_scale)
        wra, wdec = w.all_pix2world(x, y, 0)
        err_mas = np.hypot((wra - ra) * np.cos(np.radians(dec)), wdec - dec) * 3.6e6
        assert err_mas.max() < 1e-3
        # The fitted inverse SIP (AP, BP) undoes the forward one.
        foc = w.sip_pix2foc(np.column_stack([x, y]), 0)
        np.testing.assert_allclose(w.sip_foc2pix(foc, 0), np.column_stack([x, y]), atol=1e-5)
    # The header string round-trips through astropy with its SIP terms.
    hdr = wcs_to_header_string(w)
    assert "A_3_0" in hdr and "AP_ORDER" in hdr
    w2 = WCS(hdr)
    np.testing.assert_allclose(w2.all_pix2world(x, y, 0), w.all_pix2world(x, y, 0), atol=1e-10)


def test_header_wcs_is_off_like_a_pointing_model():
    config = replace(PRESETS["demo"], observing=replace(PRESETS["demo"].observing, n_visits=20))
    plan = plan_survey(config, seed=5)
    offsets, rotations = [], []
    for v in plan.visits:
        offsets.append(np.hypot((v.header_ra - v.ra) * np.cos(np.radians(v.dec)),
                                v.header_dec - v.dec) * 3600)
        rotations.append(abs(v.header_rotation - v.rotation))
    offsets, rotations = np.array(offsets), np.array(rotations)
    assert np.all((offsets > 0.6) & (offsets < 1.4))
    assert np.all((rotations >= 0.05) & (rotations <= 0.2))
    v = plan.visits[0]
    det = plan.camera.detectors[0]
    xc, yc = det.center
    true = plan.true_wcs(v, 0).all_pix2world([xc], [yc], 0)
    head = plan.header_wcs(v, 0).all_pix2world([xc], [yc], 0)
    sep = np.hypot((true[0] - head[0]) * np.cos(np.radians(true[1])), true[1] - head[1]) * 3600
    # All detectors of a visit share the error: the boresight offset plus the
    # rotation error times the ~1450 pixels from detector centre to the axis.
    assert 0.5 < sep[0] < 1.4 + 0.2 * np.pi / 180 * 1500 * 0.2 * 1.01
