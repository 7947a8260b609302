"""`--device cuda` without CUDA is a clear error at start (CUDA is made unavailable here, so this runs on any host)."""

from __future__ import annotations

import pytest
import torch

from superserve.cli import main as cli_main
from training.zoo_build import resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available on this host"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="--device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize("command", [
    ["zoo", "build", "--ckpt", "{ckpt}", "--out", "{tmp}/zoo.json", "--device", "cuda", "--quiet"],
    ["zoo", "reprofile", "--zoo", "{zoo}", "--ckpt", "{ckpt}", "--device", "cuda", "--quiet"],
    ["zoo", "check", "--zoo", "{zoo}", "--device", "cuda"],
])
def test_zoo_commands_refuse_cuda_at_start(no_cuda, serving_assets, tmp_path, capsys, command):
    zoo, ckpt = serving_assets
    argv = [a.format(ckpt=ckpt, zoo=zoo, tmp=tmp_path) for a in command]
    assert cli_main(argv) == 2
    assert "CUDA is not available on this host" in capsys.readouterr().err
    assert not (tmp_path / "zoo.json").exists()


def test_serve_refuses_cuda_at_start(no_cuda, serving_assets):
    import argparse

    from superserve.server.app import Server, ServeConfig
    from superserve.server.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--device", "cuda"])).device == "cuda"
    assert config_from_args(parser.parse_args([])).device == "cpu"
    zoo, ckpt = serving_assets
    with pytest.raises(ValueError, match="CUDA is not available on this host"):
        Server(ServeConfig(port=0, metrics_port=None, zoo_path=zoo, checkpoint_path=ckpt, quiet=True,
                           reprofile="never", device="cuda")).start()


def test_worker_refuses_cuda_at_start(no_cuda, serving_assets, capsys):
    _, ckpt = serving_assets
    argv = ["worker", "--backend", "redis://127.0.0.1:1", "--checkpoint", str(ckpt), "--device", "cuda"]
    assert cli_main(argv) == 2
    assert "CUDA is not available on this host" in capsys.readouterr().err
