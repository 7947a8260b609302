"""Checkpoints: weights, space and SubnetNorm tables survive a round trip; bad files give clear errors."""

import pytest
import torch

from supernet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from supernet.config import SubnetConfig, SupernetSpace
from supernet.network import SuperNet
from training.calibrate import calibrate_subnets

SMALL = SupernetSpace(stem_width=8, stage_widths=(8, 16), stage_strides=(2, 2), head_width=16,
                      depth_choices=(1, 2))


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    net = SuperNet(SMALL)
    subnets = [SubnetConfig.max(SMALL), SubnetConfig.min(SMALL)]
    calibrate_subnets(net, subnets, torch.randn(32, 1, 28, 28))
    path = tmp_path / "net.pt"
    save_checkpoint(net.eval(), path, meta={"method": "test"})
    return net, subnets, path


def test_round_trip_gives_identical_outputs(saved):
    net, subnets, path = saved
    loaded, data = load_checkpoint(path)
    assert data["meta"] == {"method": "test"} and loaded.space == SMALL
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        for s in subnets:
            assert torch.equal(net(x, s), loaded(x, s))
    assert set(loaded.norm_table.stats) == {s.subnet_id for s in subnets}


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_reported_corrupt(saved):
    _, _, path = saved
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_garbage_file_is_reported_corrupt(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_other_torch_file_is_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a superserve"):
        load_checkpoint(path)


def test_version_mismatch(saved):
    _, _, path = saved
    data = torch.load(path, weights_only=True)
    data["version"] = 99
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_space_mismatch(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match="different space"):
        load_checkpoint(path, space=SupernetSpace())


def test_save_is_atomic(saved, monkeypatch):
    net, _, path = saved
    good = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError):
        save_checkpoint(net, path)
    assert path.read_bytes() == good  # the old checkpoint is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind
