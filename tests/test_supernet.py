"""SubNetAct: the supernet run with a subnet argument equals that subnet exported as a static model, and running it
writes no state, so outputs do not depend on batch size, on what ran before, or on other threads."""

import random
import threading

import pytest
import torch

from supernet.config import SubnetConfig, SupernetSpace
from supernet.export import export
from supernet.network import SuperNet
from supernet.norm import MissingStatisticsError
from training.calibrate import calibrate_subnets

SPACE = SupernetSpace()


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    net = SuperNet(SPACE)
    rng = random.Random(0)
    subnets = [SubnetConfig.max(SPACE), SubnetConfig.min(SPACE)] + [SubnetConfig.random(SPACE, rng) for _ in range(20)]
    images = torch.randn(16, 1, 28, 28)  # statistics need not be good here, only per-subnet
    calibrate_subnets(net, subnets, images, batch_size=16)
    return net.eval(), subnets


def test_export_matches_supernet_for_22_subnets(calibrated):
    net, subnets = calibrated
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        for subnet in subnets:
            diff = (net(x, subnet) - export(net, subnet)(x)).abs().max().item()
            assert diff < 1e-5, (subnet.subnet_id, diff)


def test_export_is_a_copy_with_exactly_the_subnet_parameters(calibrated):
    net, subnets = calibrated
    for subnet in subnets[:5]:
        model = export(net, subnet)
        params = sum(p.numel() for p in model.parameters())
        assert params == net.count_params_and_macs(subnet)[0]
        shared = {p.data_ptr() for p in net.parameters()}
        assert not shared & {p.data_ptr() for p in model.parameters()}


def test_output_independent_of_batch_size_and_history(calibrated):
    net, subnets = calibrated
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        reference = {s.subnet_id: net(x, s) for s in subnets[:6]}
        for s in reversed(subnets[:6]):  # another order: nothing carries over between calls
            singles = torch.cat([net(x[i:i + 1], s) for i in range(8)])
            torch.testing.assert_close(singles, reference[s.subnet_id], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(net(x, s), reference[s.subnet_id], atol=0, rtol=0)


def test_forward_writes_no_module_state(calibrated):
    net, subnets = calibrated
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ids_before = set(net.norm_table.stats)
    with torch.inference_mode():
        for s in subnets:
            net(torch.randn(3, 1, 28, 28), s)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(net.norm_table.stats) == ids_before
    assert not any(k.startswith("active") for m in net.modules() for k in vars(m))


def test_two_threads_running_different_subnets_match_solo_runs(calibrated):
    net, subnets = calibrated
    x = torch.randn(4, 1, 28, 28)
    a, b = subnets[0], subnets[1]
    with torch.inference_mode():
        solo = {a.subnet_id: net(x, a), b.subnet_id: net(x, b)}
    mismatches, errors = [], []

    def worker(subnet):
        try:
            with torch.inference_mode():
                for _ in range(15):
                    if not torch.equal(net(x, subnet), solo[subnet.subnet_id]):
                        mismatches.append(subnet.subnet_id)
        except Exception as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches


def test_slices_are_views_of_the_shared_weights():
    net = SuperNet(SPACE)
    block = net.stages[1].blocks[0]
    w = block.spatial.sliced_weight(24, 24, 3)
    assert w.shape == (24, 24, 3, 3)
    assert w.untyped_storage().data_ptr() == block.spatial.weight.untyped_storage().data_ptr()
    # the 3x3 is the centre of the 5x5
    torch.testing.assert_close(w, block.spatial.weight[:24, :24, 1:4, 1:4])


def test_uncalibrated_subnet_fails_loudly(calibrated):
    net, _ = calibrated
    stranger = SubnetConfig.random(SPACE, 12345)
    assert stranger.subnet_id not in net.norm_table
    with pytest.raises(MissingStatisticsError, match="calibrate"):
        net(torch.randn(1, 1, 28, 28), stranger)


def test_subnets_have_their_own_statistics(calibrated):
    net, subnets = calibrated
    big, small = net.norm_table.get(subnets[0].subnet_id), net.norm_table.get(subnets[1].subnet_id)
    assert set(net.norm_layer_indices(subnets[1])) == set(small)
    assert len(big) > len(small)
    # the first block's output statistics differ: different widths upstream produce different activations
    last = net.norm_layer_indices(subnets[1])[-1]
    assert not torch.allclose(big[last][0], small[last][0])


def test_training_mode_gradients_reach_only_the_active_slice():
    net = SuperNet(SPACE).train()
    small = SubnetConfig.min(SPACE)
    net(torch.randn(4, 1, 28, 28), small).sum().backward()
    block = net.stages[0].blocks[0]
    mid = block.mid_channels(small.expand_ratios[0][0])
    grad = block.spatial.weight.grad
    assert grad[:mid, :mid, 1:4, 1:4].abs().sum() > 0
    assert grad[mid:].abs().sum() == 0 and grad[:, mid:].abs().sum() == 0
    assert grad[:, :, 0].abs().sum() == 0  # outside the 3x3 centre crop
    assert net.stages[0].blocks[1].reduce.weight.grad is None  # LayerSelect skipped block 1


def test_reorder_keeps_the_max_net_function():
    torch.manual_seed(1)
    net = SuperNet(SPACE).train()
    x = torch.randn(16, 1, 28, 28)
    big = SubnetConfig.max(SPACE)
    with torch.no_grad():
        before = net(x, big)
        net.reorder_middle_channels()
        after = net(x, big)
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_smallest_subnet_is_much_cheaper():
    net = SuperNet(SPACE)
    _, big = net.count_params_and_macs(SubnetConfig.max(SPACE))
    _, small = net.count_params_and_macs(SubnetConfig.min(SPACE))
    # README: "from 8.6 to 633 MMACs" (a 73x span)
    assert round(small / 1e6, 1) == 8.6 and round(big / 1e6) == 633
    assert int(big / small) == 73
