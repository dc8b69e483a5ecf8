"""AssembleCellCoaddTask on synthetic warps: coverage, cell PSFs, photometry, fallback, bad inputs.

The scene (``tests/_coadd_scenes.py``): a 440-pixel patch with 8 x 8 cells of
50 + 2 x 20 pixels, seen by visits of 2 x 2 mosaics of 260-pixel detectors
(12-pixel gaps, dithers, rotations up to 30 deg), each visit with its own
elliptical Gaussian PSF, noise variance ``(10 (1 + v/10))^2`` nJy^2 and a BAD
column with garbage values per detector.  The truth: PSF moments (Gaussian
covariances mapped through the WCS Jacobians), star fluxes, detector boxes.
"""

from __future__ import annotations

import dataclasses
import types
import warnings

import numpy as np
import pytest

from processing.algorithms.warp import local_jacobian, transform_pixels
from processing.cell_coadds import MultipleCellCoadd
from processing.pipeline import Pipeline, PipelineStep, run_pipeline
from processing.skymap.register import register_skymap
from processing.tasks.assemble_cell_coadd import AssembleCellCoaddConfig, AssembleCellCoaddTask
from processing.tasks.make_warp import MakeWarpConfig, MakeWarpTask
from processing.visit_summary import VisitSummaryCatalog
from store.errors import DrpError, NoWorkFound
from store.geom import Box
from store.masks import bits
from store.psf import GridPsf

from ._coadd_scenes import isolated, make_scene

INEXACT = bits("INEXACT_PSF")


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_visits=5, seed=7, n_cosmics=4)


@pytest.fixture(scope="module")
def warps(scene):
    task = MakeWarpTask()
    return {("Cam", v): task.run(exps, scene.summaries[v], tract_wcs=scene.tract.wcs,
                                 patch_bbox=scene.patch.outer_bbox)["warp"]
            for v, exps in scene.exposures.items()}


def assemble(scene, warps, summaries="scene", **config):
    summaries = scene.summaries if summaries == "scene" else summaries
    return AssembleCellCoaddTask(**config).run(warps, sky_info=scene.patch,
                                               visit_summaries=summaries, band="r",
                                               skymap="test")


@pytest.fixture(scope="module")
def result(scene, warps):
    return assemble(scene, warps)


def _inner_perimeter(box: Box):
    """Pixel centres on the border of a box."""
    xs = np.arange(box.x0, box.x1, dtype=float)
    ys = np.arange(box.y0, box.y1, dtype=float)
    x = np.concatenate([xs, xs, np.full(ys.size, box.x0), np.full(ys.size, box.x1 - 1)])
    y = np.concatenate([np.full(xs.size, box.y0), np.full(xs.size, box.y1 - 1), ys, ys])
    return x, y


def _covers(det_wcs, det_box: Box, tract_wcs, box: Box) -> tuple[bool, bool]:
    """(every, some) pixel centre of ``box`` maps into the detector's valid region (Lanczos-3)."""
    x, y = _inner_perimeter(box)
    xs, ys = transform_pixels(det_wcs, tract_wcs, x, y)
    inside = ((xs >= det_box.x0 + 2) & (xs < det_box.x1 - 3)
              & (ys >= det_box.y0 + 2) & (ys < det_box.y1 - 3))
    return bool(inside.all()), bool(inside.any())


def _moments(kernel):
    k = kernel / kernel.sum()
    h = k.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1].astype(float)
    mx, my = (k * xx).sum(), (k * yy).sum()
    ixy = (k * (xx - mx) * (yy - my)).sum()
    return np.array([[(k * (xx - mx) ** 2).sum(), ixy], [ixy, (k * (yy - my) ** 2).sum()]])


# ------------------------------------------------------------------------------- coverage


def test_every_input_covers_its_whole_inner_cell_and_every_full_cover_is_used(scene, result):
    coadd = result.coadd
    tw = scene.tract.wcs
    cells = list(coadd)
    perimeters = [_inner_perimeter(c.inner_bbox) for c in cells]
    x = np.concatenate([p[0] for p in perimeters])
    y = np.concatenate([p[1] for p in perimeters])
    n_per = perimeters[0][0].size
    n_partial = 0
    for v, cat in scene.summaries.items():
        for d in cat.detectors():
            box = cat.bbox(d)
            xs, ys = transform_pixels(cat.wcs(d), tw, x, y)
            inside = ((xs >= box.x0 + 2) & (xs < box.x1 - 3) & (ys >= box.y0 + 2)
                      & (ys < box.y1 - 3)).reshape(len(cells), n_per)
            for cell, flags in zip(cells, inside, strict=True):
                used = any(r["visit"] == v and r["detector"] == d
                           for r in cell.inputs.to_pylist())
                assert used == flags.all(), (cell.id, v, d)
                n_partial += flags.any() and not flags.all()
    assert all((c.inputs.column("overlap_fraction").to_numpy() == 1.0).all() for c in cells)
    assert n_partial > 20  # the scene does have detectors partly covering cells
    assert len(coadd) == 64 - int((result.index.column("n_inputs").to_numpy() == 0).sum())


def test_a_warp_that_only_partly_covers_a_cell_is_left_out(scene, warps):
    """Crop detector 0 of visit 0 to its left half: the cells it now covers partly lose it."""
    exps = dict(scene.exposures[0])
    cut = Box(0, 0, 130, 260)
    exps[0] = exps[0].cutout(cut)
    cat = scene.summaries[0]
    entries = [cat.entry(d) for d in cat.detectors()]
    entries[0] = dataclasses.replace(entries[0], bbox=cut)
    summary = VisitSummaryCatalog.from_detectors(entries)
    warp = MakeWarpTask().run(exps, summary, tract_wcs=scene.tract.wcs,
                              patch_bbox=scene.patch.outer_bbox)["warp"]
    new_warps = dict(warps)
    new_warps[("Cam", 0)] = warp
    summaries = dict(scene.summaries)
    summaries[0] = summary
    before = assemble(scene, warps).coadd
    after = assemble(scene, new_warps, summaries).coadd
    tw = scene.tract.wcs

    def with_input(coadd):
        return {c.id for c in coadd if any(r["visit"] == 0 and r["detector"] == 0
                                          for r in c.inputs.to_pylist())}

    lost = with_input(before) - with_input(after)
    partly = []
    for cell_id in lost:
        box = before[cell_id].inner_bbox
        every, some = _covers(summary.wcs(0), cut, tw, box)
        assert not every
        if some:  # the cropped detector still has data in this cell, but not everywhere
            rows, cols = box.slices_in(warp.bbox)
            partly.append(np.isfinite(warp.image[rows, cols]).mean())
    assert len(partly) >= 2 and 0.3 < max(partly) < 1
    for cell_id in with_input(after):
        assert _covers(summary.wcs(0), cut, tw, after[cell_id].inner_bbox)[0]


# ---------------------------------------------------------------------------------- PSFs


def test_cell_psf_moments_are_the_weighted_mean_of_the_input_psfs(scene, result):
    coadd, g, tw = result.coadd, result.coadd.grid, scene.tract.wcs
    worst = 0.0
    for cell in coadd:
        cx, cy = g.center_pixel(*cell.index)
        num, den = np.zeros((2, 2)), 0.0
        for r in cell.inputs.to_pylist():
            a = np.linalg.inv(local_jacobian(scene.summaries[r["visit"]].wcs(r["detector"]), tw,
                                             float(cx), float(cy)))
            ixx, iyy, ixy = scene.psfs[r["visit"]].moments()
            num += r["weight"] * a @ np.array([[ixx, ixy], [ixy, iyy]]) @ a.T
            den += r["weight"]
        expected = num / den
        got = _moments(cell.psf)
        scale = np.array([[expected[0, 0], np.trace(expected) / 2],
                          [np.trace(expected) / 2, expected[1, 1]]])
        worst = max(worst, float(np.abs((got - expected) / scale).max()))
        assert abs(cell.psf.sum() - 1) < 0.005
        assert cell.psf.shape == (35, 35)
    assert worst < 0.005, worst  # measured 0.1%


def test_star_fluxes_measured_with_the_cell_psf(scene, result):
    coadd, g = result.coadd, result.coadd.grid
    x, y = scene.tract.sky_to_pixel(scene.star_ra, scene.star_dec)
    iso = isolated(x, y, scene.star_flux)
    clean, every = [], []
    for xi, yi, f, ok in zip(x, y, scene.star_flux, iso, strict=True):
        ix = int((np.floor(xi + 0.5) - g.x0) // g.size)
        iy = int((np.floor(yi + 0.5) - g.y0) // g.size)
        if not ok or f < 2e4 or not (0 <= ix < g.nx and 0 <= iy < g.ny):
            continue
        cell = coadd[iy * g.nx + ix]
        cx, cy = g.center_pixel(ix, iy)
        stamp, x0, y0 = GridPsf(cell.psf[None, None], [float(cx)], [float(cy)],
                                mode="nearest").image(float(xi), float(yi))
        rows, cols = Box(x0, y0, *stamp.shape[::-1]).slices_in(cell.outer_bbox)
        p = stamp / stamp.sum()
        flux = float((p * cell.image[rows, cols]).sum() / (p * p).sum())
        every.append(flux / f)
        if not (cell.mask[rows, cols] & INEXACT).any():
            clean.append(flux / f)
    assert len(clean) >= 5 and len(every) >= 15
    assert np.abs(np.array(clean) - 1).max() < 0.01, clean  # PSF exact: within noise
    assert abs(np.median(every) - 1) < 0.005


def test_stitched_image_is_the_inner_cells(result):
    coadd, stitched = result.coadd, result.stitched
    assert stitched.bbox == coadd.grid.bbox and stitched.units == "nJy"
    for cell in coadd:
        rows, cols = cell.inner_bbox.slices_in(stitched.bbox)
        for plane in ("image", "mask", "variance"):
            assert np.array_equal(getattr(stitched, plane)[rows, cols], cell.inner(plane))
        cx, cy = coadd.grid.center_pixel(*cell.index)
        assert np.allclose(stitched.psf.kernel_image(cx + 20.0, cy - 20.0),
                           cell.psf / cell.psf.sum())
    for row in result.index.filter(result.index["n_inputs"].to_numpy() == 0).to_pylist():
        box = coadd.grid.inner_box(row["cell_x"], row["cell_y"])
        rows, cols = box.slices_in(stitched.bbox)
        assert (stitched.mask[rows, cols] & bits("NO_DATA")).all()
        assert np.isinf(stitched.variance[rows, cols]).all()


# ----------------------------------------------------------------------- pixels and weights


def test_bad_pixels_are_interpolated_not_left_out(scene, result):
    """The BAD columns hold garbage (1e4 nJy): interpolated pixels show sky, flagged INTRP."""
    x, y = scene.tract.sky_to_pixel(scene.star_ra, scene.star_dec)
    pulls = []
    for cell in result.coadd:
        flagged = (cell.mask & bits("INTRP")) != 0
        assert not (cell.mask & bits("REJECTED")).any()
        yy, xx = np.nonzero(flagged)
        if yy.size == 0:
            continue
        px, py = xx + cell.outer_bbox.x0, yy + cell.outer_bbox.y0
        far = np.min(np.hypot(px[:, None] - x[None], py[:, None] - y[None]), axis=1) > 15
        pulls.append(cell.image[yy[far], xx[far]] / np.sqrt(cell.variance[yy[far], xx[far]]))
        assert np.all(cell.mask[yy, xx] & INEXACT)
    pulls = np.concatenate(pulls)
    # Sky noise (the scene's unmasked cosmic rays give a few outliers); garbage leaking
    # through (1e4 nJy x a weight fraction >= 0.1) would be > 100 sigma.
    assert pulls.size > 500
    assert abs(np.median(pulls)) < 0.2 and np.mean(np.abs(pulls) > 5) < 0.01


def test_per_pixel_rejection_mode_flags_rejected(scene, warps, result):
    def count(coadd, plane):
        return sum(int(((c.mask & bits(plane)) != 0).sum()) for c in coadd)

    coadd = assemble(scene, warps, interpolate_bad_pixels=False).coadd
    # INTRP only where no input was left: the NO_DATA pixels filled afterwards (A.8).
    assert count(coadd, "REJECTED") > 10000
    assert count(coadd, "INTRP") == sum(int(((c.mask & bits("INTRP")) != 0)[
        (c.mask & bits("NO_DATA")) != 0].sum()) for c in coadd)
    assert count(result.coadd, "INTRP") > count(coadd, "REJECTED")


def test_weights_are_inverse_variance_per_detector(scene, result, warps):
    inputs = result.coadd.inputs.to_pylist()
    for r in inputs:
        sig = scene.sky_sigma[r["visit"]]
        assert r["weight"] == pytest.approx(1 / sig ** 2, rel=1e-9)
    cells = result.coadd.cells
    for cell_id, w in zip(cells["cell_id"].to_pylist(), cells["weight_sum"].to_pylist(),
                          strict=True):
        assert w == pytest.approx(sum(r["weight"] for r in inputs if r["cell_id"] == cell_id))
    # Without a summary: one input per warp, weighted by 1 / MEANVAR of the warp.
    plain = assemble(scene, warps, summaries=None)
    for r in plain.coadd.inputs.to_pylist():
        assert r["detector"] == -1
        assert r["weight"] == pytest.approx(1 / warps[("Cam", r["visit"])].metadata["MEANVAR"])
    got = _moments(plain.coadd[27].psf)
    assert np.allclose(got, _moments(result.coadd[27].psf), rtol=0.02, atol=0.02)


# ------------------------------------------------------------------------------- fallback


def _mask_cell(warp, box: Box, fraction: float):
    """A copy of ``warp`` with BAD on the first ``fraction`` of the rows of ``box``."""
    out = warp.copy()
    rows, cols = box.slices_in(out.bbox)
    n = round(fraction * box.height)
    out.mask[rows.start:rows.start + n, cols] |= np.int32(bits("BAD"))
    return out


def test_fallback_rule(scene, warps, result):
    coadd = result.coadd
    counts = {c.id: c.inputs.num_rows for c in coadd}
    x_cell, y_cell, z_cell = (sorted((c for c in counts if counts[c] >= 3),
                                     key=lambda c: -counts[c])[i] for i in (0, 3, 6))
    new = dict(warps)
    # Cell X: one input 60% masked -> dropped (the cell has good inputs).
    visit_x = coadd[x_cell].inputs["visit"].to_pylist()[0]
    new[("Cam", visit_x)] = _mask_cell(new[("Cam", visit_x)], coadd[x_cell].inner_bbox, 0.6)
    # Cell Y: every input 60% masked -> all kept as fallback inputs.
    # Cell Z: every input fully masked -> a NO_DATA cell, with a warning.
    for cell_id, frac in ((y_cell, 0.6), (z_cell, 1.0)):
        for v in coadd[cell_id].inputs["visit"].to_pylist():
            new[("Cam", v)] = _mask_cell(new[("Cam", v)], coadd[cell_id].inner_bbox, frac)
    with pytest.warns(UserWarning, match=f"cell {z_cell}: every inner pixel"):
        out = assemble(scene, new).coadd
    x_inputs = out[x_cell].inputs.to_pylist()
    assert visit_x not in {r["visit"] for r in x_inputs}
    assert len(x_inputs) == counts[x_cell] - 1 and not any(r["fallback"] for r in x_inputs)
    row = out.cells.to_pylist()[out.cell_ids().index(x_cell)]
    assert not row["is_fallback"]
    y_inputs = out[y_cell].inputs.to_pylist()
    assert len(y_inputs) == counts[y_cell] and all(r["fallback"] for r in y_inputs)
    assert all(0.2 < r["unmasked_fraction"] <= 0.4 for r in y_inputs)  # + its BAD columns
    assert out.cells.to_pylist()[out.cell_ids().index(y_cell)]["is_fallback"]
    y = out[y_cell]
    masked = y.inner("mask")[:30]  # the masked rows: left out, not interpolated
    assert (masked & bits("REJECTED")).all() and (masked & INEXACT).all()
    z = out[z_cell]
    assert (z.inner("mask") & bits("NO_DATA")).all() and np.isinf(z.inner("variance")).all()
    assert (z.inner("image") == 0).all()


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_have_clear_outcomes(scene, warps):
    task = AssembleCellCoaddTask()
    with pytest.raises(NoWorkFound, match="no input warps"):
        task.run({}, sky_info=scene.patch)
    legacy = types.SimpleNamespace(wcs=scene.tract.wcs, outer_bbox=scene.patch.outer_bbox)
    with pytest.raises(DrpError, match="has no cells"):
        task.run(warps, sky_info=legacy)
    adu = dict(warps)
    adu[("Cam", 2)] = dataclasses.replace(warps[("Cam", 2)], units="adu")
    with pytest.raises(DrpError, match=r"\('Cam', 2\) is in 'adu'; cell coadds need nJy"):
        task.run(adu, sky_info=scene.patch, visit_summaries=scene.summaries)
    elsewhere = scene.tract.patch(0, 0)
    with pytest.raises(NoWorkFound, match="no cell of patch 0 is fully covered"):
        task.run(warps, sky_info=elsewhere, visit_summaries=scene.summaries)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad_summary = {v: c.with_components(0, wcs=None) for v, c in scene.summaries.items()}
        out = task.run(warps, sky_info=scene.patch, visit_summaries=bad_summary)
    assert any("detectors skipped: 0 (no WCS)" in str(w.message) for w in caught)
    assert 0 not in set(out.coadd.inputs["detector"].to_pylist())
    for kwargs, match in (({"min_overlap_fraction": 1.5}, "min_overlap_fraction"),
                          ({"max_maskfrac": 1.0}, "max_maskfrac"),
                          ({"psf_size": 34}, "psf_size"),
                          ({"bad_mask_planes": ("NOPE",)}, "unknown mask plane")):
        with pytest.raises((ValueError, KeyError), match=match):
            AssembleCellCoaddConfig(**kwargs)


# -------------------------------------------------------------------- passes and storage


def test_several_passes_give_the_same_cells(scene, warps, result):
    small = assemble(scene, warps, memory_budget_mb=5.0)
    assert small.metadata["n_passes"] > 1 and result.metadata["n_passes"] == 1
    a, b = result.coadd, small.coadd
    assert a.cell_ids() == b.cell_ids()
    for plane in ("image", "mask", "variance", "maskfrac", "psf"):
        assert np.array_equal(getattr(a, plane), getattr(b, plane)), plane
    assert a.inputs.equals(b.inputs)


def test_bundle_round_trip(tmp_path, result):
    from store.formats.fits import read_bundle, write_bundle

    path = tmp_path / "cells.fits"
    with open(path, "wb") as f:
        write_bundle(result.coadd.to_bundle(), f)
    back = MultipleCellCoadd.from_bundle(read_bundle(path))
    a = result.coadd
    assert back.grid == a.grid and back.identifiers == a.identifiers
    for plane in ("image", "mask", "variance", "maskfrac"):
        assert np.array_equal(getattr(back, plane), getattr(a, plane))
    assert np.allclose(back.psf, a.psf, rtol=1e-6, atol=1e-9)
    assert back.inputs.column("visit").to_pylist() == a.inputs.column("visit").to_pylist()
    assert back.cells.column("psf_fwhm").to_pylist() == a.cells.column("psf_fwhm").to_pylist()
    assert np.allclose(back.wcs.all_pix2world([[10.0, 20.0]], 0), a.wcs.all_pix2world(
        [[10.0, 20.0]], 0), rtol=0, atol=1e-10)
    assert np.array_equal(back.stitch().image, result.stitched.image)


def test_index_table_has_one_row_per_cell(result):
    index = result.index
    assert index.num_rows == 64 and index["cell_id"].to_pylist() == list(range(64))
    populated = index.filter(index["n_inputs"].to_numpy() > 0)
    assert populated.num_rows == len(result.coadd)
    empty = index.filter(index["n_inputs"].to_numpy() == 0)
    assert empty.num_rows >= 1 and empty["psf_fwhm"].null_count == empty.num_rows  # SQL NULL
    fwhm = populated["psf_fwhm"].to_numpy()
    assert np.all((fwhm > 0.7) & (fwhm < 1.3))  # sigma 1.6-2.4 px at 0.2"/px
    depth = populated["depth"].to_numpy()
    assert np.all((depth > 24) & (depth < 28))
    assert set(index.column_names) >= {"skymap", "tract", "patch", "band", "cell_x", "cell_y",
                                       "ra", "dec"}


# ----------------------------------------------------------------------- with a repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory, scene):
    from scipy.spatial import ConvexHull

    from store import Repo

    repo = Repo.create(tmp_path_factory.mktemp("cells") / "repo")
    repo.insert_dimension_records("instrument", [{"instrument": "Cam", "pixel_scale": 0.2,
                                                  "n_detectors": 4}])
    repo.insert_dimension_records("band", [{"band": "r"}])
    repo.insert_dimension_records("physical_filter", [{"instrument": "Cam",
                                                       "physical_filter": "r_01", "band": "r"}])
    repo.insert_dimension_records("day_obs", [{"instrument": "Cam", "day_obs": 20260101}])
    repo.insert_dimension_records("detector", [
        {"instrument": "Cam", "detector": d, "name": f"S{d}", "x0": 0, "y0": 0, "width": 260,
         "height": 260} for d in range(4)])
    visits = []
    for v, exps in scene.exposures.items():
        corners = np.concatenate([np.column_stack(e.pixel_to_sky(*e.bbox.corners().T))
                                  for e in exps.values()])
        hull = corners[ConvexHull(corners).vertices]
        centre = corners.mean(axis=0)
        visits.append({"instrument": "Cam", "visit": v, "band": "r", "physical_filter": "r_01",
                       "day_obs": 20260101, "ra": float(centre[0]), "dec": float(centre[1]),
                       "region": hull})
    repo.insert_dimension_records("visit", visits)
    register_skymap(repo, "test", scene.skymap, tracts=[0])
    repo.register_dataset_type("visit_image", ("instrument", "visit", "detector"), "Exposure")
    repo.register_dataset_type("visit_summary", ("instrument", "visit"), "ArrowTable")
    repo.register_run("inputs")
    items = []
    for v, exps in scene.exposures.items():
        for d, e in exps.items():
            items.append((e, "visit_image", {"instrument": "Cam", "visit": v, "detector": d}))
        items.append((scene.summaries[v].to_table(), "visit_summary",
                      {"instrument": "Cam", "visit": v}))
    repo.put_many(items, run="inputs")
    return repo


def test_pipeline_writes_cells_and_the_coadd_cells_sql_table(repo, scene, result):
    pipeline = Pipeline("cells", (PipelineStep(MakeWarpTask, MakeWarpConfig()),
                                  PipelineStep(AssembleCellCoaddTask, AssembleCellCoaddConfig())))
    summary = run_pipeline(repo, pipeline, inputs=["inputs"], output="cells",
                           where="patch = 12", jobs=1, progress=False)
    assert summary.ok, summary.format()
    assert summary.counts["assemble_cell_coadd"]["succeeded"] == 1
    did = {"skymap": "test", "tract": 0, "patch": 12, "band": "r"}
    cells = MultipleCellCoadd.from_bundle(repo.get("deep_coadd_cell", did, collections="cells"))
    assert cells.cell_ids() == result.coadd.cell_ids()
    # The same cells; the inputs come in another order (float32 sums differ by rounding).
    np.testing.assert_allclose(cells.image, result.coadd.image, rtol=1e-4, atol=1e-2)
    stitched = repo.get("deep_coadd_cell_stitched", did, collections="cells")
    assert stitched.bbox == cells.grid.bbox and isinstance(stitched.psf, GridPsf)
    repo.set_default_collection("cells")
    rows = repo.sql("SELECT cell_x, cell_y, n_inputs, psf_fwhm, depth FROM CoaddCells "
                    "WHERE tract = 0 AND patch = 12 AND band = 'r' ORDER BY cell_id").to_pylist()
    assert len(rows) == 64
    assert sum(r["n_inputs"] > 0 for r in rows) == len(cells)
    assert all(r["psf_fwhm"] > 0 for r in rows if r["n_inputs"])
