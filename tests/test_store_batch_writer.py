"""BatchWriter: threaded atomic writes, one flush, errors surfaced, abort cleans up."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest

from store.datastore import TMP_MARKER, BatchWriter, serialize


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


@pytest.mark.parametrize("process", [True, False])
def test_commit_places_every_file_with_its_checksum(tmp_path, process):
    batch = BatchWriter(tmp_path, process=process)
    expected = {}
    for i in range(50):
        data = bytes([i % 256]) * (100 + i)
        path = tmp_path / "run" / f"visit{i % 7}" / f"f{i}.bin"
        size, checksum = batch.write_bytes(path, data)
        assert size == len(data)
        assert checksum == "blake2b:" + hashlib.blake2b(data, digest_size=32).hexdigest()
        expected[path] = data
    done = batch.commit()
    assert sorted(done) == sorted(str(p) for p in expected)
    for path, data in expected.items():
        assert path.read_bytes() == data
    assert not any(TMP_MARKER in f for f in _files(tmp_path))


@pytest.mark.parametrize("process", [True, False])
def test_existing_file_is_never_overwritten_and_abort_removes_the_batch(tmp_path, process):
    keep = tmp_path / "run" / "visit1" / "f1.bin"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"registered")
    batch = BatchWriter(tmp_path, process=process)
    with pytest.raises(FileExistsError):
        batch.write_bytes(tmp_path / "run" / "visit0" / "f0.bin", b"a")
        batch.write_bytes(keep, b"b")
        batch.write_bytes(tmp_path / "run" / "visit2" / "f2.bin", b"c")
        batch.commit()  # the writer process's error is raised here
    batch.abort()
    assert keep.read_bytes() == b"registered"
    assert _files(tmp_path) == ["run/visit1/f1.bin"]


def test_abort_after_commit_removes_the_renamed_files(tmp_path):
    # put_many aborts when the registry insert fails after the files were placed.
    batch = BatchWriter(tmp_path, durable=False)
    for i in range(5):
        batch.write_bytes(tmp_path / "d" / f"f{i}", b"x" * i)
    batch.commit()
    assert len(_files(tmp_path)) == 5
    batch.abort()
    assert _files(tmp_path) == []


def test_large_files_bypass_the_writer_process(tmp_path):
    batch = BatchWriter(tmp_path, process=True)
    big = b"z" * (BatchWriter.PROCESS_MAX_BYTES + 1)
    batch.write_bytes(tmp_path / "a" / "small", b"s")
    batch.write_bytes(tmp_path / "b" / "big", big)
    assert sorted(batch.commit()) == [str(tmp_path / "a" / "small"), str(tmp_path / "b" / "big")]
    assert (tmp_path / "b" / "big").read_bytes() == big


def test_writer_process_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("DRP_WRITER_PROCESS", "0")
    batch = BatchWriter(tmp_path, process=True)
    batch.write_bytes(tmp_path / "x" / "f", b"1")
    assert batch._writer is None and (tmp_path / "x" / "f").read_bytes() == b"1"
    batch.commit()


def test_arrow_sink_serialises_the_same_bytes():
    import pyarrow.parquet as pq

    table = pa.table({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]})
    plain = serialize(lambda f: pq.write_table(table, f))
    native = serialize(lambda f: pq.write_table(table, f), arrow_sink=True)
    assert bytes(plain) == bytes(native)


def test_rename_noreplace_refuses_an_existing_destination(tmp_path):
    from store.datastore import rename_noreplace

    (tmp_path / "new").write_bytes(b"new")
    (tmp_path / "old").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "new", tmp_path / "old")
    assert (tmp_path / "old").read_bytes() == b"old" and (tmp_path / "new").exists()
    rename_noreplace(tmp_path / "new", tmp_path / "moved")
    assert (tmp_path / "moved").read_bytes() == b"new" and not (tmp_path / "new").exists()


def test_writer_process_protocol_reports_placed_files_and_flush(tmp_path):
    import json
    import subprocess
    import sys

    from store import _file_writer

    records = b""
    for i in range(3):
        tmp, final = (os.fsencode(tmp_path / "d" / f"f{i}{suffix}") for suffix in (".tmp", ""))
        data = b"%d" % i
        records += _file_writer.HEADER.pack(len(tmp), len(final), len(data)) + tmp + final + data
    out = subprocess.run([sys.executable, "-I", "-S", _file_writer.__file__, str(tmp_path)],
                         input=records, capture_output=True, check=True).stdout
    report = json.loads(out)
    assert report["placed"] == 3 and report["error"] is None and report["synced"] in (True, False)
    assert [(tmp_path / "d" / f"f{i}").read_bytes() for i in range(3)] == [b"0", b"1", b"2"]
    # Again: every name exists now, so the first record fails and the rest are skipped.
    report = json.loads(subprocess.run([sys.executable, "-I", "-S", _file_writer.__file__],
                                       input=records, capture_output=True, check=True).stdout)
    assert report["placed"] == 0 and report["error"]["type"] == "FileExistsError"
