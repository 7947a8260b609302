"""Issue 20: a model repository. Two models (the fixture supernet and one with other weights) and a broken model
directory behind one server: routing by name over both doors, the index with the broken one reported by name, load
and unload over gRPC and HTTP, per-model engines and metrics labelled by model."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc

from superserve.server.repository import ModelSource, RepositoryServer, parse_model_flag, scan_repository


@pytest.fixture(scope="module")
def repository(serving_assets, tmp_path_factory):
    from serving_fixture import build_serving_assets

    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    root = tmp_path_factory.mktemp("models")
    build_serving_assets(root / "other", seed=1)  # the same architecture, other weights
    (root / "broken").mkdir()
    (root / "broken" / "zoo.json").write_text("{not a zoo")
    (root / "broken" / "supernet.pt").write_bytes(b"nope")
    sources = [ModelSource("mnist", serving_assets[0].parent), *scan_repository(root)]
    srv = RepositoryServer(ServeConfig(port=0, http_port=0, metrics_port=None, quiet=True, reprofile="never",
                                       engine=EngineConfig(default_slo_ms=600_000.0)), sources)
    srv.start()
    srv.wait_ready(60)
    yield srv
    srv.stop()


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 1, 28, 28)).astype(np.float32)


def _grpc(srv, model: str, x: np.ndarray) -> np.ndarray:
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    inp = tc.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        return client.infer(model, [inp], parameters={"min_accuracy": 0.98}).as_numpy("PROBABILITIES")
    finally:
        client.close()


def _http(srv, model: str, x: np.ndarray) -> httpx.Response:
    body = {"parameters": {"min_accuracy": 0.98},
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "outputs": [{"name": "PROBABILITIES"}]}
    return httpx.post(f"http://127.0.0.1:{srv.http_port}/v2/models/{model}/infer", json=body, timeout=60)


def test_flags_and_directory_scan(tmp_path):
    assert parse_model_flag("a=/x/y") == ModelSource("a", __import__("pathlib").Path("/x/y"))
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_model_flag("just-a-path")
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    assert [m.name for m in scan_repository(tmp_path)] == ["a", "b"]
    with pytest.raises(ValueError, match="supernet.pt"):
        ModelSource("a", tmp_path / "a").checkpoint_path


def test_two_models_route_by_name_over_both_doors_and_the_broken_one_is_reported(repository):
    srv = repository
    assert set(srv.units) == {"mnist", "other"} and "broken" in srv.failed
    assert srv.units["mnist"].engine is not srv.units["other"].engine  # a queue and policy per model
    x = _x()
    mnist, other = _grpc(srv, "mnist", x), _grpc(srv, "other", x)
    assert not np.allclose(mnist, other)  # other weights: the call went to the other model
    for name, expected in (("mnist", mnist), ("other", other)):
        r = _http(srv, name, x)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 10), expected, rtol=1e-5,
                                   atol=1e-6)
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert index["mnist"] == ("READY", "") and index["other"] == ("READY", "")
    assert index["broken"][0] == "UNAVAILABLE" and "supernet.pt is corrupt" in index["broken"][1]
    assert client.is_model_ready("mnist") and not client.is_model_ready("broken") and client.is_server_ready()
    with pytest.raises(tc.InferenceServerException, match="not loaded"):
        client.get_model_metadata("broken")
    client.close()
    listed = httpx.post(f"http://127.0.0.1:{srv.http_port}/v2/repository/index").json()
    assert {m["name"]: m["state"] for m in listed} == {"mnist": "READY", "other": "READY", "broken": "UNAVAILABLE"}
    r = _http(srv, "broken", x)
    assert r.status_code == 404 and "is not loaded" in r.json()["error"]


def test_metrics_are_labelled_by_model(repository):
    srv = repository
    before = {m: srv.metrics.registry.get_sample_value("superserve_requests_total", {"outcome": "ok", "model": m})
              or 0.0 for m in ("mnist", "other")}
    _grpc(srv, "other", _x(3))
    _grpc(srv, "other", _x(4))
    _grpc(srv, "mnist", _x(5))
    reg = srv.metrics.registry

    def counts():  # noqa: ANN202
        return {m: reg.get_sample_value("superserve_requests_total", {"outcome": "ok", "model": m}) - before[m]
                for m in before}
    deadline = time.monotonic() + 30  # the engine records a call just after answering it: poll, bounded
    while counts() != {"mnist": 1, "other": 2} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counts() == {"mnist": 1, "other": 2}
    assert reg.get_sample_value("nv_inference_request_success_total", {"model": "other", "version": "1"}) >= 2


def test_unload_and_load_over_both_doors(repository):
    srv = repository
    client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
    client.unload_model("other")  # gRPC
    assert "other" not in srv.units
    with pytest.raises(tc.InferenceServerException, match="unknown model 'other'"):
        _grpc(srv, "other", _x())
    _grpc(srv, "mnist", _x())  # the other model is untouched
    states = {m.name: m.state for m in client.get_model_repository_index().models}
    assert states["other"] == "UNLOADED"
    base = f"http://127.0.0.1:{srv.http_port}/v2/repository/models"
    assert httpx.post(f"{base}/other/load", timeout=120).status_code == 200  # HTTP
    assert _http(srv, "other", _x()).status_code == 200
    r = httpx.post(f"{base}/broken/load", timeout=120)
    assert r.status_code == 400 and "failed to load" in r.json()["error"]
    assert httpx.post(f"{base}/nope/load", timeout=60).status_code == 404
    assert httpx.post(f"{base}/nope/unload", timeout=60).status_code == 404
    with pytest.raises(tc.InferenceServerException, match="failed to load"):
        client.load_model("broken")
    client.close()


def test_a_one_model_server_refuses_load_and_unload(serving_assets):
    from helpers import start_fixture_server

    srv = start_fixture_server(serving_assets, http_port=0)
    try:
        r = httpx.post(f"http://127.0.0.1:{srv.http_port}/v2/repository/models/x/load", timeout=60)
        assert r.status_code == 400 and "--model NAME=DIR" in r.json()["error"]
    finally:
        srv.stop()


def test_no_loadable_model_fails_the_start(tmp_path):
    from superserve.server.app import ServeConfig

    (tmp_path / "bad").mkdir()
    srv = RepositoryServer(ServeConfig(port=0, metrics_port=None, quiet=True), [ModelSource("bad", tmp_path / "bad")])
    with pytest.raises(ValueError, match="no model of the repository could be loaded: bad"):
        srv.start()
