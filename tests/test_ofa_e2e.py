"""End to end on a small input: OFA-MobileNetV3 (random weights) -> `superserve zoo import-ofa` -> `superserve zoo
build --data folder:PATH` at 64x64 on the CPU -> `superserve serve` (a subprocess) answering tritonclient calls.

The image folder is made here from the two photographs scikit-learn ships (china.jpg, flower.jpg): random crops,
one class per photograph. The weights are random, so accuracy is chance; what is tested is the pipeline: the zoo
holds calibrated OFA subnets, the served answers are the probabilities of the subnet the server says it ran.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.checkpoint import load_checkpoint
from superserve.cli import main as cli_main
from superserve.zoo import Zoo

SIZE = 64
ROOT = Path(__file__).resolve().parents[1]


def _image_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    for name, img in zip(photos.filenames, photos.images):
        folder = root / Path(name).stem
        folder.mkdir(parents=True)
        h, w, _ = img.shape
        for i in range(per_class):
            side = int(rng.integers(96, 200))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            Image.fromarray(img[y:y + side, x:x + side]).save(folder / f"{i}.png")
    return root


# Both tests share a zoo build of about 10 s plus a served OFA network: end to end, so marked slow.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ofa_e2e")
    data = _image_folder(tmp / "images")
    assert cli_main(["zoo", "import-ofa", "--supernet", "ofa_mbv3", "--random-init", "--image-size", str(SIZE),
                     "--out", str(tmp / "ofa.pt")]) == 0
    # a wrong --data is refused up front, before any search
    assert cli_main(["zoo", "build", "--ckpt", str(tmp / "ofa.pt"), "--out", str(tmp / "bad.json"), "--quiet",
                     "--data", "mnist5k"]) == 2
    assert cli_main(["zoo", "build", "--ckpt", str(tmp / "ofa.pt"), "--data", f"folder:{data}", "--out",
                     str(tmp / "zoo.json"), "--num-random", "4", "--generations", "1", "--population", "2",
                     "--min-size", "3", "--max-size", "4", "--search-calibration-images", "16",
                     "--calibration-images", "16", "--batch-sizes", "1,2,4", "--min-repeats", "2", "--max-repeats",
                     "3", "--target-s", "0.02", "--quiet"]) == 0
    return tmp / "zoo.json", tmp / "supernet.pt"


def test_zoo_of_an_ofa_supernet(built):
    zoo_path, ckpt = built
    zoo = Zoo.load(zoo_path)
    assert zoo.space.family == "ofa_mbv3" and zoo.space.image_size == SIZE and 3 <= len(zoo.entries) <= 4
    net, data = load_checkpoint(ckpt)
    assert type(net).__name__ == "OFASupernet" and set(net.norm_table.stats) == set(zoo.subnet_ids)
    assert data["meta"]["normalization"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's, as OFA trained
    macs = {e.subnet_id: e.flops for e in zoo.entries}
    for e in zoo.entries:
        assert net.count_params_and_macs(e.config) == (e.params, e.flops)
    assert net.count_params_and_macs(net.sampler.max())[1] >= max(macs.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_tritonclient_calls(built):
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    zoo_path, ckpt = built
    port = _free_port()
    env = {**os.environ, "SUPERSERVE_CACHE": str(zoo_path.parent / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "superserve.cli", "serve", "--zoo", str(zoo_path), "--checkpoint",
                             str(ckpt), "--port", str(port), "--metrics-port", "-1", "--reprofile", "never",
                             "--default-slo-ms", "10000"],  # a generous SLO: a shared CPU must not shed these
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120  # start-up loads the 10.7M-parameter supernet; generous on a busy host
        while True:
            try:
                if client.is_server_ready():
                    break
            except InferenceServerException:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        meta = client.get_model_metadata("superserve", as_json=True)
        assert meta["inputs"][0]["shape"][1:] == ["3", str(SIZE), str(SIZE)]
        net, _ = load_checkpoint(ckpt)
        zoo = Zoo.load(zoo_path)
        x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
        inp = tc.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("superserve", [inp])
        probs = result.as_numpy("PROBABILITIES")
        assert probs.shape == (3, 1000)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        subnets = result.get_response().parameters["subnet_id"].string_param.split(",")
        subnets = subnets * 3 if len(subnets) == 1 else subnets
        for k, sid in enumerate(subnets):
            with torch.inference_mode():
                expected = torch.softmax(net(torch.from_numpy(x[k:k + 1]), zoo.entry(sid).config), dim=1).numpy()
            np.testing.assert_allclose(probs[k:k + 1], expected, atol=1e-5)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
