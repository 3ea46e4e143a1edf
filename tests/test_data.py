"""Datasets, splits, caching, augmentation and model input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from lrtune import data
from lrtune.data import ImageSet, class_counts, load_imageset, split_indices
from lrtune.errors import LRTuneError

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}
NO_AUGMENT = dict(hflip=0.0, affine=0.0, color=0.0, rare_affine=0.0)
AUGMENT = dict(hflip=0.5, affine=0.5, color=0.5, rare_affine=0.9)


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_LOADED", {})


def write_png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), color).save(path)


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            write_png(root / name / f"{i}.png", COLORS[name])
    return root


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def load(source: Path, tmp_path: Path, **kwargs) -> ImageSet:
    kwargs.setdefault("cache", "memory")
    return load_imageset(str(source), image_size=8, cache_dir=tmp_path / "cache", **kwargs)


def error_of(source: Path | str, tmp_path: Path, **kwargs) -> str:
    with pytest.raises(LRTuneError) as info:
        load(Path(source), tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def synthetic(labels: list[int], groups: list[str] | None = None) -> ImageSet:
    n = len(labels)
    return ImageSet(
        images=np.zeros((n, 4, 4, 3), np.uint8),
        labels=np.asarray(labels, np.int64),
        classes=[str(k) for k in range(max(labels) + 1)],
        groups=None if groups is None else np.asarray(groups),
        paths=None,
        skipped=[],
        name="synthetic",
    )


def one_epoch(loader: torch.utils.data.DataLoader, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    loader.dataset.reseed(seed)
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


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
    monkeypatch.setattr(data, "_LOADED", {})
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
    monkeypatch.setattr(data, "_LOADED", {})
    second = load(root, tmp_path, cache="disk")
    assert open_count[0] == 5
    assert second is not first
    np.testing.assert_array_equal(first.images, second.images)


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
    monkeypatch.setattr(data, "_LOADED", {})
    changed = load(root, tmp_path, cache="disk")
    assert open_count[0] == 8
    assert tuple(changed.images[0, 0, 0]) == (9, 9, 9)


def test_auto_cache_goes_to_disk_when_the_array_is_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    assert not isinstance(load(root, tmp_path, cache="auto").images, np.memmap)
    monkeypatch.setattr(data, "_LOADED", {})
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
    monkeypatch.setattr(data, "_LOADED", {})
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


# --- training loader ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train() -> tuple[ImageSet, np.ndarray]:
    digits = load_imageset("digits-lt", image_size=16)
    train, _ = split_indices(digits, val_fraction=0.2, seed=0)
    return digits, train


def test_train_transform_keeps_uint8_hwc() -> None:
    transform = data.train_transform(hflip=1.0, affine=1.0, color=1.0)
    assert len(transform.transforms) == 3
    assert len(data.train_transform(hflip=0.0, affine=0.5, color=0.0).transforms) == 1
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = transform(image=image)["image"]
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, image)


@pytest.mark.parametrize("balance", ["none", "sampler", "oversample"])
def test_epoch_repeats_after_reseeding(digits_train: tuple[ImageSet, np.ndarray], balance: str) -> None:
    digits, train = digits_train
    loader = data.make_train_loader(digits, train[:200], batch_size=32, balance=balance, **AUGMENT)
    images, labels = one_epoch(loader, 1)
    assert images.dtype == torch.uint8 and images.shape[1:] == (16, 16, 3) and labels.dtype == torch.int64
    again_images, again_labels = one_epoch(loader, 1)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_images, _ = one_epoch(loader, 2)
    assert not torch.equal(images, other_images)


def test_epoch_repeats_with_worker_processes(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    loader = data.make_train_loader(digits, train[:64], batch_size=16, balance="none", num_workers=2, **AUGMENT)
    first, _ = one_epoch(loader, 3)
    second, _ = one_epoch(loader, 3)
    assert torch.equal(first, second)
    assert not torch.equal(first, one_epoch(loader, 4)[0])


def test_augmentation_changes_images_only_when_asked(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    plain = data.TrainDataset(digits, train, data.train_transform(hflip=0.0, affine=0.0, color=0.0))
    image, label = plain[5]
    assert torch.equal(image, torch.from_numpy(digits.images[train[5]])) and label == digits.labels[train[5]]
    augmented = data.TrainDataset(digits, train, data.train_transform(hflip=0.0, affine=1.0, color=1.0))
    assert not torch.equal(augmented[5][0], image)


def test_dataset_on_a_memmap_pickles_without_its_pixels(tmp_path: Path) -> None:
    pets = load(make_folder(tmp_path / "pets", {"cat": 20, "dog": 20}), tmp_path, cache="disk")
    dataset = data.TrainDataset(pets, np.arange(40), data.train_transform(hflip=0.0, affine=0.0, color=0.0))
    blob = pickle.dumps(dataset)
    copy = pickle.loads(blob)
    assert len(blob) < pets.images.nbytes
    assert isinstance(copy.images, np.memmap)
    assert torch.equal(copy[39][0], dataset[39][0])


def test_drop_last_only_when_there_is_more_than_one_batch(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    assert data.make_train_loader(digits, train, batch_size=32, balance="none", **NO_AUGMENT).drop_last
    few = data.make_train_loader(digits, train[:20], batch_size=32, balance="none", **NO_AUGMENT)
    assert not few.drop_last
    assert len(one_epoch(few, 0)[1]) == 20


def test_sampler_draws_rare_classes_more_often(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train

    def share_of_rarest(balance: str) -> float:
        loader = data.make_train_loader(digits, train, batch_size=64, balance=balance, **NO_AUGMENT)
        labels = torch.cat([one_epoch(loader, seed)[1] for seed in range(3)])
        return float((labels == 9).float().mean())

    natural = share_of_rarest("none")
    balanced = share_of_rarest("sampler")
    assert natural < 0.04
    assert balanced > 3 * natural and 0.05 < balanced < 0.15


def test_oversample_lifts_rare_classes_to_the_median(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    before = class_counts(digits.labels[train], 10)
    median = np.median(before)
    loader = data.make_train_loader(digits, train, batch_size=32, balance="oversample", **AUGMENT)
    dataset = loader.dataset
    after = class_counts(digits.labels[dataset.indices], 10)
    assert np.all(after >= median)
    np.testing.assert_array_equal(after[before >= median], before[before >= median])
    assert dataset.rare.sum() == len(dataset) - len(train) == (after - before).sum()
    assert not dataset.rare[: len(train)].any()
    assert set(dataset.indices[dataset.rare]) <= set(train[digits.labels[train] >= 5])


def test_unknown_balance(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, train = digits_train
    with pytest.raises(LRTuneError, match="weights"):
        data.make_train_loader(digits, train, batch_size=8, balance="weights", **NO_AUGMENT)


# --- evaluation and model input --------------------------------------------------------


def test_eval_batches_are_in_order_and_unaugmented(digits_train: tuple[ImageSet, np.ndarray]) -> None:
    digits, _ = digits_train
    idx = np.array([3, 1, 4, 15, 9, 2, 6])
    batches = list(data.iter_eval_batches(digits, idx, 3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images, torch.from_numpy(digits.images[idx]))
    assert labels.tolist() == digits.labels[idx].tolist()


def test_eval_batches_from_a_memmap(tmp_path: Path) -> None:
    pets = load(make_folder(tmp_path / "pets", {"cat": 2, "dog": 2}), tmp_path, cache="disk")
    [(images, labels)] = list(data.iter_eval_batches(pets, np.arange(4), 8))
    assert images.shape == (4, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1]


def test_model_input_is_normalized_nchw() -> None:
    batch = torch.zeros(2, 5, 5, 3, dtype=torch.uint8)
    batch[1] = 255
    x = data.to_model_input(batch, "cpu")
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)
    std = torch.tensor(IMAGENET_DEFAULT_STD)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32 and x.is_contiguous()
    torch.testing.assert_close(x[0, :, 2, 2], -mean / std)
    torch.testing.assert_close(x[1, :, 0, 4], (1 - mean) / std)
    assert batch.max() == 255


def test_model_input_in_channels_last_and_bfloat16() -> None:
    batch = torch.randint(0, 256, (4, 6, 6, 3), dtype=torch.uint8)
    x = data.to_model_input(batch, torch.device("cpu"), channels_last=True, dtype=torch.bfloat16)
    assert x.shape == (4, 3, 6, 6) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    reference = data.to_model_input(batch, "cpu")
    torch.testing.assert_close(x.float(), reference, atol=0.05, rtol=0.02)


def test_class_counts() -> None:
    assert class_counts(np.array([2, 0, 2]), 4).tolist() == [1, 0, 2, 0]
