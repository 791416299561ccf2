"""DatasetStore: content-addressed uploads, schema inference, validation, built-ins, inline rows."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from highpeaks_ml.errors import InvalidArgument, NotFound, ResourceExhausted
from highpeaks_ml.training import datasets as ds
from highpeaks_ml.training.datasets import DatasetStore, inline_csv

CSV = b"size,color,price,label\n1.5,red,10,a\n2,blue,12.5,b\n3,,9,a\n4.25,red,NA,b\n"


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    s = DatasetStore(tmp_path / "home", max_bytes=10_000)
    s.start()
    return s


def _stored(store: DatasetStore) -> list[str]:
    return sorted(os.listdir(store.dir))


def _staging(store: DatasetStore) -> list[str]:
    return sorted(os.listdir(store.tmp_dir))


def test_upload_infers_schema_and_counts(store):
    info = store.add_bytes(CSV, name="prices")
    assert info.rows == 4 and info.size_bytes == len(CSV) and info.name == "prices"
    cols = {c.name: c for c in info.columns}
    assert [c.name for c in info.columns] == ["size", "color", "price", "label"]
    assert cols["size"].type == ds.NUMERIC and not cols["size"].integral
    assert cols["color"].type == ds.CATEGORICAL and cols["color"].missing == 1
    assert cols["color"].distinct_values == 2
    assert cols["price"].type == ds.NUMERIC and cols["price"].missing == 1
    assert cols["label"].type == ds.CATEGORICAL and cols["label"].distinct_values == 2
    assert store.get(info.id) == info
    assert (store.dir / info.id / "data.csv").read_bytes() == CSV


def test_same_bytes_same_id_even_in_other_chunks(store):
    first = store.add_bytes(CSV, name="one")
    upload = store.begin_upload(name="two")
    for i in range(0, len(CSV), 7):
        upload.write(CSV[i : i + 7])
    second = upload.finish()
    assert second.id == first.id == __import__("hashlib").sha256(CSV).hexdigest()
    assert second.name == "one"  # the first upload's metadata stays
    assert _stored(store) == [first.id]
    assert _staging(store) == []


def test_quotes_bom_blank_lines_and_integers(store):
    data = b'\xef\xbb\xbfname,n\n"Smith, J.",1\n\n"multi\nline",2\nplain,3\n'
    info = store.add_bytes(data)
    assert info.rows == 3
    assert [c.name for c in info.columns] == ["name", "n"]
    n = info.column("n")
    assert n is not None and n.type == ds.NUMERIC and n.integral and n.distinct_values == 3


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"a,b\n", "no data rows"),
        (b"\n\n", "empty"),
        (b"a,b\n1,2\n3\n", "ragged rows: line 3 has 1 fields but the header has 2"),
        (b"a,b\n1,2,3\n", "ragged rows: line 2 has 3 fields"),
        (b"a,a\n1,2\n", "column name 'a' appears twice"),
        (b"a,\n1,2\n", "column 2 has an empty name"),
        (b"a,b\n1,inf\n2,3\n", "column 'b' has an infinite value (data row 1)"),
        (b"a,b\n\xff\xfe,1\n", "not UTF-8"),
        (b'a,b\n"unclosed,1\n', "malformed CSV"),
    ],
)
def test_invalid_files_are_refused_and_nothing_is_stored(store, data, fragment):
    with pytest.raises(InvalidArgument) as err:
        store.add_bytes(data)
    assert fragment in err.value.message
    assert str(store.home) not in err.value.message
    assert _stored(store) == [] and _staging(store) == []


def test_size_limit_is_resource_exhausted_and_drops_the_upload(store):
    upload = store.begin_upload()
    upload.write(b"a,b\n" + b"1,2\n" * 2000)
    with pytest.raises(ResourceExhausted, match="larger than the limit of 10000 bytes"):
        upload.write(b"1,2\n" * 1000)
    upload.discard()
    assert _stored(store) == [] and _staging(store) == []


def test_sha256_mismatch_is_refused(store):
    upload = store.begin_upload(expected_sha256="0" * 64)
    upload.write(CSV)
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        upload.finish()
    assert _stored(store) == []


@pytest.mark.parametrize(
    ("data", "target", "fragment"),
    [
        (CSV, "nope", "target column 'nope' is not in the dataset (columns: size, color"),
        (CSV, "price", "target column 'price' has 1 missing"),
        (b"a,y\n1,x\n2,x\n", "y", "target column 'y' is constant"),
    ],
)
def test_target_checked_at_upload(store, data, target, fragment):
    with pytest.raises(InvalidArgument) as err:
        store.add_bytes(data, target_column=target)
    assert fragment in err.value.message
    assert _stored(store) == []


def test_target_checked_also_for_known_bytes(store):
    store.add_bytes(CSV)
    with pytest.raises(InvalidArgument, match="'nope' is not in the dataset"):
        store.add_bytes(CSV, target_column="nope")


def test_bad_names_and_ids(store):
    with pytest.raises(InvalidArgument, match="invalid dataset name"):
        store.begin_upload(name="../x")
    with pytest.raises(InvalidArgument, match="invalid dataset id"):
        store.get("../../etc/passwd")
    with pytest.raises(NotFound):
        store.get("a" * 64)
    assert _staging(store) == []


def test_list_newest_first_and_limit(store):
    a = store.add_bytes(b"x,y\n1,2\n")
    b = store.add_bytes(b"x,y\n3,4\n")
    assert [d.id for d in store.list()] == [b.id, a.id]
    assert [d.id for d in store.list(limit=1)] == [b.id]


def test_start_removes_abandoned_uploads_but_not_live_ones(tmp_path):
    s = DatasetStore(tmp_path / "home")
    s.start()
    # A crashed process's upload: staging data and a lock file nobody holds.
    dead = s.tmp_dir / "upload-dead"
    dead.mkdir()
    (dead / "data.csv").write_bytes(b"a,b\n1,2\n")
    (s.tmp_dir / "upload-dead.lock").touch()
    (s.tmp_dir / "upload-orphan.lock").touch()
    live = s.begin_upload()  # this process is alive and holds its lock
    live.write(b"a,b\n1,2\n")
    DatasetStore(tmp_path / "home").start()  # e.g. another replica starting
    assert sorted(os.listdir(s.tmp_dir)) == sorted([live.staging.name, f"{live.staging.name}.lock"])
    assert live.finish().rows == 1
    assert _staging(s) == [] and len(_stored(s)) == 1


def test_type_is_decided_over_every_chunk(store, monkeypatch):
    # Numbers for the first chunks, a word in the last: categorical.
    monkeypatch.setattr(ds, "_CHUNK_ROWS", 3)
    rows = [f"{i},{i % 2}" for i in range(10)] + ["word,1"]
    info = store.add_bytes(("a,b\n" + "\n".join(rows) + "\n").encode())
    a = info.column("a")
    assert a is not None and a.type == ds.CATEGORICAL and a.distinct_values == 11
    assert info.rows == 11


def test_load_csv_frame_types_like_the_upload(store):
    info = store.add_bytes(CSV)
    frame = ds.load_csv_frame(io.BytesIO(store.read_bytes(info.id)), info.columns)
    assert frame["size"].dtype == "float64"
    assert list(frame["color"]) == ["red", "blue", "", "red"]
    assert frame["price"].isna().sum() == 1


@pytest.mark.parametrize("name", ds.BUILTINS)
def test_builtins_need_no_network_and_end_with_target(store, name):
    info, digest = store.builtin(name)
    assert info.columns[-1].name == "target"
    assert all(c.type == ds.NUMERIC for c in info.columns)
    assert len(digest) == 64 and info.rows > 100


def test_unknown_builtin(store):
    with pytest.raises(InvalidArgument, match="unknown built-in dataset 'mnist'"):
        store.builtin("mnist")


def test_inline_rows_become_canonical_csv():
    data = inline_csv([{"a": 1.0, "b": "x", "c": True}, {"a": 2.5, "b": None, "c": False}])
    assert data == b"a,b,c\n1,x,true\n2.5,,false\n"


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([], "no rows"),
        ([{"a": 1}, {"b": 2}], "ragged rows: inline row 2 lacks 'a' and has extra 'b'"),
        ([{"a": 1}, {"a": [1, 2]}], "inline row 2, column 'a': only numbers"),
        ([{"a": float("nan")}], "is not finite"),
    ],
)
def test_inline_refusals(rows, fragment):
    with pytest.raises(InvalidArgument) as err:
        inline_csv(rows)
    assert fragment in err.value.message
