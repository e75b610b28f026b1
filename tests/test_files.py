"""The one atomic writer and the one image list (ghostface_keras.core.files)."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import IMAGE_EXTENSIONS, atomic_output, list_images, temporary_path, write_atomically


def test_temporary_names_are_unique_hidden_siblings_keeping_the_suffix(tmp_path):
    target = tmp_path / "model.keras"
    names = {temporary_path(target) for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(".model.keras.") and name.suffix == ".keras"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_atomically(tmp_path / "out.txt", "old\n")

    def broken(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, broken)
    assert target.read_text() == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.txt"]


def test_a_writer_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="produced nothing"):
        write_atomically(tmp_path / "none.bin", lambda temporary: None)
    assert list(tmp_path.iterdir()) == []


def test_folders_replace_folders_in_one_step(tmp_path):
    target = tmp_path / "saved_model"
    for version in ("1", "2"):
        with atomic_output(target) as staging:
            staging.mkdir()
            (staging / "version.txt").write_text(version)
    assert (target / "version.txt").read_text() == "2"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved_model"]


def test_new_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        mode = stat.S_IMODE(write_atomically(tmp_path / "report.json", "{}").stat().st_mode)
    finally:
        os.umask(previous)
    assert mode == 0o644


def _write_many(arguments: tuple[str, int]) -> int:
    target, writer = arguments
    for round_index in range(40):
        write_atomically(target, (f"{writer}:{round_index}:" + "x" * 20000 + "\n").encode())
    return writer


def test_concurrent_writers_leave_one_complete_result(tmp_path):
    target = tmp_path / "shared.txt"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert sorted(pool.map(_write_many, [(str(target), writer) for writer in range(4)])) == [0, 1, 2, 3]
    text = target.read_text()
    writer, round_index, payload = text.rstrip("\n").split(":")
    assert writer in "0123" and round_index == "39" and payload == "x" * 20000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shared.txt"]


def test_list_images_is_the_one_extension_list(tmp_path):
    for name in ("a/1.JPG", "a/2.png", "b/3.tiff", "b/notes.txt", "b/.hidden.jpg", "c.webp"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    assert [str(path.relative_to(tmp_path)) for path in list_images(tmp_path)] == ["a/1.JPG", "a/2.png", "b/3.tiff",
                                                                                   "c.webp"]
    assert [path.name for path in list_images(tmp_path, recursive=False)] == ["c.webp"]
    assert ".jpg" in IMAGE_EXTENSIONS and ".txt" not in IMAGE_EXTENSIONS
    with pytest.raises(DataError, match="not a directory"):
        list_images(tmp_path / "c.webp")


def test_every_reader_of_image_folders_sees_the_same_files(tmp_path):
    """Alignment, int8 calibration, evaluation folders and the training index list the same images."""
    from PIL import Image

    from ghostface_keras.faces.align_folder import list_images as align_list
    from ghostface_keras.data import scan_image_folder
    from ghostface_keras.evaluation import list_identity_folder
    from ghostface_keras.export import list_images as export_list

    for index, extension in enumerate((".jpg", ".png", ".bmp", ".tif", ".webp", ".gif", ".ppm")):
        path = tmp_path / f"id{index % 2}" / f"{index}{extension}"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (index * 30, 0, 0)).save(path)
    expected = sorted(str(path.relative_to(tmp_path)) for path in list_images(tmp_path))
    assert len(expected) == 7
    assert sorted(str(path.relative_to(tmp_path)) for path in align_list(tmp_path)) == expected
    assert sorted(str(path.relative_to(tmp_path)) for path in export_list(tmp_path)) == expected
    assert sorted(str(Path(path).relative_to(tmp_path)) for path in list_identity_folder(tmp_path)[0]) == expected
    index = scan_image_folder(tmp_path)
    assert sorted(str(Path(path).relative_to(tmp_path)) for path in index.paths) == expected


def test_training_and_evaluation_label_an_identity_folder_alike(tmp_path):
    """One scanner: natural order (9 before 10), empty and hidden identity folders get no label."""
    from PIL import Image

    from ghostface_keras.data import scan_image_folder
    from ghostface_keras.evaluation import list_identity_folder

    for name in ("10", "9", "empty", ".hidden", "a2", "a10"):
        (tmp_path / name).mkdir()
        if name != "empty":
            Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    paths, labels, names = list_identity_folder(tmp_path)
    assert names == ["9", "10", "a2", "a10"] and labels.tolist() == [0, 1, 2, 3]
    index = scan_image_folder(tmp_path)
    assert (index.class_names, index.labels.tolist()) == (names, labels.tolist())
    assert [Path(path) for path in index.paths] == paths
