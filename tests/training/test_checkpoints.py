import os
import sys
import threading

import pytest
import torch

from lrtune.errors import NoSpaceError
from lrtune.training import checkpoints


def test_pack_round_trips_nested_state_through_a_weights_only_load(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "run": {"epoch": 3, "curves": [0.1, 0.2]}}
    path = tmp_path / "last.pt"
    checkpoints.save(path, {"model": checkpoints.pack(state["model"]), "optimizer": checkpoints.pack(state["optimizer"]),
                            "run": state["run"]})
    loaded = checkpoints.load(path)
    model_back, opt_back = checkpoints.unpack(loaded["model"]), checkpoints.unpack(loaded["optimizer"])
    assert model_back.keys() == state["model"].keys()
    for key, value in state["model"].items():
        assert model_back[key].dtype == value.dtype and torch.equal(model_back[key], value)
    assert opt_back["param_groups"] == state["optimizer"]["param_groups"]
    for index, slots in state["optimizer"]["state"].items():
        for name, value in slots.items():
            assert torch.equal(opt_back["state"][index][name], value)
    assert loaded["run"] == {"epoch": 3, "curves": [0.1, 0.2]}
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(opt_back)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "t" / "best.pt"
    checkpoints.save(path, {"x": torch.ones(2)})
    checkpoints.save(path, {"x": torch.zeros(2)})
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]
    assert torch.equal(checkpoints.load(path)["x"], torch.zeros(2))


def test_adopt_moves_a_trials_files_to_its_retry(tmp_path):
    checkpoints.save(checkpoints.trial_dir(tmp_path, 3) / checkpoints.LAST, {"x": torch.ones(1)})
    assert checkpoints.adopt(tmp_path, 3, 7)
    assert (checkpoints.trial_dir(tmp_path, 7) / checkpoints.LAST).is_file()
    assert not checkpoints.trial_dir(tmp_path, 3).exists()
    assert not checkpoints.adopt(tmp_path, 4, 8)


def test_writer_saves_in_order_and_raises_its_error_on_the_caller(tmp_path):
    writer = checkpoints.Writer()
    path = tmp_path / "trials" / "0" / "last.pt"
    for epoch in range(1, 4):
        writer.save(path, {"run": {"epoch": epoch}})
    writer.wait()
    assert checkpoints.load(path)["run"] == {"epoch": 3}
    (tmp_path / "file").write_text("not a folder")
    writer.save(tmp_path / "file" / "last.pt", {"run": {"epoch": 4}})
    with pytest.raises(OSError):
        writer.wait()
    writer.close()
    assert checkpoints.load(path)["run"] == {"epoch": 3}


def test_pack_copies_tensors_so_later_training_does_not_change_the_checkpoint():
    weight = torch.ones(3)
    packed = checkpoints.pack({"w": weight, "step": torch.tensor(1.0), "n": torch.tensor([2, 3])})
    weight.add_(1)
    back = checkpoints.unpack(packed)
    assert torch.equal(back["w"], torch.ones(3)) and back["step"].item() == 1.0
    assert back["n"].tolist() == [2, 3]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is a Linux feature")
def test_the_writer_thread_yields_the_cpu_to_training_but_the_process_does_not():
    seen = {}

    def probe():
        checkpoints._lower_priority()
        seen["writer"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert seen["writer"] == 19
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_a_write_on_a_full_disk_says_where_and_how_much_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(state, path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full)
    state = {"model": {"w": torch.zeros(1000)}}  # 4 kB
    with pytest.raises(NoSpaceError) as caught:
        checkpoints.save(tmp_path / "trials" / "0" / "last.pt", state)
    assert str(caught.value).startswith(f"no space left under {tmp_path / 'trials' / '0'} for its last.pt (")
    assert "it needs about 4.0 kB" in str(caught.value)
    assert list((tmp_path / "trials" / "0").iterdir()) == []


def test_any_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    def broken(state, path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoints.torch, "save", broken)
    with pytest.raises(OSError, match="Input/output error"):
        checkpoints.save(tmp_path / "last.pt", {"x": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "random", "not a dict"])
def test_a_checkpoint_that_cannot_be_read_is_named_and_can_be_set_aside(tmp_path, damage):
    path = tmp_path / "trials" / "3" / "last.pt"
    checkpoints.save(path, {"model": checkpoints.pack({"w": torch.randn(10_000)})})
    if damage == "truncated":
        with open(path, "r+b") as file:
            file.truncate(1000)
    elif damage == "random":
        path.write_bytes(os.urandom(5000))
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(checkpoints.UnreadableCheckpoint, match=f"^{path}: "):
        checkpoints.load_checked(path)
    size = path.stat().st_size
    aside = checkpoints.set_aside(tmp_path, path, 3)
    assert not path.exists() and aside.parent == tmp_path / checkpoints.UNREADABLE
    assert aside.name.startswith("trial-3-") and aside.stat().st_size == size
    path.write_bytes(b"again")
    assert checkpoints.set_aside(tmp_path, path, 3) != aside  # a second one never replaces the first


def test_sweep_removes_only_the_temporary_files_of_dead_processes_of_this_host(tmp_path):
    import socket
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    folder = tmp_path / "trials" / "2"
    folder.mkdir(parents=True)
    host = socket.gethostname()
    dead = folder / f".last.pt.{proc.pid}@{host}.tmp"
    old_style = folder / f".best.pt.{proc.pid}.tmp"
    alive = folder / f".last.pt.{os.getpid()}@{host}.tmp"
    elsewhere = folder / f".last.pt.{proc.pid}@another-host.tmp"
    keep = folder / "last.pt"
    for path in (dead, old_style, alive, elsewhere, keep):
        path.write_bytes(b"x")
    assert sorted(checkpoints.sweep(tmp_path)) == sorted([dead, old_style])
    assert sorted(folder.iterdir()) == sorted([alive, elsewhere, keep])
