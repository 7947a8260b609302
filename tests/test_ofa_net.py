"""OFASupernet against the `ofa` package's own subnets, on randomly initialised networks (nothing downloaded).

Small input resolutions keep the tests fast; the networks are the full OFA-MobileNetV3 (w1.2) and OFA-ResNet50.
"""

from __future__ import annotations

import copy
import random
import threading

import pytest
import torch

from supernet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from supernet.contract import ServableSupernet
from supernet.norm import MissingStatisticsError
from supernet.ofa_net import OFACheckpointError, OFASupernet, load_ofa_weights, random_ofa_supernet
from supernet.ofa_space import named_space
from training.calibrate import calibrate_subnet

SIZE = 32  # pixels: OFA nets pool globally, so any resolution runs; 32 keeps ResNet50 cheap on a CPU
FAMILIES = ("ofa_mbv3", "ofa_resnet50")


def _randomise_bn(net: OFASupernet, seed: int) -> None:
    """Non-trivial BatchNorm parameters and global running statistics (fresh ones are 1/0 and would hide slicing
    mistakes in the statistics)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


@pytest.fixture(scope="module", params=FAMILIES)
def net(request) -> OFASupernet:
    net = random_ofa_supernet(named_space(request.param, SIZE), seed=0)
    _randomise_bn(net, 1)
    return net


def _ofa_subnet(net: OFASupernet, arch: dict) -> torch.nn.Module:
    """OFA's own static subnet for `arch`, built on a copy (set_active_subnet switches the network it is called on)."""
    twin = copy.deepcopy(net.net)
    twin.set_active_subnet(**arch)
    return twin.get_active_subnet(preserve_weight=True)


def _ofa_samples(net: OFASupernet, count: int, seed: int) -> list[dict]:
    """Arch dicts drawn by OFA's own `sample_active_subnet` (it draws from Python's global `random`)."""
    state = random.getstate()
    random.seed(seed)
    twin = copy.deepcopy(net.net)
    try:
        return [twin.sample_active_subnet() for _ in range(count)]
    finally:
        random.setstate(state)


def test_implements_the_contract(net):
    assert isinstance(net, ServableSupernet)
    assert net.sampler.validate(net.sampler.max()) is not None


def test_eval_output_equals_ofas_subnet_with_its_global_statistics(net):
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    for arch in _ofa_samples(net, 4, seed=5) + [None]:
        cfg = net.sampler.max() if arch is None else net.from_ofa_arch(arch)
        arch = net.to_ofa_arch(cfg)
        net.norm_table.stats[cfg.subnet_id] = net.global_statistics(cfg)
        with torch.inference_mode():
            ours = net(x, cfg)
            theirs = _ofa_subnet(net, arch).eval()(x)
        assert ours.shape == (3, net.space.num_classes)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_batch_statistics_output_equals_ofas_subnet_in_training_mode(net):
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    from supernet.norm import StatsAccumulator

    for arch in _ofa_samples(net, 2, seed=7):
        cfg = net.from_ofa_arch(arch)
        with torch.no_grad():
            ours = net(x, cfg, accumulator=StatsAccumulator())
            theirs = _ofa_subnet(net, arch).train()(x)  # dropout is 0 in these networks
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_arch_dicts_round_trip_and_counts_match_ofa(net):
    from ofa.utils.pytorch_utils import count_net_flops

    for arch in _ofa_samples(net, 3, seed=11):
        cfg = net.from_ofa_arch(arch)
        assert net.from_ofa_arch(net.to_ofa_arch(cfg)) == cfg
        params, macs = net.count_params_and_macs(cfg)
        model = _ofa_subnet(net, arch)
        assert params == sum(p.numel() for p in model.parameters())
        assert macs == int(count_net_flops(model, (1, 3, SIZE, SIZE)))
    small, large = net.sampler.min(), net.sampler.max()
    assert net.count_params_and_macs(small)[1] < net.count_params_and_macs(large)[1]


def test_two_threads_run_different_subnets_at_once(net):
    rng = random.Random(4)
    a, b = net.sampler.random(rng), net.sampler.random(rng)
    assert a != b
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    for cfg in (a, b):
        net.norm_table.stats[cfg.subnet_id] = net.global_statistics(cfg)
    with torch.inference_mode():
        expected = {cfg.subnet_id: net(x, cfg) for cfg in (a, b)}
    start = threading.Barrier(2)
    errors: list[str] = []

    def work(cfg) -> None:
        start.wait()
        for _ in range(8):  # interleaved with the other thread's subnet on the same modules
            with torch.inference_mode():
                out = net(x, cfg)
            if not torch.equal(out, expected[cfg.subnet_id]):
                errors.append(cfg.subnet_id)

    threads = [threading.Thread(target=work, args=(cfg,)) for cfg in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_calibrated_export_equals_the_served_subnet(net):
    images = torch.randn(24, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    cfg = net.sampler.random(random.Random(8))
    net.norm_table.stats.pop(cfg.subnet_id, None)
    with pytest.raises(MissingStatisticsError):
        net(images[:1], cfg)
    calibrate_subnet(net, cfg, images, batch_size=12)
    net.eval()
    x = images[:5]
    depth_before = list(net.net.runtime_depth)
    with torch.inference_mode():
        served = net(x, cfg)
        exported = net.export(cfg)(x)
    torch.testing.assert_close(exported, served, atol=1e-5, rtol=1e-5)
    assert net.net.runtime_depth == depth_before  # export switched a copy, never the served network


def test_checkpoint_round_trip(net, tmp_path):
    cfg = net.sampler.min()
    calibrate_subnet(net, cfg, torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9)))
    net.eval()
    path = tmp_path / "ofa.pt"
    save_checkpoint(net, path, meta={"note": "random"})
    loaded, data = load_checkpoint(path, space=net.space)
    assert isinstance(loaded, OFASupernet) and data["meta"]["note"] == "random"
    assert cfg.subnet_id in loaded.norm_table
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, cfg), net(x, cfg), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="different space"):
        load_checkpoint(path, space=named_space("ofa_mbv3_w1.0" if net.space.family == "ofa_resnet" else
                                                "ofa_resnet50", SIZE))


def test_ofa_weight_files_load_and_wrong_ones_are_refused(tmp_path):
    space = named_space("ofa_mbv3", SIZE)
    source = random_ofa_supernet(space, seed=3)
    # OFA's published files wrap the state dict and name MBConv layers `mobile_inverted_conv`
    state = {k.replace(".conv.inverted_bottleneck", ".mobile_inverted_conv.inverted_bottleneck"): v
             for k, v in source.net.state_dict().items()}
    assert any("mobile_inverted_conv" in k for k in state)
    good = tmp_path / "ofa_mbv3.pth"
    torch.save({"state_dict": state}, good)
    loaded = load_ofa_weights(good, space)
    cfg = loaded.sampler.max()
    for n in (loaded, source):
        n.norm_table.stats[cfg.subnet_id] = n.global_statistics(cfg)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, cfg), source(x, cfg), atol=0, rtol=0)

    with pytest.raises(OFACheckpointError, match=r"nowhere\.pth does not exist"):
        load_ofa_weights(tmp_path / "nowhere.pth", space)
    narrow = tmp_path / "w10.pth"  # the width-1.0 MobileNetV3 into the width-1.2 space: shapes differ
    torch.save({"state_dict": random_ofa_supernet(named_space("ofa_mbv3_w1.0", SIZE)).net.state_dict()}, narrow)
    with pytest.raises(OFACheckpointError, match=r"w10\.pth: tensor 'first_conv\.conv\.weight' has shape"):
        load_ofa_weights(narrow, space)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k != "classifier.linear.bias"}, partial)
    with pytest.raises(OFACheckpointError, match=r"partial\.pth: tensor 'classifier\.linear\.bias' .* is missing"):
        load_ofa_weights(partial, space)
    foreign = tmp_path / "foreign.pth"
    torch.save({**state, "head.fc.weight": torch.zeros(2)}, foreign)
    with pytest.raises(OFACheckpointError, match=r"foreign\.pth: tensor 'head\.fc\.weight' is not part of"):
        load_ofa_weights(foreign, space)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(OFACheckpointError, match="corrupt"):
        load_ofa_weights(garbage, space)
