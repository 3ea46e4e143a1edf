"""Datasets, splits, caching, augmentation and model input."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import COLORS, error_of, load, make_folder, synthetic, write_csv, write_png
from lrtune.training import datasets as data
from lrtune.training.datasets import class_counts, load_imageset, split_indices
from lrtune.errors import LRTuneError

@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_LOADED", OrderedDict())


# --- built-ins -------------------------------------------------------------------


def test_digits_lt_is_long_tailed() -> None:
    digits = load_imageset("digits-lt", image_size=16)
    counts = class_counts(digits.labels, 10)
    assert digits.images.shape == (len(digits.labels), 16, 16, 3)
    assert digits.images.dtype == np.uint8 and digits.labels.dtype == np.int64
    assert digits.classes == [str(k) for k in range(10)]
    assert digits.name == "digits-lt" and digits.paths is None and digits.groups is None
    assert np.all(np.diff(counts) <= 0)
    assert 8 <= counts[0] / counts[9] <= 12
    assert (digits.images[..., 0] == digits.images[..., 2]).all()
    assert digits.images.max() > 200


def test_digits_lt_is_the_same_subset_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_imageset("digits-lt", image_size=12)
    monkeypatch.setattr(data, "_LOADED", OrderedDict())
    np.random.seed(123)
    second = load_imageset("digits-lt", image_size=12)
    assert first is not second
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_digits_is_the_whole_set() -> None:
    digits = load_imageset("digits", image_size=8)
    assert digits.images.shape == (1797, 8, 8, 3)
    assert class_counts(digits.labels, 10).min() > 170


# --- folders and manifests -----------------------------------------------------------


def test_image_folder_gives_sorted_classes_and_labels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {"dog": 3, "cat": 2})
    (root / "dog" / "notes.txt").write_text("not an image")
    pets = load(root, tmp_path)
    assert pets.classes == ["cat", "dog"]
    assert pets.paths == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert pets.labels.tolist() == [0, 0, 1, 1, 1]
    assert pets.name == "pets" and pets.groups is None and pets.skipped == []
    assert pets.images.shape == (5, 8, 8, 3)
    assert tuple(pets.images[0, 4, 4]) == COLORS["cat"]
    assert tuple(pets.images[4, 4, 4]) == COLORS["dog"]


def test_csv_manifest_gives_labels_and_groups(tmp_path: Path) -> None:
    make_folder(tmp_path / "img", {"cat": 2, "dog": 2})
    rows = ["img/dog/0.png,dog,a", "img/cat/0.png,cat,b", "img/cat/1.png,cat,c", "img/dog/1.png,dog,a"]
    manifest = write_csv(tmp_path / "pets.csv", ["path,label,group", *rows])
    pets = load(manifest, tmp_path)
    assert pets.classes == ["cat", "dog"]
    assert pets.labels.tolist() == [1, 0, 0, 1]
    assert pets.groups.tolist() == ["a", "b", "c", "a"]
    assert pets.paths[0] == "img/dog/0.png" and pets.name == "pets"
    assert tuple(pets.images[0, 0, 0]) == COLORS["dog"]


def test_csv_paths_are_relative_to_data_root(tmp_path: Path) -> None:
    images = make_folder(tmp_path / "images", {"cat": 2, "eel": 2})
    (tmp_path / "lists").mkdir()
    rows = ["cat/0.png,cat", "eel/0.png,eel", "cat/1.png,cat", "eel/1.png,eel"]
    manifest = write_csv(tmp_path / "lists" / "eels.csv", ["path,label", *rows])
    eels = load(manifest, tmp_path, data_root=str(images))
    assert eels.labels.tolist() == [0, 1, 0, 1]
    assert tuple(eels.images[1, 3, 3]) == COLORS["eel"]


# --- decoding once and caching ------------------------------------------------------


@pytest.fixture
def open_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real_open = Image.open

    def counting_open(*args, **kwargs):
        calls[0] += 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def test_images_are_decoded_once_per_process(tmp_path: Path, open_count: list[int]) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 3})
    first = load(root, tmp_path)
    second = load(root, tmp_path)
    assert second is first
    assert open_count[0] == 5


def test_disk_cache_is_reused_by_a_fresh_process(
    tmp_path: Path, open_count: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 3})
    first = load(root, tmp_path, cache="disk")
    monkeypatch.setattr(data, "_LOADED", OrderedDict())
    second = load(root, tmp_path, cache="disk")
    assert open_count[0] == 5
    assert second is not first
    np.testing.assert_array_equal(first.images, second.images)


@pytest.mark.parametrize("cache", ["auto", "memory", "disk"])
def test_a_set_shared_by_several_processes_is_decoded_once_into_the_disk_cache(
    tmp_path: Path, open_count: list[int], monkeypatch: pytest.MonkeyPatch, cache: str
) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 3})
    first = load(root, tmp_path, cache=cache, shared=True)
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1
    monkeypatch.setattr(data, "_LOADED", OrderedDict())  # what another process sees
    second = load(root, tmp_path, cache=cache, shared=True)
    assert open_count[0] == 5
    np.testing.assert_array_equal(first.images, second.images)
    assert isinstance(second.images, np.memmap) == (cache != "memory")  # memory: each process's own copy


def test_disk_cache_round_trips_through_a_memmap(tmp_path: Path) -> None:
    make_folder(tmp_path / "img", {"cat": 2, "dog": 2})
    rows = ["img/dog/0.png,dog,a", "img/cat/0.png,cat,b", "img/cat/1.png,cat,c", "img/dog/1.png,dog,d"]
    manifest = write_csv(tmp_path / "pets.csv", ["path,label,group", *rows])
    in_memory = load(manifest, tmp_path)
    on_disk = load(manifest, tmp_path, cache="disk")
    assert isinstance(on_disk.images, np.memmap) and not on_disk.images.flags.writeable
    assert not isinstance(in_memory.images, np.memmap)
    (array_file,) = (tmp_path / "cache").glob("*.u8")
    assert array_file.with_suffix(".json").is_file()
    assert array_file.stat().st_size == in_memory.images.nbytes
    assert list((tmp_path / "cache").glob("*.tmp")) == []
    np.testing.assert_array_equal(on_disk.images, in_memory.images)
    np.testing.assert_array_equal(on_disk.labels, in_memory.labels)
    np.testing.assert_array_equal(on_disk.groups, in_memory.groups)
    assert (on_disk.classes, on_disk.paths, on_disk.name) == (in_memory.classes, in_memory.paths, in_memory.name)


def test_disk_cache_is_rebuilt_when_a_file_changes(
    tmp_path: Path, open_count: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    load(root, tmp_path, cache="disk")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "cat" / "0.png")
    monkeypatch.setattr(data, "_LOADED", OrderedDict())
    changed = load(root, tmp_path, cache="disk")
    assert open_count[0] == 8
    assert tuple(changed.images[0, 0, 0]) == (9, 9, 9)


def test_auto_cache_goes_to_disk_when_the_array_is_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    assert not isinstance(load(root, tmp_path, cache="auto").images, np.memmap)
    monkeypatch.setattr(data, "_LOADED", OrderedDict())
    monkeypatch.setattr(data, "_memory_budget", lambda: 100)
    assert isinstance(load(root, tmp_path, cache="auto").images, np.memmap)


# --- bad input ---------------------------------------------------------------------------


def test_missing_data_says_what_is_expected(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nowhere", tmp_path)
    assert "nowhere" in message and "digits-lt" in message and ".csv" in message


def test_class_folder_without_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2})
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("no pictures")
    assert "dog" in error_of(root, tmp_path)


def test_single_class(tmp_path: Path) -> None:
    message = error_of(make_folder(tmp_path / "pets", {"cat": 3}), tmp_path)
    assert "'cat'" in message and "one class" in message


def test_class_with_one_image(tmp_path: Path) -> None:
    message = error_of(make_folder(tmp_path / "pets", {"cat": 3, "dog": 1}), tmp_path)
    assert "'dog'" in message and "dog/0.png" in message


def test_csv_missing_column(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "pets.csv", ["path,group", "a.png,x"]), tmp_path)
    assert "'label'" in message and "path, group" in message


@pytest.mark.parametrize("lines", [[], ["path,label"]], ids=["empty file", "header only"])
def test_csv_without_rows(tmp_path: Path, lines: list[str]) -> None:
    manifest = tmp_path / "pets.csv"
    manifest.write_text("\n".join(lines))
    assert "pets.csv" in error_of(manifest, tmp_path)


@pytest.mark.parametrize("bad_path", ["/etc/passwd", "../outside.png", "img/../../outside.png"])
def test_csv_path_outside_its_root(tmp_path: Path, bad_path: str) -> None:
    make_folder(tmp_path / "lists" / "img", {"cat": 2})
    write_png(tmp_path / "outside.png", (1, 2, 3))
    manifest = write_csv(tmp_path / "lists" / "pets.csv", ["path,label", "img/cat/0.png,cat", f"{bad_path},dog"])
    message = error_of(manifest, tmp_path)
    assert "line 3" in message and bad_path in message


def test_csv_path_to_missing_file(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "pets.csv", ["path,label", "nope.png,cat"])
    message = error_of(manifest, tmp_path)
    assert "line 2" in message and "nope.png" in message


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "cat" / "broken.png").write_bytes(b"definitely not a png")
    message = error_of(root, tmp_path)
    assert "broken.png" in message and "--skip-bad-images" in message


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_skip_bad_images_counts_what_it_skipped(tmp_path: Path, cache: str) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "cat" / "1broken.png").write_bytes(b"nope")
    (root / "dog" / "1broken.jpg").write_bytes(b"")
    pets = load(root, tmp_path, cache=cache, skip_bad_images=True)
    assert pets.skipped == ["cat/1broken.png", "dog/1broken.jpg"]
    assert pets.paths == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert pets.labels.tolist() == [0, 0, 1, 1]
    assert tuple(pets.images[1, 0, 0]) == COLORS["cat"] and tuple(pets.images[3, 0, 0]) == COLORS["dog"]


def test_disk_cache_does_not_hide_bad_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "cat" / "broken.png").write_bytes(b"nope")
    load(root, tmp_path, cache="disk", skip_bad_images=True)
    monkeypatch.setattr(data, "_LOADED", OrderedDict())
    assert "broken.png" in error_of(root, tmp_path, cache="disk")


def test_skipping_that_leaves_one_image_in_a_class(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "dog" / "0.png").write_bytes(b"nope")
    assert "'dog'" in error_of(root, tmp_path, skip_bad_images=True)


# --- splits -----------------------------------------------------------------------------


def test_plain_split_is_stratified_and_deterministic() -> None:
    digits = load_imageset("digits-lt", image_size=8)
    train, val = split_indices(digits, val_fraction=0.2, seed=0)
    again, _ = split_indices(digits, val_fraction=0.2, seed=0)
    other, _ = split_indices(digits, val_fraction=0.2, seed=1)
    assert train.dtype == np.int64 and np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(digits.labels)
    assert len(val) == round(0.2 * len(digits.labels))
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    share = class_counts(digits.labels[val], 10) / class_counts(digits.labels, 10)
    assert np.all(share > 0.1) and np.all(share < 0.3)


def test_plain_split_holds_out_at_least_one_image_per_class() -> None:
    _, val = split_indices(synthetic([0, 0, 1, 1, 2, 2, 2, 2, 2, 2]), val_fraction=0.1, seed=0)
    assert len(val) == 3


def test_plain_split_that_starves_training() -> None:
    with pytest.raises(LRTuneError, match="synthetic"):
        split_indices(synthetic([0, 0, 0, 1, 1, 1]), val_fraction=0.9, seed=0)


def test_group_split_keeps_groups_apart_and_is_stratified() -> None:
    labels, groups = [], []
    for g in range(40):
        label = 0 if g < 20 else (1 if g < 30 else 2)
        labels += [label] * 3
        groups += [f"patient{g}"] * 3
    imageset = synthetic(labels, groups)
    train, val = split_indices(imageset, val_fraction=0.25, seed=0)
    again, _ = split_indices(imageset, val_fraction=0.25, seed=0)
    np.testing.assert_array_equal(train, again)
    assert set(imageset.groups[train]).isdisjoint(imageset.groups[val])
    assert len(train) + len(val) == len(labels)
    share = class_counts(imageset.labels[val], 3) / class_counts(imageset.labels, 3)
    assert np.all(share >= 0.1) and np.all(share <= 0.4)


def test_group_split_that_leaves_a_class_out_of_training() -> None:
    labels = [0] * 16 + [1] * 2
    groups = [f"g{i // 2}" for i in range(16)] + ["only-ones", "only-ones"]
    imageset = synthetic(labels, groups)
    messages = []
    for seed in range(30):
        try:
            split_indices(imageset, val_fraction=0.5, seed=seed)
        except LRTuneError as exc:
            messages.append(str(exc))
    assert messages and all("'1'" in m for m in messages)


def test_group_split_with_too_few_groups() -> None:
    with pytest.raises(LRTuneError, match="synthetic"):
        split_indices(synthetic([0, 0, 1, 1], ["a", "a", "b", "b"]), val_fraction=0.2, seed=0)


def test_decoding_makes_odd_images_upright_rgb_squares_and_training_sees_the_same(tmp_path):
    from imagefiles import upright_top_red, write_odd_images

    from lrtune.training.datasets import decode_image

    for name in write_odd_images(tmp_path / "odd"):
        image = decode_image(tmp_path / "odd" / name, 8)
        assert image.shape == (8, 8, 3) and image.dtype == np.uint8, name
    rotated = decode_image(tmp_path / "odd" / "rotated.jpg", 8).astype(int)
    assert rotated[0, :, 0].mean() > 200 and rotated[0, :, 2].mean() < 60  # red on top: EXIF applied
    assert rotated[-1, :, 2].mean() > 200 and rotated[-1, :, 0].mean() < 60
    deep = decode_image(tmp_path / "odd" / "deep16.png", 20)[..., 0].astype(int)
    assert deep.min() == 0 and deep.max() > 200  # 16-bit values scaled, not clipped to white
    assert decode_image(tmp_path / "odd" / "gray.png", 4).tolist() == [[[128] * 3] * 4] * 4
    for label in ("up", "down"):
        for i in range(2):
            upright_top_red(tmp_path / "set" / label / f"{i}.jpg")
    imageset = load_imageset(str(tmp_path / "set"), image_size=8, cache="memory")
    assert np.array_equal(imageset.images[0], decode_image(tmp_path / "set" / "down" / "0.jpg", 8))


def test_a_split_among_some_images_keeps_to_them_and_names_its_part() -> None:
    labels, groups = [], []
    for g in range(60):
        labels += [g % 3] * 2
        groups += [f"person{g}"] * 2
    imageset = synthetic(labels, groups)
    rest, test = split_indices(imageset, val_fraction=0.2, seed=5, part="test")
    train, val = split_indices(imageset, val_fraction=0.25, seed=0, among=rest)
    assert sorted(np.r_[train, val, test].tolist()) == list(range(len(labels)))
    for a, b in ((train, val), (train, test), (val, test)):
        assert set(imageset.groups[a]).isdisjoint(imageset.groups[b])
    with pytest.raises(LRTuneError, match="with a test fraction of 0.9"):
        split_indices(synthetic([0, 0, 0, 1, 1, 1]), val_fraction=0.9, seed=0, part="test")


def test_the_image_cache_reserves_its_space_first_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from lrtune.errors import NoSpaceError
    from lrtune.training import datasets as datasets_mod

    path = tmp_path / "cache" / "x.u8.tmp"
    path.parent.mkdir()
    datasets_mod._reserve(path, 3 * 2**20)
    assert path.stat().st_size == 3 * 2**20 and path.stat().st_blocks * 512 >= 3 * 2**20  # allocated, not sparse

    def full(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets_mod.os, "posix_fallocate", full)
    with pytest.raises(NoSpaceError, match=f"^no space left under {path.parent} for the image cache .*--cache memory$"):
        datasets_mod._reserve(path, 3 * 2**20)


def test_a_class_too_rare_for_the_grouped_split_is_one_note_not_sklearns_warning() -> None:
    import warnings

    labels, groups = [], []
    for g in range(30):  # 30 people of class 0, and 2 people (4 images) of the rare class 1
        labels += [0] * 3
        groups += [f"p{g}"] * 3
    labels += [1, 1, 1, 1]
    groups += ["r1", "r1", "r2", "r2"]
    imageset = synthetic(labels, groups)
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's UserWarning would fail here
        train, val = split_indices(imageset, val_fraction=0.2, seed=0, say=said.append)
    (line,) = said
    in_val = int((imageset.labels[val] == 1).sum())
    assert line.startswith(f"note: class '1' (4 images, {in_val} in validation) has fewer images than the 5 folds")
    assert "each group stays on one side" in line
