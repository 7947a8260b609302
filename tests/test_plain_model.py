"""Issue 20: a plain exported model (TorchScript model.pt + model.json) as a one-subnet zoo beside a supernet in the
repository: served by name over both doors with the declared normalisation, listed in the index, unloaded and loaded
again, its latency table measured once per host and cached; a torch.save'd module and a wrong declaration refused by
name."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as tc

from superserve.server.plain_model import read_declaration
from superserve.server.repository import ModelSource, RepositoryServer

MEAN, STD = 0.5, 0.25
DECLARATION = {"format": "torchscript", "input_shape": [1, 28, 28], "num_classes": 10, "accuracy": 0.93,
               "normalization": {"mean": [MEAN], "std": [STD], "raw_max": 255}, "max_batch_size": 4}


def _user_model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 13 * 13, 10)).eval()


def _write_plain(directory, module, declaration=DECLARATION, scripted: bool = True):
    directory.mkdir(parents=True)
    if scripted:
        torch.jit.script(module).save(str(directory / "model.pt"))
    else:  # what a user without TorchScript has: a pickled module
        torch.save(module, directory / "model.pt")
    (directory / "model.json").write_text(json.dumps(declaration))
    return directory


@pytest.fixture(scope="module")
def plain_repository(serving_assets, tmp_path_factory):
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    root = tmp_path_factory.mktemp("plain")
    _write_plain(root / "plain", _user_model())
    _write_plain(root / "pickled", _user_model(), scripted=False)
    _write_plain(root / "wrongclasses", _user_model(), {**DECLARATION, "num_classes": 7})
    sources = [ModelSource("mnist", serving_assets[0].parent), ModelSource("plain", root / "plain"),
               ModelSource("pickled", root / "pickled"), ModelSource("wrongclasses", root / "wrongclasses")]
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUPERSERVE_CACHE", str(cache))
        srv = RepositoryServer(ServeConfig(port=0, http_port=0, metrics_port=None, quiet=True, reprofile="never",
                                           engine=EngineConfig(default_slo_ms=600_000.0)), sources)
        srv.start()
        srv.wait_ready(60)
        yield srv, root, cache
        srv.stop()


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, 1, 28, 28)).astype(np.float32)


def _expected(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(_user_model()(torch.from_numpy(x)), dim=1).numpy()


def test_the_plain_model_serves_over_both_doors_beside_the_supernet(plain_repository):
    srv, _, _ = plain_repository
    assert set(srv.units) == {"mnist", "plain"}
    zoo = srv.units["plain"].zoo
    assert len(zoo.entries) == 1 and zoo.entries[0].accuracy == 0.93 and zoo.batch_sizes == (1, 2, 4)
    assert all(s.median_ms > 0 for s in zoo.entries[0].latency_ms.values())  # measured here, not the placeholder
    x = _x()
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    inp = tc.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("plain", [inp])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), _expected(x), rtol=1e-5, atol=1e-6)
    params = result.get_response().parameters
    assert params["subnet_accuracy"].double_param == pytest.approx(0.93)
    assert params["subnet_id"].string_param == zoo.entries[0].subnet_id
    meta = client.get_model_metadata("plain")
    assert {i.name: list(i.shape) for i in meta.inputs}["INPUT"] == [-1, 1, 28, 28]
    # Raw pixels (IMAGE, UINT8) are normalised as model.json declares: (x / 255 - mean) / std.
    pixels = np.random.default_rng(1).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    img = tc.InferInput("IMAGE", list(pixels.shape), "UINT8")
    img.set_data_from_numpy(pixels)
    got = client.infer("plain", [img]).as_numpy("PROBABILITIES")
    np.testing.assert_allclose(got, _expected((pixels / 255.0 - MEAN).astype(np.float32) / STD), rtol=1e-4,
                               atol=1e-5)
    client.close()
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "outputs": [{"name": "PROBABILITIES"}]}
    r = httpx.post(f"http://127.0.0.1:{srv.http_port}/v2/models/plain/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(3, 10), _expected(x), rtol=1e-5,
                               atol=1e-6)


def test_index_lists_it_and_bad_plain_models_are_refused_by_name(plain_repository):
    srv, _, _ = plain_repository
    listed = {m["name"]: m for m in httpx.post(f"http://127.0.0.1:{srv.http_port}/v2/repository/index").json()}
    assert listed["plain"]["state"] == "READY" and listed["mnist"]["state"] == "READY"
    assert listed["pickled"]["state"] == "UNAVAILABLE"
    assert "not a TorchScript file" in listed["pickled"]["reason"] and "torch.jit.script" in listed["pickled"]["reason"]
    assert listed["wrongclasses"]["state"] == "UNAVAILABLE" and "num_classes 7" in listed["wrongclasses"]["reason"]


def test_unload_and_load_the_plain_model_over_both_doors(plain_repository):
    srv, _, _ = plain_repository
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    client.unload_model("plain")
    assert "plain" not in srv.units
    assert {m.name: m.state for m in client.get_model_repository_index().models}["plain"] == "UNLOADED"
    r = httpx.post(f"http://127.0.0.1:{srv.http_port}/v2/models/plain/infer", timeout=60,
                   json={"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                     "data": [0.0] * 784}]})
    assert r.status_code == 404
    base = f"http://127.0.0.1:{srv.http_port}/v2/repository/models"
    assert httpx.post(f"{base}/plain/load", timeout=120).status_code == 200
    assert srv.units["plain"].table.kind == "cached"  # this host's table, measured at the first load
    assert client.is_model_ready("plain")
    client.unload_model("plain")
    client.load_model("plain")
    assert client.is_model_ready("plain")
    client.close()


def test_plain_model_refuses_worker_processes(plain_repository):
    from superserve.server.app import ServeConfig, Server

    _, root, _ = plain_repository
    srv = Server(ServeConfig(port=0, metrics_port=None, quiet=True, plain_model_dir=root / "plain", workers=1))
    with pytest.raises(ValueError, match="embedded worker threads"):
        srv.load_model()


@pytest.mark.parametrize("change, message", [
    ({"input_shape": [1, 28, 27]}, "only square images"),
    ({"input_shape": [1, 28]}, "input_shape must be"),
    ({"accuracy": None}, "accuracy must be"),
    ({"accuracy": 1.5}, "accuracy must be"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"format": "onnx"}, "format 'onnx' is not supported"),
    ({"normalization": {"mean": [0.1, 0.2], "std": [1.0]}}, "normalization needs 1"),
    ({"normalization": {"mean": [0.1], "std": [0.0]}}, "normalization needs 1"),
])
def test_declaration_is_checked(tmp_path, change, message):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**DECLARATION, **change}))
    with pytest.raises(ValueError, match=message):
        read_declaration(path)


def test_declaration_defaults(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"input_shape": [3, 32, 32], "num_classes": 100, "accuracy": 0.7}))
    decl = read_declaration(path)
    assert (decl.mean, decl.std, decl.raw_max) == ((0.0,) * 3, (1.0,) * 3, 255.0)
    assert decl.batch_sizes == (1, 2, 4, 8, 16, 32)


@pytest.mark.slow
def test_serve_command_with_models_and_a_repository_holding_a_plain_model(serving_assets, tmp_path):
    """The README's repository commands end to end: `superserve serve --model mnist=DIR --model-repository ROOT` with
    ROOT/mine a plain model; both answer over gRPC, the index lists both over HTTP, SIGTERM drains and exits 0."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import threading

    import socket

    root = tmp_path / "models"
    _write_plain(root / "mine", _user_model())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "superserve.cli", "serve", "--model",
                             f"mnist={serving_assets[0].parent}", "--model-repository", str(root), "--port", str(port),
                             "--http-port", "0", "--metrics-port", "-1", "--reprofile", "never"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "SUPERSERVE_CACHE": str(tmp_path / "cache")})
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("superserve: serving models"):
                serving.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(180), "".join(lines)
        line = next(x for x in lines if x.startswith("superserve: serving models"))
        assert "'mnist' (3 subnets)" in line and "'mine' (1 subnets)" in line, line
        http_port = int(re.search(r"HTTP/REST http://127\.0\.0\.1:(\d+)/v2", line).group(1))
        x = _x(2)
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tc.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("mine", [inp]).as_numpy("PROBABILITIES"), _expected(x), rtol=1e-5,
                                   atol=1e-6)
        assert client.infer("mnist", [inp]).as_numpy("PROBABILITIES").shape == (3, 10)
        client.close()
        listed = httpx.post(f"http://127.0.0.1:{http_port}/v2/repository/index", timeout=30).json()
        assert {m["name"]: m["state"] for m in listed} == {"mnist": "READY", "mine": "READY"}
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        reader.join(5)
    assert rc == 0, "".join(lines)


def _export(directory, dynamic_batch: bool):  # noqa: ANN001, ANN202
    directory.mkdir(parents=True)
    shapes = {"input": {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic_batch else None
    program = torch.export.export(_user_model(), (torch.zeros(2, 1, 28, 28),), dynamic_shapes=shapes)
    torch.export.save(program, str(directory / "model.pt2"))
    (directory / "model.json").write_text(json.dumps({**DECLARATION, "format": "torch_export"}))
    return directory


def test_a_torch_export_archive_is_read_too(tmp_path, monkeypatch):
    from superserve.server.plain_model import load_plain_model

    monkeypatch.setenv("SUPERSERVE_CACHE", str(tmp_path / "cache"))
    net, zoo, decl, _, reused = load_plain_model(_export(tmp_path / "dyn", True), torch.device("cpu"), 1)
    assert decl.format == "torch_export" and not reused and zoo.batch_sizes == (1, 2, 4)
    x = _x(4)
    with torch.inference_mode():
        got = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(got, _expected(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="dynamic batch dimension"):  # exported for batch 2 only
        load_plain_model(_export(tmp_path / "static", False), torch.device("cpu"), 1)
