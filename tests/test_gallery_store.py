"""The persistent gallery (ghostface_keras.gallery): search against an independent brute-force ranking, the exact
and the graph index, replay after reopening, refusals that write nothing, writers serialized, .npz round trips.
In-process and tiny: the default tier."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ghostface_keras.core.errors import DataError
from ghostface_keras.gallery import GalleryStore, ModelIdentity
from ghostface_keras.gallery import index as index_module
from ghostface_keras.gallery.transfer import export_npz, import_npz

DIMENSION = 16


def _people(count: int, photos: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count, DIMENSION))
    return {f"person{index:03d}": centres[index] + 0.3 * rng.standard_normal((photos, DIMENSION))
            for index in range(count)}


def _brute_force_people(people: dict[str, np.ndarray], query: np.ndarray, top_k: int) -> list[tuple[str, float]]:
    """The reference: each person's best cosine, computed in float64 without the store."""
    query = query / np.linalg.norm(query)
    best = {name: float(np.max((rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ query))
            for name, rows in people.items()}
    return sorted(best.items(), key=lambda item: -item[1])[:top_k]


def _enrolled(folder, people, identity=None) -> GalleryStore:
    store = GalleryStore.create(folder, identity or ModelIdentity("toy", DIMENSION))
    for name, rows in people.items():
        store.enroll(name, rows, [f"{name}/{index}.jpg" for index in range(len(rows))])
    return store


def _assert_same_ranking(store, people, queries, top_k=3, tolerance=1e-5):
    for query, hits in zip(queries, store.search(queries, top_k)):
        expected = _brute_force_people(people, query, top_k)
        assert [hit.name for hit in hits] == [name for name, _ in expected]
        np.testing.assert_allclose([hit.similarity for hit in hits], [score for _, score in expected], atol=tolerance)


def test_exact_search_ranks_people_like_brute_force_and_survives_reopening(tmp_path):
    people = _people(12, 3)
    store = _enrolled(tmp_path / "gallery", people)
    queries = np.stack([rows[0] + 0.1 for rows in people.values()])[:6]
    _assert_same_ranking(store, people, queries)
    assert store.people()[0] == ("person000", 3) and store.photo_count == 36 and store.person_count == 12
    store.close()
    reopened = GalleryStore.open(tmp_path / "gallery")
    _assert_same_ranking(reopened, people, queries)


def test_remove_rename_and_list(tmp_path):
    people = _people(5, 2)
    store = _enrolled(tmp_path / "gallery", people)
    assert store.remove_person("person001") == 2
    del people["person001"]
    photo_id, name, path = store.photos("person002")[0]
    assert store.remove_photo(photo_id) == 1
    people["person002"] = people["person002"][1:]
    store.rename("person003", "carol")
    people["carol"] = people.pop("person003")
    queries = np.stack([rows[0] for rows in people.values()])
    _assert_same_ranking(store, people, queries)
    assert [name for name, _ in store.people()] == sorted(people)
    with pytest.raises(DataError, match="no person named 'nobody'"):
        store.remove_person("nobody")
    with pytest.raises(DataError, match="already exists"):
        store.rename("carol", "person000")


@pytest.mark.parametrize("bad, problem", [(np.nan, "holds NaN or infinity"), (np.inf, "holds NaN or infinity"),
                                          (0.0, "is zero")])
def test_non_finite_and_zero_embeddings_never_enter(tmp_path, bad, problem):
    store = _enrolled(tmp_path / "gallery", _people(2, 1))
    rows = np.ones((3, DIMENSION))
    rows[1] = bad if bad != 0.0 else 0.0
    if bad != 0.0:
        rows[1, 1:] = 1.0
    with pytest.raises(DataError, match=f"b.jpg: its embedding {problem}"):
        store.enroll("mallory", rows, ["a.jpg", "b.jpg", "c.jpg"])
    assert store.photo_count == 2 and "mallory" not in dict(store.people())  # nothing of the batch went in
    with pytest.raises(DataError, match="NaN or infinity"):
        store.search(np.full((1, DIMENSION), np.nan))


def test_other_model_or_size_is_refused_in_one_line(tmp_path):
    fingerprint = tuple(np.eye(1, 8)[0].tolist())
    store = GalleryStore.create(tmp_path / "gallery", ModelIdentity("toy", DIMENSION, fingerprint=fingerprint))
    with pytest.raises(DataError, match=r"a 8-d embedding; this gallery holds toy \(16-d\)"):
        store.enroll("alice", np.ones((1, 8)), ["a.jpg"])
    other = ModelIdentity("toy", DIMENSION, fingerprint=tuple(np.eye(1, 8, 1)[0].tolist()))
    with pytest.raises(DataError, match="different weights") as refused:
        store.identity.refuse_other(other, "gallery")
    assert "\n" not in str(refused.value)
    store.identity.refuse_other(ModelIdentity("renamed.tflite", DIMENSION, fingerprint=fingerprint))  # same weights
    with pytest.raises(DataError, match="already holds a gallery"):
        GalleryStore.create(tmp_path / "gallery", ModelIdentity("toy", DIMENSION))
    with pytest.raises(DataError, match="not a gallery folder"):
        GalleryStore.open(tmp_path)


def test_graph_index_replays_changes_after_reopening_and_rebuilds_a_damaged_one(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(index_module, "BRUTE_FORCE_BELOW", 40)
    monkeypatch.setattr("ghostface_keras.gallery.store.BRUTE_FORCE_BELOW", 40)
    people = _people(30, 2)
    store = _enrolled(tmp_path / "gallery", people)
    queries = np.stack([rows[0] + 0.05 for rows in people.values()])
    _assert_same_ranking(store, people, queries)  # 60 photos: a graph, exact at this size
    assert store._index.kind == "hnsw"
    saved = store.save_index()
    assert saved is not None and saved.exists()
    # changes after the saved graph: replayed from the log by a fresh process (here: a fresh store)
    store.remove_person("person004")
    del people["person004"]
    extra = _people(3, 2, seed=9)
    for name, rows in extra.items():
        store.enroll("new_" + name, rows, ["x.jpg", "y.jpg"])
        people["new_" + name] = rows
    store.close()
    reopened = GalleryStore.open(tmp_path / "gallery")
    queries = np.stack([rows[0] for rows in people.values()])
    _assert_same_ranking(reopened, people, queries)
    assert reopened._index.kind == "hnsw" and len(reopened._index._deleted) == 2
    reopened.close()
    saved.write_bytes(b"not a faiss index")
    rebuilt = GalleryStore.open(tmp_path / "gallery")
    _assert_same_ranking(rebuilt, people, queries)


def test_writers_are_serialized_and_a_blocked_one_is_refused_cleanly(tmp_path):
    _enrolled(tmp_path / "gallery", _people(1, 1)).close()
    stores = [GalleryStore.open(tmp_path / "gallery", timeout=20) for _ in range(4)]
    rows = _people(4, 5, seed=3)
    threads = [threading.Thread(target=store.enroll, args=(name, photos, [f"{name}{i}" for i in range(5)]))
               for store, (name, photos) in zip(stores, rows.items())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert GalleryStore.open(tmp_path / "gallery").photo_count == 1 + 20
    holder, blocked = stores[0], GalleryStore.open(tmp_path / "gallery", timeout=0.2)
    with holder._writer_lock():
        with pytest.raises(DataError, match="another process is changing this gallery"):
            blocked.enroll("late", np.ones((1, DIMENSION)), ["late.jpg"])
    assert "late" not in dict(blocked.people())


def test_npz_round_trip_and_hostile_npz_is_refused_whole(tmp_path):
    people = _people(4, 2)
    store = _enrolled(tmp_path / "gallery", people)
    assert export_npz(store, tmp_path / "people.npz") == 8
    copy = GalleryStore.create(tmp_path / "copy", ModelIdentity("toy", DIMENSION))
    assert import_npz(copy, tmp_path / "people.npz") == 8
    _assert_same_ranking(copy, people, np.stack([rows[1] for rows in people.values()]))
    embeddings = np.ones((2, DIMENSION), np.float32)
    embeddings[1, 3] = np.nan
    np.savez(tmp_path / "nan.npz", names=np.array(["a", "b"]), embeddings=embeddings, paths=np.array(["1", "2"]))
    with pytest.raises(DataError, match=r"nan.npz: row 2 \(b\): its embedding holds NaN"):
        import_npz(copy, tmp_path / "nan.npz")
    assert copy.photo_count == 8
    other = GalleryStore.create(tmp_path / "other", ModelIdentity("another", DIMENSION))
    with pytest.raises(DataError, match="holds embeddings of another"):
        import_npz(other, tmp_path / "people.npz")


def test_a_reader_never_sees_half_an_enroll_or_removal(tmp_path):
    """A second store (its own connection, as another process has) searches while a writer enrolls 5 photos per
    person and removes every other person: every person it lists has all 5 photos, every search answers."""
    GalleryStore.create(tmp_path / "gallery", ModelIdentity("toy", DIMENSION)).close()
    writer, reader = GalleryStore.open(tmp_path / "gallery"), GalleryStore.open(tmp_path / "gallery")
    people = _people(40, 5, seed=4)
    done = threading.Event()
    seen: list[tuple[dict, list]] = []

    def write() -> None:
        for index, (name, rows) in enumerate(people.items()):
            writer.enroll(name, rows, [f"{name}/{i}" for i in range(5)])
            if index % 2:
                writer.remove_person(name)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    queries = np.stack([rows[0] for rows in people.values()])[:8]
    while not done.is_set() or not seen:
        seen.append((dict(reader.people()), reader.search(queries, 3)))
    thread.join(timeout=30)
    for counts, results in seen:
        assert set(counts.values()) <= {5} and len(results) == len(queries)
    final = dict(reader.people())
    assert sorted(final) == sorted(list(people)[::2])
    _assert_same_ranking(reader, {name: people[name] for name in final}, queries)


def test_graph_is_rebuilt_without_tombstones_once_they_are_a_tenth(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(index_module, "BRUTE_FORCE_BELOW", 40)
    monkeypatch.setattr("ghostface_keras.gallery.store.BRUTE_FORCE_BELOW", 40)
    people = _people(40, 2, seed=6)
    store = _enrolled(tmp_path / "gallery", people)
    queries = np.stack([rows[1] for rows in people.values()])
    _assert_same_ranking(store, people, queries)
    for name in list(people)[:6]:  # 12 of 80 photos: past the tenth
        store.remove_person(name)
        del people[name]
    _assert_same_ranking(store, people, queries[6:])
    assert store._index.kind == "hnsw" and store._index._deleted == set() and len(store._index) == 68
