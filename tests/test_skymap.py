"""Tests of processing.skymap: ring geometry, tract coverage, patches and cells."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from processing.skymap import (
    DiscreteSkyMap,
    RingsSkyMap,
    SkyMapGeometry,
    sky_map_from_config,
)
from store.geom import Box
from store.sphgeom import angular_separation


@pytest.fixture(scope="module")
def rings():
    return RingsSkyMap(num_rings=120)


def expected_ring_sizes(num_rings):
    h = math.pi / (num_rings + 1)
    sizes = []
    for i in range(num_rings):
        lo, hi = h * (i + 0.5) - math.pi / 2, h * (i + 1.5) - math.pi / 2
        d = 0.0 if lo < 0 < hi else min(abs(lo), abs(hi))
        sizes.append(int(2 * math.pi * math.cos(d) / h) + 1)
    return sizes


def test_ring_and_tract_counts_follow_the_formulas(rings):
    sizes = expected_ring_sizes(120)
    assert rings.ring_sizes.tolist() == sizes
    assert len(rings) == sum(sizes) + 2 == 18938  # lsst_cells_v1
    assert sizes == sizes[::-1]  # north-south symmetric
    assert sizes[0] == 10 and max(sizes) == 243
    # An odd ring count puts a ring edge on the equator; an even one centres a ring on it.
    assert RingsSkyMap(num_rings=3).ring_sizes.tolist() == expected_ring_sizes(3)


def test_tract_centres_and_ids(rings):
    h = 180.0 / 121
    assert (rings[0].ra, rings[0].dec) == (0.0, -90.0)
    assert rings[len(rings) - 1].dec == 90.0
    first_of_ring = 1 + sum(rings.ring_sizes[:30])
    for k in (0, 7):
        t = rings[int(first_of_ring) + k]
        assert t.dec == pytest.approx(-90.0 + h * 31)
        assert t.ra == pytest.approx(360.0 * k / rings.ring_sizes[30])
        assert rings.ring_of(t.id) == (30, k)
    shifted = RingsSkyMap(num_rings=120, ra_start=10.0)
    assert shifted[int(first_of_ring)].ra == pytest.approx(10.0)
    # Every tract centre is found in its own tract (vectorised over all 18938).
    ra, dec = rings._centers()
    np.testing.assert_array_equal(rings.find_tract(ra, dec), np.arange(len(rings)))


def sphere_sample(n, seed):
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    h = 180.0 / 121
    special_dec = np.r_[-90.0, 90.0, -89.9, 89.9, 0.0, 0.0, -90 + 0.5 * h, 90 - 0.5 * h,
                        -90 + 1.5 * h + 1e-9, 45.0, -45.0]
    special_ra = np.r_[0.0, 0.0, 359.999999, 0.0, 0.0, 359.9999999, 180.0, 180.0, 0.0, 0.0,
                       359.99999]
    return np.r_[ra, special_ra], np.r_[dec, special_dec]


@pytest.mark.parametrize("coarse", [False, True])
def test_every_point_lies_in_its_tract_inner_region_and_pixel_box(rings, coarse):
    # The coarse map (30 rings, small patches) needs the polar-wedge safeguard.
    if coarse:
        rings = RingsSkyMap(num_rings=30, patch_inner=1500)
    ra, dec = sphere_sample(800, seed=1)
    tracts, patches = rings.find_tract_and_patch(ra, dec)
    margin = rings.geometry.tract_overlap * 3600 / rings.geometry.pixel_scale - 2  # pixels
    for t in np.unique(tracts):
        sel = tracts == t
        tract = rings[int(t)]
        assert tract.inner_region.contains(ra[sel], dec[sel]).all()
        x, y = tract.sky_to_pixel(ra[sel], dec[sel])
        assert tract.bbox.grow(-int(margin)).contains(x, y).all()
        assert (patches[sel] >= 0).all()
        for pid, xi, yi in zip(patches[sel], x, y, strict=True):
            assert tract.patch(int(pid)).inner_bbox.contains(xi, yi)


def test_tract_boxes_match_lsst_cells_v1(rings):
    # 10 x 10 patches and CRPIX (1-based) 15000 for every ring and both caps.
    layouts = {rings._ring_layout(r) for r in range(-1, 121)}
    assert layouts == {((10, 10), (14999, 14999))}
    assert tuple(rings[777].wcs.wcs.crpix) == (15000.0, 15000.0)


def test_polar_ring_corners_are_covered(rings):
    # The corners of ring 0's inner wedges are where lsst/skymap's square falls short.
    tract = rings[1]
    box = tract.inner_region
    ra = np.array([box.ra_min, box.ra_max, box.ra_min, box.ra_max]) % 360
    dec = np.array([box.dec_min, box.dec_min, box.dec_max, box.dec_max])
    x, y = tract.sky_to_pixel(ra, dec)
    assert tract.bbox.contains(x, y).all()


def test_tract_wcs_orientation_and_scale(rings):
    t = rings[9000]
    cx, cy = t.sky_to_pixel(t.ra, t.dec)
    ra1, dec1 = t.pixel_to_sky(cx, cy + 100)
    ra2, _ = t.pixel_to_sky(cx + 100, cy)
    assert dec1 > t.dec and ra2 < t.ra  # north up, east left
    assert angular_separation(t.ra, t.dec, ra1, dec1) * 3600 == pytest.approx(20.0, rel=1e-6)
    # Centred: the centre pixel sits in the middle of the box within a patch.
    assert abs(cx - t.bbox.width / 2) < 3000 and abs(cy - t.bbox.height / 2) < 3000
    assert t.vertices.shape == (4, 2)
    assert t.polygon.contains(t.ra, t.dec)


def test_patches_tile_the_tract(rings):
    tract = rings[9000]
    patches = list(tract.patches())
    nx, ny = tract.num_patches
    assert len(patches) == nx * ny == 100
    covered = np.zeros((ny, nx), int)
    for p in patches:
        assert p.id == nx * p.index[1] + p.index[0]
        assert p.inner_bbox == Box(3000 * p.index[0], 3000 * p.index[1], 3000, 3000)
        assert p.outer_bbox == p.inner_bbox.grow(200)  # not clipped to the tract
        covered[p.index[1], p.index[0]] += 1
    assert (covered == 1).all()
    assert sum(p.inner_bbox.area for p in patches) == tract.bbox.area
    assert patches[0].outer_bbox.x0 == -200
    assert tract.patch(37).index == (7, 3)
    with pytest.raises(IndexError, match=r"patch id must be in \[0, 100\), got 100"):
        tract.patch(100)


def test_patch_sky_polygons(rings):
    patch = rings[9000].patch(4, 5)
    corners = patch.inner_bbox.corners()
    ra, dec = rings[9000].pixel_to_sky(corners[:, 0], corners[:, 1])
    # Same vertices (the polygon may reverse the winding).
    np.testing.assert_allclose(np.sort(patch.inner_polygon.to_array()[:, 1]), np.sort(dec))
    np.testing.assert_allclose(np.sort(patch.inner_polygon.to_array()[:, 0]), np.sort(ra))
    cx, cy = patch.inner_bbox.center
    assert patch.inner_polygon.contains(*rings[9000].pixel_to_sky(cx, cy))
    assert patch.outer_polygon.contains(ra, dec).all()
    # 3000 px at 0.2" = 10 arcmin sides.
    side = angular_separation(ra[0], dec[0], ra[1], dec[1]) * 60
    assert side == pytest.approx(10.0, rel=1e-3)
    record = patch.dimension_record()
    assert record["patch"] == patch.id and record["width"] == 3400 and record["inner_x0"] == 12000


def test_cell_geometry(rings):
    patch = rings[9000].patch(2, 3)
    assert patch.num_cells == (22, 22)
    cells = list(patch.cells())
    assert len(cells) == 484
    c00 = patch.cell(0, 0)
    assert c00.inner_bbox == Box(patch.inner_bbox.x0 - 150, patch.inner_bbox.y0 - 150, 150, 150)
    assert c00.outer_bbox == Box(patch.outer_bbox.x0, patch.outer_bbox.y0, 250, 250)
    c = patch.cell(5, 7)
    assert c.id == 22 * 7 + 5 and patch.cell(c.id) == c
    assert c.inner_bbox.x0 == patch.inner_bbox.x0 + 4 * 150
    assert c.inner_bbox.y0 == patch.inner_bbox.y0 + 6 * 150
    # Outer boxes: 250 px, neighbours overlap by 100 px, all together span the 3400 px outer patch.
    right = patch.cell(6, 7)
    assert c.outer_bbox.intersection(right.outer_bbox).width == 100
    assert c.outer_bbox.intersection(patch.cell(5, 8).outer_bbox).height == 100
    xs0 = min(cell.outer_bbox.x0 for cell in cells)
    xs1 = max(cell.outer_bbox.x1 for cell in cells)
    assert (xs0, xs1 - xs0) == (patch.outer_bbox.x0, 3400)
    # Inner boxes tile the patch outer box eroded by the cell border (3300 px).
    assert sum(cell.inner_bbox.area for cell in cells) == 3300**2
    assert patch.cell(21, 21).inner_bbox.x1 == patch.outer_bbox.grow(-50).x1
    with pytest.raises(IndexError, match=r"within 22 x 22, got \(22, 0\)"):
        patch.cell(22, 0)


def test_find_tract_patch_list_for_points_and_polygons(rings):
    tract = rings[9000]
    patch = tract.patch(4, 4)
    corners = patch.inner_bbox.grow(-100).corners()
    ra, dec = tract.pixel_to_sky(corners[:, 0], corners[:, 1])
    found = rings.find_tract_patch_list(ra, dec)
    ids = {(t.id, p.id) for t, ps in found for p in ps}
    assert (9000, patch.id) in ids
    assert {pid for tid, pid in ids if tid == 9000} == {patch.id}
    # A polygon around a patch corner touches four patches.
    x0, y0 = patch.inner_bbox.x1 - 0.5, patch.inner_bbox.y1 - 0.5
    ra, dec = tract.pixel_to_sky(np.array([x0 - 50, x0 + 50, x0 + 50, x0 - 50]),
                                 np.array([y0 - 50, y0 - 50, y0 + 50, y0 + 50]))
    found = dict((t.id, sorted(p.id for p in ps)) for t, ps in rings.find_tract_patch_list(ra, dec))
    assert found[9000] == sorted([44, 45, 54, 55])
    # A region straddling RA = 0 on the equator overlaps tracts on both sides.
    found = rings.find_tract_patch_list([359.5, 0.5, 0.5, 359.5], [-0.2, -0.2, 0.2, 0.2])
    tids = {t.id for t, _ in found}
    assert set(rings.find_tract([359.5, 0.5], [0.0, 0.0]).tolist()) <= tids
    assert found == sorted(found, key=lambda item: item[0].id)
    # Nothing of a far-away tract is listed, and the empty input is an empty list.
    assert all(angular_separation(t.ra, t.dec, 0.0, 0.0) < 5 for t, _ in found)
    assert rings.find_tract_patch_list([], []) == []
    with pytest.raises(ValueError, match="region radius must be < 60 deg"):
        rings.find_tract_patch_list([0, 180.0], [0, 10.0])


def test_config_round_trip(rings):
    text = json.dumps(rings.config)
    again = sky_map_from_config(text)
    assert again == rings and isinstance(again, RingsSkyMap)
    assert again[1234].wcs.to_header() == rings[1234].wcs.to_header()
    discrete = DiscreteSkyMap([(150.0, 2.0), (10.0, -30.0)], [0.5, 1.0], pixel_scale=0.25)
    back = DiscreteSkyMap.from_config(json.loads(json.dumps(discrete.config)))
    assert back == discrete and back.geometry.pixel_scale == 0.25
    assert back != rings
    record = rings.dimension_record("lsst_cells_v1")
    assert record["n_tracts"] == 18938
    assert sky_map_from_config(record["config"]) == rings
    tract_record = rings[5].dimension_record()
    assert tract_record["tract"] == 5 and len(tract_record["region"]) == 4
    with pytest.raises(ValueError, match="unknown sky map type 'hexagons'"):
        sky_map_from_config({"type": "hexagons"})


def test_discrete_sky_map():
    sm = DiscreteSkyMap([(150.0, 2.0), (150.0, 3.5)], [0.5, 0.5])
    assert len(sm) == 2
    np.testing.assert_array_equal(sm.find_tract([150.0, 150.1, 150.0], [2.0, 3.0, 2.7]), [0, 1, 0])
    t = sm[0]
    r_pix = math.degrees(math.tan(math.radians(0.5 + 1 / 60))) * 3600 / 0.2
    assert t.num_patches == (math.ceil((2 * r_pix + 1) / 3000),) * 2
    # The whole cap of radius 0.5 deg fits in the tract box.
    b = np.radians(np.arange(0, 360, 10))
    ra = 150.0 + 0.5 * np.sin(b) / np.cos(np.radians(2.0))
    dec = 2.0 + 0.5 * np.cos(b)
    assert t.contains(ra, dec).all()
    assert t.inner_region.contains(150.0, 2.4) and not t.inner_region.contains(150.0, 2.6)
    found = sm.find_tract_patch_list([150.0], [2.0])
    assert [tr.id for tr, _ in found] == [0] and len(found[0][1]) == 1


def test_geometry_validation():
    with pytest.raises(ValueError, match="must be a positive multiple of cell_inner"):
        SkyMapGeometry(patch_inner=3001)
    with pytest.raises(ValueError, match="projection must be zenithal"):
        SkyMapGeometry(projection="CAR")
    with pytest.raises(ValueError, match="need one radius per centre"):
        DiscreteSkyMap([(0.0, 0.0)], [1.0, 2.0])
    with pytest.raises(ValueError, match="num_rings must be >= 1, got 0"):
        RingsSkyMap(num_rings=0)
    assert SkyMapGeometry().cells_per_patch == 22
