"""Data-release export: Parquet/HATS catalogs, FITS + ObsCore, MANIFEST, import, verify."""

from __future__ import annotations

import json
import logging
import os
import warnings

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.wcs import WCS
from click.testing import CliRunner

from processing.cli import main
from store import Exposure, ReadOnlyError, Repo
from store.formats.parquet import with_units
from store.release import (
    ExportConfig,
    ImageSpec,
    ReleaseError,
    ReleaseExistsError,
    TableSpec,
    export_release,
    import_release,
    verify_release,
)
from store.release.hats_writer import hats_partitions

from .conftest import populate_dimensions

N_VISITS, N_DET, N_PER = 6, 4, 400
_CONFIG = ExportConfig(hats_max_rows=2_000, durable=False)


def _sky(v: int, d: int) -> tuple[float, float]:
    """Centre of detector d of visit v (detectors tile the 0.2 x 0.2 deg visit square)."""
    ra0 = 10.0 + 0.5 * v
    return ra0 + 0.05 + 0.1 * (d % 2), 0.05 + 0.1 * (d // 2)


def _wcs(ra: float, dec: float, n: int = 40) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]  # FITS 1-based: array centre
    w.wcs.cdelt = [-0.1 / n, 0.1 / n]
    return w


def _sources(rng, v: int, d: int) -> pa.Table:
    ra_c, dec_c = _sky(v, d)
    ra = ra_c + rng.uniform(-0.05, 0.05, N_PER)
    dec = dec_c + rng.uniform(-0.05, 0.05, N_PER)
    flux = rng.lognormal(8, 1, N_PER)
    table = pa.table({
        "sourceId": (v * 1_000_000 + d * 10_000 + np.arange(N_PER)).astype(np.int64),
        "coord_ra": ra, "coord_dec": dec, "psfFlux": flux, "psfFluxErr": np.sqrt(flux),
        "psfFlux_flag": rng.random(N_PER) < 0.05, "calib_psf_used": rng.random(N_PER) < 0.1,
    })
    return with_units(table, {"coord_ra": "deg", "coord_dec": "deg", "psfFlux": "nJy",
                              "psfFluxErr": "nJy"},
                      {"psfFlux": "PSF flux of the source"})


def _build_repo(path, seed: int = 3) -> Repo:
    """Sources, PSF stars, visit images and coadds in run 'run1', chained as DR1 (default)."""
    rng = np.random.default_rng(seed)
    repo = Repo.create(path)
    populate_dimensions(repo, n_visits=N_VISITS, n_detectors=N_DET)
    # Detector regions for detectors 0-2; detector 3 falls back to its FITS WCS.
    regions = []
    for v in range(N_VISITS):
        for d in range(N_DET - 1):
            ra, dec = _sky(v, d)
            regions.append({"instrument": "Cam", "visit": v, "detector": d, "region": np.array(
                [[ra - 0.05, dec - 0.05], [ra + 0.05, dec - 0.05], [ra + 0.05, dec + 0.05],
                 [ra - 0.05, dec + 0.05]])})
    repo.insert_dimension_records("visit_detector_region", regions)
    repo.insert_dimension_records("skymap", [{"skymap": "sm", "config": "{}", "n_tracts": 1}])
    square = np.array([[9.9, -0.1], [13.2, -0.1], [13.2, 0.3], [9.9, 0.3]])
    repo.insert_dimension_records("tract", [{"skymap": "sm", "tract": 0, "ra": 11.5, "dec": 0.1,
                                             "region": square}])
    repo.insert_dimension_records("patch", [
        {"skymap": "sm", "tract": 0, "patch": p, "patch_x": p, "patch_y": 0,
         "region": np.array([[10 + p, -0.1], [11 + p, -0.1], [11 + p, 0.3], [10 + p, 0.3]])}
        for p in range(3)])
    dims = ("instrument", "visit", "detector")
    repo.register_dataset_type("source", dims, "ArrowTable")
    repo.register_dataset_type("single_visit_star", dims, "ArrowTable")
    repo.register_dataset_type("visit_image", dims, "Exposure")
    repo.register_dataset_type("deep_coadd", ("skymap", "tract", "patch", "band"), "Exposure")
    repo.register_dataset_type("notes", ("instrument", "visit"), "StructuredData")
    repo.register_run("run1")
    items = []
    for v in range(N_VISITS):
        for d in range(N_DET):
            src = _sources(rng, v, d)
            did = {"instrument": "Cam", "visit": v, "detector": d}
            items.append((src, "source", did))
            items.append((src.filter(src.column("calib_psf_used")), "single_visit_star", did))
            img = rng.normal(0, 1, (40, 40)).astype(np.float32)
            items.append((Exposure(img, wcs=_wcs(*_sky(v, d))), "visit_image", did))
    for p in range(3):
        items.append((Exposure(rng.normal(0, 1, (40, 40)).astype(np.float32),
                               wcs=_wcs(10.5 + p, 0.1)), "deep_coadd",
                      {"skymap": "sm", "tract": 0, "patch": p, "band": "r"}))
    repo.put_many(items, run="run1", durable=False)
    repo.register_chain("DR1", ["run1"])
    repo.set_default_collection("DR1")
    return repo


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A repository and its release (built once: the export is the expensive part)."""
    base = tmp_path_factory.mktemp("release")
    repo = _build_repo(base / "repo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = export_release(repo, base / "DR1", collection="DR1", config=_CONFIG)
    return repo, summary, base / "DR1", [str(w.message) for w in caught]


def _sorted(table: pa.Table, key: str = "sourceId") -> pa.Table:
    return table.sort_by(key)


def test_layout_schema_manifest_and_notices(built):
    _repo, summary, out, caught = built
    names = [t.name for t in summary.tables]
    assert names[:2] == ["Source", "PsfStar"]
    # Missing tables are skipped with a notice, both as warnings and in the README.
    assert any("CoaddCells is not in the repository" in n for n in summary.notices)
    assert any("CoaddCells" in m for m in caught)
    assert "CoaddCells" in (out / "README.md").read_text()
    schema = {t["name"]: t for t in json.loads((out / "schema.json").read_text())["tables"]}
    for t in summary.tables:
        cols = pq.read_schema(out / t.path)
        described = schema[t.name]["columns"]
        assert [c["name"] for c in described] == cols.names
        assert all(set(c) >= {"name", "type", "unit", "description"} for c in described)
    src_cols = {c["name"]: c for c in schema["Source"]["columns"]}
    assert src_cols["coord_ra"]["unit"] == "deg" and src_cols["psfFlux"]["unit"] == "nJy"
    assert src_cols["psfFlux"]["description"] == "PSF flux of the source"
    assert src_cols["coord_ra"]["type"] == "double" and src_cols["visit"]["type"] == "int64"
    assert schema["ObsCore"]["columns"][0]["name"] == "dataproduct_type"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert listed == on_disk - {"MANIFEST.json"}
    assert manifest["release"]["collection"] == "DR1"
    assert not list(out.parent.glob("DR1.tmp-*"))
    assert verify_release(out).ok


def test_catalog_rows_readable_by_duckdb_astropy(built):
    from astropy.table import Table

    repo, _summary, out, _ = built
    truth = _sorted(repo.sql("SELECT * FROM Source"))
    assert truth.num_rows == N_VISITS * N_DET * N_PER
    got = pq.read_table(out / "catalogs/Source.parquet")
    assert got.equals(truth.cast(got.schema))  # ordered by sourceId, same values
    con = duckdb.connect()
    n, = con.execute(f"SELECT count(*) FROM '{out}/catalogs/Source.parquet' "
                     "WHERE psfFlux > 3000").fetchone()
    assert n == int((truth.column("psfFlux").to_numpy() > 3000).sum())
    # The HATS dataset directory is plain Parquet for DuckDB too.
    n, = con.execute(f"SELECT count(*) FROM '{out}/hats/Source/dataset/**/*.parquet'").fetchone()
    assert n == truth.num_rows
    stars = Table.read(out / "catalogs/PsfStar.parquet")
    assert len(stars) == repo.sql("SELECT count(*) AS n FROM PsfStar").column("n")[0].as_py()
    assert pq.read_schema(out / "catalogs/Source.parquet").field("coord_ra").metadata[
        b"unit"] == b"deg"


def test_hats_valid_cone_search_and_crossmatch(built):
    import lsdb
    from hats.io.validation import is_valid_catalog

    _repo, summary, out, _ = built
    source = next(t for t in summary.tables if t.name == "Source")
    assert source.hats_partitions > 1  # 9,600 rows at 2,000 per partition
    for t in summary.tables:
        if t.hats:
            assert is_valid_catalog(out / t.hats, strict=True)
    rows = pq.read_table(out / "catalogs/Source.parquet")
    ra = rows.column("coord_ra").to_numpy()
    dec = rows.column("coord_dec").to_numpy()
    cat = lsdb.open_catalog(out / "hats/Source")
    cases = ((10.1, 0.1, 200.0), (12.55, 0.05, 90.0), (40.0, 0.0, 60.0))
    n_found = []
    for ra0, dec0, radius_arcsec in cases:
        r0, d0 = np.radians(ra0), np.radians(dec0)
        cos = (np.sin(d0) * np.sin(np.radians(dec))
               + np.cos(d0) * np.cos(np.radians(dec)) * np.cos(np.radians(ra) - r0))
        brute = np.degrees(np.arccos(np.clip(cos, -1, 1))) * 3600 <= radius_arcsec
        found = cat.cone_search(ra0, dec0, radius_arcsec).compute()
        assert len(found) == brute.sum()
        assert set(found["sourceId"]) == set(rows.column("sourceId").to_numpy()[brute])
        n_found.append(len(found))
    assert n_found[0] > 100 and n_found[1] > 20 and n_found[2] == 0
    stars = lsdb.open_catalog(out / "hats/PsfStar")
    matched = stars.crossmatch(cat, n_neighbors=1, radius_arcsec=0.01,
                               suffixes=("_star", "_src")).compute()
    n_stars = pq.read_metadata(out / "catalogs/PsfStar.parquet").num_rows
    # Stars lying within 0.01" of a partition edge may miss (no margin cache): allow 1%.
    assert len(matched) >= 0.99 * n_stars
    assert (matched["sourceId_star"] == matched["sourceId_src"]).all()


def test_obscore_index_votable_and_pyvo(built):
    from astropy.io import fits
    from astropy.io.votable import parse
    from astropy.table import Table
    from pyvo.dal import SIA2Results

    repo, summary, out, _ = built
    assert summary.images == {"visit_image": N_VISITS * N_DET, "deep_coadd": 3}
    index = Table.read(out / "images/obscore.parquet")
    vot = Table.read(out / "images/obscore.xml")
    assert len(index) == len(vot) == N_VISITS * N_DET + 3
    assert vot["s_ra"].unit == "deg" and vot["access_estsize"].unit == "kbyte"
    results = SIA2Results(parse(str(out / "images/obscore.xml")))
    assert len(results) == len(index)
    rec = results[0]
    assert rec.access_format == "application/fits"
    with fits.open(out / rec.access_url) as hdus:
        assert hdus["IMAGE"].data.shape == (40, 40)
    rows = {(r["lsst_visit"], r["lsst_detector"]): r for r in index if r["calib_level"] == 2}
    for (v, d), r in rows.items():
        ra, dec = _sky(int(v), int(d))
        # Detector 3 has no region record: its footprint comes from the FITS WCS.
        assert r["s_ra"] == pytest.approx(ra, abs=1e-6)
        assert r["s_dec"] == pytest.approx(dec, abs=1e-6)
        assert r["s_fov"] == pytest.approx(np.hypot(0.1, 0.1), rel=1e-3)
        assert r["s_region"].startswith("POLYGON ICRS ")
        visit = repo.dimension_records("visit", f"visit = {int(v)}").to_pylist()[0]
        assert r["t_max"] - r["t_min"] == pytest.approx(visit["exposure_time"] / 86400)
        assert r["t_min"] < visit["exp_midpt_mjd"] < r["t_max"]
        assert r["em_min"] < r["em_max"] and r["lsst_band"] == visit["band"]
    coadds = index[index["calib_level"] == 3]
    assert sorted(coadds["lsst_patch"]) == [0, 1, 2]
    coadds.sort("lsst_patch")
    assert list(coadds["s_ra"]) == pytest.approx([10.5, 11.5, 12.5], abs=1e-6)  # patch regions
    assert np.isnan(coadds["t_min"]).all()


def test_round_trip_rows_and_checksums(built, tmp_path):
    repo, summary, out, _ = built
    with Repo.create(tmp_path / "copy") as copy:
        result = import_release(copy, out)
        assert result.n_datasets == summary.n_datasets
        assert result.collection == "DR1" and copy.default_collection == "DR1"
        for name in ("Source", "PsfStar"):
            before = _sorted(repo.sql(f"SELECT * FROM {name}"))
            after = _sorted(copy.sql(f"SELECT * FROM {name}"))
            assert after.equals(before.cast(after.schema))
        old = {(r["id"], r["checksum"]) for r in repo.sql(
            "SELECT id::VARCHAR AS id, checksum FROM dataset").to_pylist()}
        new = {(r["id"], r["checksum"]) for r in copy.sql(
            "SELECT id::VARCHAR AS id, checksum FROM dataset").to_pylist()}
        assert old == new
        assert copy.verify().ok
        again = export_release(copy, tmp_path / "DR1-again", collection="DR1", config=_CONFIG)
    first = {f["path"]: f["checksum"] for f in
             json.loads((out / "MANIFEST.json").read_text())["files"]}
    second = {f["path"]: f["checksum"] for f in
              json.loads((again.path / "MANIFEST.json").read_text())["files"]}
    assert set(first) == set(second)
    # Only the files that carry the export date differ; every data file is identical.
    differ = {p for p in first if first[p] != second[p]}
    assert differ <= {"README.md", "hats/Source/hats.properties", "hats/Source/properties",
                      "hats/PsfStar/hats.properties", "hats/PsfStar/properties",
                      "hats/Visit/hats.properties", "hats/Visit/properties"}


def test_verify_finds_damage_and_import_refuses(built, tmp_path):
    import shutil

    _, _, out, _ = built
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    target = damaged / "catalogs/PsfStar.parquet"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    (damaged / "stray.txt").write_text("x")
    first_image = next((damaged / "datasets/files").rglob("*.fits"))
    first_image.unlink()
    report = verify_release(damaged)
    assert report.corrupt == ["catalogs/PsfStar.parquet"]
    assert report.extra == ["stray.txt"]
    assert len(report.missing) == 1 and report.missing[0].endswith(first_image.name)
    assert not report.ok
    with Repo.create(tmp_path / "r") as repo, pytest.raises(ReleaseError, match="fails its checks"):
        import_release(repo, damaged)
    # A HATS catalog with a partition removed fails the strict validation.
    hats_file = next((damaged / "hats/Source/dataset").rglob("Npix=*.parquet"))
    hats_file.unlink()
    report = verify_release(damaged, checksums=False)
    assert any("hats/Source: not a valid HATS catalog" in p for p in report.problems)


def test_interrupted_export_leaves_nothing(built, tmp_path, monkeypatch):
    import store.release.obscore as obscore

    repo, _, _, _ = built

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(obscore, "write_obscore_votable", boom)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_release(repo, tmp_path / "rel", config=_CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_bad_targets_and_settings(built, tmp_path):
    repo, _, out, _ = built
    small = ExportConfig(what=("visits",), durable=False, include_datasets=False)
    with pytest.raises(ReleaseExistsError, match=r"already exists.*--overwrite"):
        export_release(repo, out, config=small)
    with pytest.raises(ReleaseError, match=r"parent directory .* does not exist"):
        export_release(repo, tmp_path / "no" / "such" / "rel", config=small)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReleaseError, match="does not exist"):
        export_release(repo, tmp_path / "file" / "rel", config=small)
    with pytest.raises(ReleaseError, match="overlaps the repository"):
        export_release(repo, repo.root / "rel", config=small)
    with pytest.raises(ReleaseError, match="cannot export to /proc/drp-release"):
        export_release(repo, "/proc/drp-release", config=small)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="not a release; refusing"):
        export_release(repo, tmp_path / "notes", config=small, overwrite=True)
    # A query that writes is refused by the read-only SQL surface.
    for query in ("DELETE FROM visit", "COPY visit TO '/tmp/x.parquet'",
                  "CREATE TABLE t AS SELECT 1"):
        config = ExportConfig(tables=(TableSpec("Bad", "visits", query=query),),
                              what=("visits",), durable=False)
        with pytest.raises(ReadOnlyError):
            export_release(repo, tmp_path / "bad", config=config)
        assert not (tmp_path / "bad").exists()
    # The SQL tables show DR1; another collection cannot be exported through them.
    repo.register_chain("other", [])
    with pytest.raises(ReleaseError, match="show 'DR1', not collection 'other'"):
        export_release(repo, tmp_path / "other", collection="other", config=small)
    with pytest.raises(ReleaseError, match="hats_max_rows must be a positive integer, got str"):
        ExportConfig(hats_max_rows="100")
    with pytest.raises(ReleaseError, match="hats_max_rows must be a positive integer, got True"):
        ExportConfig(hats_max_rows=True)
    with pytest.raises(ReleaseError, match=r"unknown release part.*'tables'"):
        ExportConfig(what=("tables",))
    with pytest.raises(ReleaseError, match="calib_level must be an integer 0-4, got float"):
        ImageSpec("visit_image", calib_level=2.0)
    with pytest.raises(ReleaseError, match="order_by must be a tuple of strings"):
        TableSpec("T", order_by="visit")
    with pytest.raises(ReleaseError, match="overwrite must be True or False"):
        export_release(repo, tmp_path / "x", config=small, overwrite="yes")


def test_overwrite_replaces_a_release(built, tmp_path):
    repo, _, _, _ = built
    config = ExportConfig(what=("visits",), durable=False, include_datasets=False)
    target = tmp_path / "rel"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_release(repo, target, config=config)
        first = (target / "MANIFEST.json").read_text()
        custom = ExportConfig(tables=(TableSpec("Bright", "visits", query=(
            "SELECT sourceId, coord_ra, coord_dec, psfFlux FROM Source WHERE psfFlux > 1e4")),),
            what=("visits",), durable=False)
        summary = export_release(repo, target, config=custom, overwrite=True)
    assert (target / "MANIFEST.json").read_text() != first
    assert [t.name for t in summary.tables] == ["Bright"]
    assert summary.tables[0].dataset_types == ["source"]  # found from the query's view
    assert not (target / "catalogs/Visit.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]
    assert verify_release(target).ok


def test_positions_missing_or_partly_nan(built, tmp_path):
    repo, _, _, _ = built
    tables = (
        TableSpec("NoSky", query="SELECT sourceId, NULL::DOUBLE AS ra, NULL::DOUBLE AS dec "
                                 "FROM Source"),
        TableSpec("SomeSky", query="SELECT sourceId, CASE WHEN sourceId % 10 = 0 THEN "
                                   "'NaN'::DOUBLE ELSE coord_ra END AS ra, coord_dec AS dec "
                                   "FROM Source"),
    )
    config = ExportConfig(tables=tables, what=("catalogs",), durable=False,
                          include_datasets=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = export_release(repo, tmp_path / "rel", config=config)
    no_sky, some_sky = summary.tables
    assert no_sky.hats is None and no_sky.n_rows == N_VISITS * N_DET * N_PER
    assert any("NoSky has no finite ra/dec" in n for n in summary.notices)
    assert some_sky.hats_dropped == N_VISITS * N_DET * N_PER // 10
    assert some_sky.hats_rows == some_sky.n_rows - some_sky.hats_dropped
    assert any("SomeSky: 960 row(s) without a finite position" in n for n in summary.notices)
    assert verify_release(summary.path).ok


def test_hats_partitions_against_brute_force():
    rng = np.random.default_rng(5)
    # Clustered indices: dense blobs force fine partitions, sparse areas coarse ones.
    centres = rng.integers(0, 12 * 4**29, 20, dtype=np.int64)
    idx = np.sort(np.concatenate([
        np.clip(c + rng.integers(-(4**18), 4**18, rng.integers(1, 3000)), 0, 12 * 4**29 - 1)
        for c in centres]).astype(np.int64))
    max_rows, lo, hi = 500, 1, 9
    parts = hats_partitions(idx, max_rows=max_rows, lowest_order=lo, highest_order=hi)
    covered = np.zeros(len(idx), dtype=int)
    for order, pixel, start, stop in parts:
        assert lo <= order <= hi and stop > start
        mine = (idx >> (2 * (29 - order))) == pixel
        assert np.flatnonzero(mine).tolist() == list(range(start, stop))
        covered[start:stop] += 1
        assert stop - start <= max_rows or order == hi
        if order > lo:  # coarsest possible: the parent pixel holds too many rows
            parent = (idx >> (2 * (29 - order + 1))) == pixel >> 2
            assert parent.sum() > max_rows
    assert (covered == 1).all()
    assert hats_partitions(np.array([], dtype=np.int64), max_rows=10) == []


def test_cli_export_verify_import(built, tmp_path):
    repo, _, out, _ = built
    runner = CliRunner()
    target = tmp_path / "cli-release"
    res = runner.invoke(main, ["export", str(repo.root), "--collection", "DR1", "--to",
                               str(target), "--what", "catalogs", "--hats-max-rows", "3000",
                               "--no-sync"])
    assert res.exit_code == 0, res.output
    assert "Source: 9600 rows, HATS" in res.output and "notice: table CoaddCells" in res.output
    assert not (target / "images").exists()
    res = runner.invoke(main, ["export", str(repo.root), "--to", str(tmp_path / "coadds"),
                               "--what", "images", "--images", "deep_coadd", "--no-sync"])
    assert res.exit_code == 0 and "deep_coadd: 3 FITS file(s)" in res.output
    assert "visit_image" not in res.output
    res = runner.invoke(main, ["export", str(repo.root), "--to", str(target), "--no-sync"])
    assert res.exit_code != 0 and "already exists" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["export", str(repo.root), "--to", str(tmp_path / "x"),
                               "--hats-max-rows", "many"])
    assert res.exit_code == 2 and "'many' is not a valid integer" in res.output
    res = runner.invoke(main, ["export", str(repo.root), "--to", str(tmp_path / "x"),
                               "--what", "catalogs,stars"])
    assert res.exit_code != 0 and "unknown release part(s) 'stars'" in res.output
    res = runner.invoke(main, ["export", str(repo.root), "--to", str(tmp_path / "x"),
                               "--table", "Bad=DROP TABLE visit", "--no-sync"])
    assert res.exit_code != 0 and "read-only" in res.output
    res = runner.invoke(main, ["verify", "--export", str(out)])
    assert res.exit_code == 0 and "0 missing, 0 corrupt, 0 unlisted" in res.output
    res = runner.invoke(main, ["verify", "--export", str(tmp_path)])
    assert res.exit_code != 0 and "not a drp release" in res.output
    res = runner.invoke(main, ["verify"])
    assert res.exit_code != 0 and "REPO" in res.output
    dest = tmp_path / "imported"
    res = runner.invoke(main, ["import", str(target), str(dest)])
    assert res.exit_code == 0, res.output
    assert "imported" in res.output and "collection DR1" in res.output
    with Repo(dest) as copy:
        assert copy.sql("SELECT count(*) AS n FROM Source").column("n")[0].as_py() == 9600
    res = runner.invoke(main, ["import", str(target), str(dest)])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1


def test_hats_logging_is_quiet(built, caplog):
    """Validation inside verify does not leave handlers behind."""
    _, _, out, _ = built
    before = list(logging.getLogger().handlers)
    with caplog.at_level(logging.WARNING):
        assert verify_release(out).ok
    assert logging.getLogger().handlers == before
    assert os.path.exists(out / "README.md")


def test_manifest_reuses_registry_checksums_and_keeps_them_honest(tmp_path):
    """Verbatim dataset files take the registry's checksum; damage upstream still shows."""
    from store.datastore import checksum_file

    repo = _build_repo(tmp_path / "repo")
    coadd = next(iter(repo.query_datasets("deep_coadd")))
    # Damage a repository file behind the registry's back (same size, other bytes).
    path = repo.path_of(coadd)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    export_release(repo, tmp_path / "DR1", collection="DR1",
                   config=ExportConfig(hats_max_rows=2_000, durable=False, transfer="hardlink"))
    manifest = json.loads((tmp_path / "DR1/MANIFEST.json").read_text())
    entries = {f["path"]: f for f in manifest["files"]}
    rel = next(p for p in entries if p.endswith(path.name))
    assert entries[rel]["checksum"] == coadd.checksum != checksum_file(path)[1]
    # Files the export wrote itself are hashed as usual.
    assert entries["catalogs/Source.parquet"]["checksum"] == checksum_file(
        tmp_path / "DR1/catalogs/Source.parquet")[1]
    report = verify_release(tmp_path / "DR1")
    assert report.corrupt == [rel] and not report.ok
