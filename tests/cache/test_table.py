"""ObjectTable: a compact, columnar table of objects that compares versions without Python loops."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from s3dlio_loader.cache.table import ObjectTable, common_prefix, ragged_take
from s3dlio_loader.storage import ObjectInfo

INFOS = [
    ObjectInfo("s3://bucket/train/part-000.npz", 100, "etag-a", 1.5),
    ObjectInfo("s3://bucket/train/part-001.npz", 200, None, 2.5),
    ObjectInfo("s3://bucket/train/ünï/part-002.npz", 300, "etag-c-longer", None),
    ObjectInfo("s3://bucket/train/part-003.npz", 0),
]


def test_rows_read_back_as_object_infos():
    t = ObjectTable.from_infos(INFOS)
    assert len(t) == 4 and t.prefix == "s3://bucket/train/"
    assert list(t) == INFOS
    assert t[-1] == INFOS[-1] and t[1:3] == INFOS[1:3]
    assert t.uris() == [o.uri for o in INFOS] and t.uri(2) == INFOS[2].uri
    assert t.nbytes < 256  # 4 x (size, mtime, offset) + etags + the URI tails
    with pytest.raises(IndexError, match="out of range"):
        t[4]


def test_empty_and_single_tables():
    assert len(ObjectTable.from_infos([])) == 0
    one = ObjectTable.from_infos([ObjectInfo("file:///x", -1)])
    assert one.prefix == "file:///x" and one[0] == ObjectInfo("file:///x", -1)


def test_pickle_round_trip_keeps_token():
    t = ObjectTable.from_infos(INFOS)
    back = pickle.loads(pickle.dumps(t))
    assert list(back) == INFOS and back.token == t.token and back.identical(t)


def test_match_finds_the_same_versions():
    old = ObjectTable.from_infos(INFOS)
    same = ObjectTable.from_infos(INFOS)
    # part-003 has neither etag nor mtime: it can never be shown unchanged
    assert same.match(old).tolist() == [0, 1, 2, -1]
    changed = [
        INFOS[0]._replace(etag="etag-new"),  # rewritten (new etag, same size)
        INFOS[1]._replace(mtime=9.0),  # no etag: the mtime decides
        INFOS[2]._replace(size=301),
        ObjectInfo("s3://bucket/train/new.npz", 5, "e"),
    ]
    assert ObjectTable.from_infos(changed).match(old).tolist() == [-1, -1, -1, -1]
    reordered = ObjectTable.from_infos([INFOS[2], ObjectInfo("s3://other/x", 1, "e"), INFOS[0]])
    assert reordered.match(old).tolist() == [2, -1, 0]
    assert not reordered.versions_equal(old) and same.same_uris(old) and not same.versions_equal(old)
    assert ObjectTable.from_infos(INFOS[:3]).versions_equal(ObjectTable.from_infos(INFOS[:3]))


def test_etag_present_on_one_side_only_falls_back_to_mtime():
    a = ObjectTable.from_infos([ObjectInfo("s3://b/x", 1, "e", 5.0)])
    b = ObjectTable.from_infos([ObjectInfo("s3://b/x", 1, None, 5.0)])
    c = ObjectTable.from_infos([ObjectInfo("s3://b/x", 1, None, 6.0)])
    assert b.match(a).tolist() == [0] and c.match(a).tolist() == [-1]


def test_with_versions_fills_rows():
    t = ObjectTable.from_columns(["s3://b/a", "s3://b/b"])
    assert t.sizes.tolist() == [-1, -1]
    filled = t.with_versions(np.array([1]), [ObjectInfo("s3://b/b", 7, "a-much-longer-etag", 3.0)])
    assert filled[1] == ObjectInfo("s3://b/b", 7, "a-much-longer-etag", 3.0) and filled[0].size == -1
    assert filled.same_uris(t) and filled.digest() == t.digest()


def test_digest_depends_on_uris_only():
    a = ObjectTable.from_infos(INFOS)
    b = ObjectTable.from_infos([o._replace(size=o.size + 1) for o in INFOS])
    c = ObjectTable.from_infos(INFOS[::-1])
    assert a.digest() == b.digest() != c.digest()


def test_common_prefix():
    assert common_prefix("s3://b/ab", "s3://b/ac") == "s3://b/a"
    assert common_prefix("", "x") == "" and common_prefix("same", "same") == "same"


def test_ragged_take_matches_a_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 7, size=500)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = rng.integers(0, 1000, size=int(offsets[-1]))
    for rows in (rng.permutation(500), np.arange(100, 200), np.array([3, 3, 3]), np.array([], np.int64)):
        got, got_off = ragged_take(data, offsets, rows)
        want = [data[offsets[r] : offsets[r + 1]] for r in rows]
        assert got_off.tolist() == np.concatenate([[0], np.cumsum([len(w) for w in want])]).tolist()
        assert got.tolist() == (np.concatenate(want).tolist() if want else [])
