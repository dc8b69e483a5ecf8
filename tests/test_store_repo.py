"""The Repo API: dimensions, dataset types, collections, datasets, SQL, integrity."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from store import (
    Circle,
    CollectionError,
    ConflictingDefinitionError,
    DataIdError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeError,
    Exposure,
    InvalidQueryError,
    ReadOnlyError,
    Repo,
    RepositoryNotFoundError,
)
from store.errors import ChecksumMismatchError, DrpError

from .conftest import populate_dimensions

DID = {"instrument": "Cam", "visit": 1, "detector": 2}


def small_exposure(value: float = 1.0) -> Exposure:
    return Exposure(np.full((8, 8), value, dtype=np.float32),
                    variance=np.ones((8, 8), np.float32))


# -- repositories -------------------------------------------------------------------------
def test_create_open_and_errors(tmp_path):
    with pytest.raises(RepositoryNotFoundError, match="no drp repository"):
        Repo(tmp_path / "missing")
    Repo.create(tmp_path / "r")
    with pytest.raises(DrpError, match="already exists"):
        Repo.create(tmp_path / "r")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DrpError, match="not empty"):
        Repo.create(tmp_path / "full")
    with Repo(tmp_path / "r") as repo:
        assert repo.dataset_types() == []


# -- dimensions ---------------------------------------------------------------------------
def test_dimension_records_bulk_single_and_conflicts(repo):
    populate_dimensions(repo)
    visits = repo.dimension_records("visit", "band = $b", bind={"b": "r"})
    assert visits.column("visit").to_pylist() == [1, 3, 5]
    assert visits.column("region_ra").to_pylist()[0][0] == pytest.approx(10.5)
    with pytest.raises(ConflictingDefinitionError, match="already exists"):
        repo.insert_dimension_record("detector", {"instrument": "Cam", "detector": 0})
    assert repo.insert_dimension_record("detector", {"instrument": "Cam", "detector": 0},
                                        skip_existing=True) == 0
    repo.insert_dimension_record("detector", {"instrument": "Cam", "detector": 0, "name": "new"},
                                 replace=True)
    names = repo.dimension_records("detector", "detector = 0").column("name").to_pylist()
    assert names == ["new"]
    # polars and arrow bulk inserts
    repo.insert_dimension_records("detector", pl.DataFrame(
        {"instrument": ["Cam"] * 3, "detector": [10, 11, 12], "gain": [1.0, 1.1, 1.2]}))
    repo.insert_dimension_records("detector", pa.table(
        {"instrument": ["Cam"], "detector": pa.array([13], pa.int32())}))
    assert repo.dimension_records("detector").num_rows == 8


def test_dimension_record_errors(repo):
    with pytest.raises(DataIdError, match="unknown dimension element 'nope'"):
        repo.insert_dimension_records("nope", [{"a": 1}])
    with pytest.raises(DataIdError, match="lack key column"):
        repo.insert_dimension_records("instrument", [{"pixel_scale": 0.2}])
    with pytest.raises(DataIdError, match="unknown column"):
        repo.insert_dimension_records("instrument", [{"instrument": "A", "colour": "red"}])
    with pytest.raises(DataIdError, match="unknown instrument"):
        repo.insert_dimension_records("detector", [{"instrument": "Ghost", "detector": 1}])
    with pytest.raises(DataIdError, match=r"not a valid|do not fit"):
        repo.insert_dimension_records("instrument", [{"instrument": "A", "n_detectors": "x"}])


# -- dataset types and collections --------------------------------------------------------
def test_dataset_type_registration(repo):
    dt = repo.register_dataset_type("calexp", ("detector", "visit", "instrument"), "Exposure")
    assert dt.dimensions == ("instrument", "visit", "detector")
    repo.register_dataset_type("calexp", ("instrument", "visit", "detector"), "Exposure")
    with pytest.raises(ConflictingDefinitionError, match="cannot redefine"):
        repo.register_dataset_type("calexp", ("instrument", "visit"), "Exposure")
    with pytest.raises(DatasetTypeError, match="unknown dimension"):
        repo.register_dataset_type("bad", ("instrument", "colour"), "Exposure")
    with pytest.raises(DatasetTypeError, match="reserved"):
        repo.register_dataset_type("visit", ("instrument",), "ArrowTable")
    with pytest.raises(DatasetTypeError, match="unknown dataset type 'nope'"):
        repo.get_dataset_type("nope")
    with pytest.raises(DrpError, match="unknown storage class"):
        repo.register_dataset_type("x", ("instrument",), "Pickle")


def test_chained_collections_first_found_order(filled_repo):
    repo = filled_repo
    repo.register_run("run2")
    repo.put(small_exposure(1.0), "post_isr_image", DID, run="raw")
    repo.put(small_exposure(2.0), "post_isr_image", DID, run="run2")
    repo.register_chain("newest", ["run2", "raw"])
    repo.register_chain("oldest", ["raw", "run2"])
    assert repo.get("post_isr_image", DID, collections="newest").image[0, 0] == 2.0
    assert repo.get("post_isr_image", DID, collections="oldest").image[0, 0] == 1.0
    repo.register_chain("outer", ["oldest"])
    assert repo.collection_runs("outer") == ["raw", "run2"]
    with pytest.raises(CollectionError, match="contain itself"):
        repo.register_chain("oldest", ["outer"])
    with pytest.raises(CollectionError, match="unknown collection"):
        repo.register_chain("c", ["nope"])
    with pytest.raises(ConflictingDefinitionError, match="already exists"):
        repo.register_run("raw")
    with pytest.raises(CollectionError, match="CHAINED collection"):
        repo.put(small_exposure(), "post_isr_image", DID, run="newest")


# -- datasets -----------------------------------------------------------------------------
def test_put_get_find_and_refs(filled_repo):
    repo = filled_repo
    ref = repo.put(small_exposure(3.0), "post_isr_image", DID, run="raw")
    assert ref.data_id == DID and ref.run == "raw" and ref.checksum.startswith("blake2b:")
    assert repo.path_of(ref).stat().st_size == ref.size
    assert repo.get(ref).image[0, 0] == 3.0
    found = repo.find_dataset("post_isr_image", DID, collections="raw")
    assert found.id == ref.id
    assert repo.find_dataset("post_isr_image", {**DID, "detector": 3}, collections="raw") is None
    # extra implied keys are accepted; band filled from the visit record
    assert repo.find_dataset("post_isr_image", {**DID, "band": "r"}, collections="raw") == ref
    with pytest.raises(DatasetNotFoundError, match="no post_isr_image dataset"):
        repo.get("post_isr_image", {**DID, "detector": 3}, collections="raw")
    cut = repo.get(ref, parameters={"bbox": __import__("store").Box(2, 2, 3, 3)})
    assert cut.image.shape == (3, 3)


def test_put_errors_leave_nothing(filled_repo):
    repo = filled_repo
    with pytest.raises(DatasetTypeError, match="unknown dataset type"):
        repo.put(small_exposure(), "nope", DID, run="raw")
    with pytest.raises(DataIdError, match="lacks required key"):
        repo.put(small_exposure(), "post_isr_image", {"instrument": "Cam", "visit": 1}, run="raw")
    with pytest.raises(DataIdError, match="unknown visit"):
        repo.put(small_exposure(), "post_isr_image", {**DID, "visit": 999}, run="raw")
    with pytest.raises(DataIdError, match="unknown data ID key"):
        repo.put(small_exposure(), "post_isr_image", {**DID, "colour": 1}, run="raw")
    with pytest.raises(CollectionError, match="unknown run"):
        repo.put(small_exposure(), "post_isr_image", DID, run="nope")
    repo.put(small_exposure(), "post_isr_image", DID, run="raw")
    with pytest.raises(DatasetExistsError, match="already exists in run 'raw'"):
        repo.put(small_exposure(), "post_isr_image", DID, run="raw")
    with pytest.raises(DatasetExistsError, match="twice"):
        repo.put_many([(small_exposure(), "post_isr_image", {**DID, "detector": 0})] * 2,
                      run="raw")
    assert repo.verify().orphans == []  # no file written by the failed calls


def test_put_many_and_query_datasets(filled_repo):
    repo = filled_repo
    items = [(small_exposure(v), "post_isr_image", {"instrument": "Cam", "visit": v,
                                                     "detector": d})
             for v in range(6) for d in range(4)]
    refs = repo.put_many(items, run="raw")
    assert len(refs) == 24 and len({r.id for r in refs}) == 24
    res = repo.query_datasets("post_isr_image", "band = $band AND exposure_time > $t",
                              bind={"band": "r", "t": 20.0})
    assert sorted({r.data_id["visit"] for r in res}) == [1]  # r-band visits 1, 3, 5; only 1 long
    res = repo.query_datasets("post_isr_image", "visit.exposure_time < 20 AND detector IN (0, 3)")
    assert sorted((r.data_id["visit"], r.data_id["detector"]) for r in res) == [
        (3, 0), (3, 3), (4, 0), (4, 3), (5, 0), (5, 3)]
    assert len(repo.query_datasets("post_isr_image", region=(11.1, 0.1))) == 4  # visit 2
    near = repo.query_datasets("post_isr_image", region=Circle(10.45, 0.1, 0.3))
    assert sorted({r.data_id["visit"] for r in near}) == [0, 1]
    with pytest.raises(InvalidQueryError, match="bad where clause"):
        repo.query_datasets("post_isr_image", "no_such_column = 1")
    with pytest.raises(InvalidQueryError, match="unbound parameter"):
        repo.query_datasets("post_isr_image", "band = $b")


def test_sql_tables_follow_default_collection(filled_repo):
    repo = filled_repo
    repo.register_run("run2")
    for run, value in (("raw", 1.0), ("run2", 5.0)):
        repo.put_many([(pa.table({"flux": [value, value]}), "src",
                        {"instrument": "Cam", "visit": v, "detector": 0}) for v in (0, 1)],
                      run=run)
    # no default collection: every run, newest first
    assert repo.sql("SELECT sum(flux) AS s FROM src").column("s")[0].as_py() == 20.0
    repo.register_chain("best", ["raw", "run2"])
    repo.set_default_collection("best")
    assert repo.sql("SELECT sum(flux) AS s FROM src").column("s")[0].as_py() == 4.0
    rows = repo.sql("SELECT visit, count(*) AS n FROM src WHERE flux = $f GROUP BY visit "
                    "ORDER BY visit", {"f": 1.0}).to_pylist()
    assert rows == [{"visit": 0, "n": 2}, {"visit": 1, "n": 2}]
    units = repo.sql("SELECT count(*) AS n FROM column_meta WHERE sql_table = 'src'"
                     ).column("n")[0].as_py()
    assert units == 0
    with pytest.raises(ReadOnlyError, match="read-only"):
        repo.sql("INSERT INTO src VALUES (1)")
    with pytest.raises(ReadOnlyError):
        repo.sql("COPY src TO '/tmp/stolen.csv'")
    with pytest.raises(InvalidQueryError, match="malformed SQL"):
        repo.sql("SELEC 1")
    with pytest.raises(InvalidQueryError, match="one statement"):
        repo.sql("SELECT 1; SELECT 2")


def test_remove_run_deletes_rows_then_files(filled_repo):
    repo = filled_repo
    refs = repo.put_many([(pa.table({"flux": [1.0]}), "src",
                           {"instrument": "Cam", "visit": v, "detector": 0}) for v in (0, 1)],
                         run="raw")
    paths = [repo.path_of(r) for r in refs]
    assert repo.remove_run("raw") == 2
    assert not any(p.exists() for p in paths)
    assert repo.sql("SELECT count(*) AS n FROM dataset").column("n")[0].as_py() == 0
    assert repo.sql("SELECT count(*) AS n FROM src").column("n")[0].as_py() == 0
    with pytest.raises(CollectionError):
        repo.remove_run("raw")


def test_ingest_transfer_modes(filled_repo, tmp_path):
    from store.formats.fits import write_exposure

    repo = filled_repo
    files = []
    for i in range(5):
        p = tmp_path / f"in{i}.fits"
        with open(p, "wb") as f:
            write_exposure(small_exposure(float(i)), f)
        files.append(p)
    for i, mode in enumerate(("copy", "move", "hardlink", "symlink", "direct")):
        ref, = repo.ingest([files[i]], "post_isr_image",
                           [{"instrument": "Cam", "visit": i, "detector": 0}], run="raw",
                           transfer=mode)
        assert repo.get(ref, verify=True).image[0, 0] == float(i)
        assert ref.external == (mode == "direct")
    assert not files[1].exists() and files[0].exists()
    with pytest.raises(DrpError, match="no such file"):
        repo.ingest([tmp_path / "nope.fits"], "post_isr_image", [DID], run="raw")
    with pytest.raises(DrpError, match="unknown transfer mode"):
        repo.ingest([files[0]], "post_isr_image", [DID], run="raw", transfer="teleport")
    assert repo.verify().ok


def test_verify_finds_missing_corrupt_and_orphans(filled_repo):
    repo = filled_repo
    refs = repo.put_many([({"v": v}, "note", {"instrument": "Cam", "visit": v})
                          for v in range(3)], run="raw")
    assert repo.verify().ok
    repo.path_of(refs[0]).unlink()
    repo.path_of(refs[1]).write_text('{"v": "tampered"}')
    orphan = repo.root / "raw" / "note" / "leftover.json.drp-tmp-abc"
    orphan.write_text("partial")
    report = repo.verify()
    assert not report.ok
    assert report.missing == [str(repo.path_of(refs[0]))]
    assert report.corrupt == [str(repo.path_of(refs[1]))]
    assert report.orphans == [str(orphan)]
    with pytest.raises(ChecksumMismatchError, match=os.path.basename(refs[1].path)):
        repo.get(refs[1], verify=True)
    repaired = repo.verify(repair=True)
    assert repaired.removed == [str(orphan)] and not orphan.exists()


def test_export_import_roundtrip_keeps_ids_rows_and_checksums(filled_repo, tmp_path):
    repo = filled_repo
    repo.put_many([(pa.table({"flux": [float(v)] * 3}), "src",
                    {"instrument": "Cam", "visit": v, "detector": 1}) for v in range(6)],
                  run="raw")
    repo.put_many([(small_exposure(v), "post_isr_image",
                    {"instrument": "Cam", "visit": v, "detector": 1}) for v in range(6)],
                  run="raw")
    subset = [*repo.query_datasets("src", "band = 'r'"),
              *repo.query_datasets("post_isr_image", "band = 'r'")]
    repo.export_datasets(subset, tmp_path / "export")
    with Repo.create(tmp_path / "copy") as other:
        assert other.import_datasets(tmp_path / "export") == 6
        again = {(r.dataset_type, r.data_id["visit"]): r for r in
                 [*other.query_datasets("src"), *other.query_datasets("post_isr_image")]}
        for ref in subset:
            twin = again[(ref.dataset_type, ref.data_id["visit"])]
            assert twin.id == ref.id and twin.checksum == ref.checksum
        assert other.sql("SELECT sum(flux) AS s FROM src").column("s")[0].as_py() == 27.0
        assert sorted(other.dimension_records("visit").column("visit").to_pylist()) == [1, 3, 5]
        assert other.verify().ok
    with pytest.raises(DrpError, match="not empty"):
        repo.export_datasets(subset, tmp_path / "export")


def test_empty_tables_do_not_break_later_puts(filled_repo):
    repo = filled_repo
    empty = pa.table({"flux": pa.array([], pa.float64())})
    repo.put(empty, "src", {"instrument": "Cam", "visit": 0, "detector": 0}, run="raw")
    repo.put(pa.table({"flux": [2.5]}), "src", {"instrument": "Cam", "visit": 1, "detector": 0},
             run="raw")
    rows = repo.sql("SELECT instrument, visit, flux FROM main.src").to_pylist()
    assert rows == [{"instrument": "Cam", "visit": 1, "flux": 2.5}]
