"""Training: schedules and the β ramp (hand-computed), gradient flow of a sandwich step, budget accounting, exact
resume, SIGTERM checkpoints and CLI errors. Tiny space on 8x8 digits so the whole file runs in well under a minute."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from supernet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from supernet.config import SubnetConfig, SupernetSpace
from supernet.network import SuperNet
from superserve.cli import main as cli_main
from superserve.data import load_dataset
from training.schedule import ConfigError, Schedule, TrainConfig
from training.steps import MacRatio, epochs_for_budget, expected_cost_per_epoch, sample_subnets, sandwich_step
from training.trainer import StopFlag, train

TINY = SupernetSpace(image_size=8, stem_width=8, stage_widths=(8, 16), stage_strides=(1, 2), head_width=16,
                     depth_choices=(1, 2))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset("digits", seed=0)  # native 8x8
    # 96 train images at batch 32: 3 steps per epoch, so short runs cross epoch boundaries
    return replace(splits, train_x=splits.train_x[:96], train_y=splits.train_y[:96])


# --- schedules ------------------------------------------------------------------------------------------------------
def test_deps_phases_and_beta_ramp_hand_computed():
    s = Schedule(TrainConfig(method="deps", epochs=10, lr=0.15, fm_warmup_frac=0.5, ramp_frac=0.1), 10)
    assert s.total_steps == 100 and s.boundaries == (50, 60)
    assert [s.phase(i) for i in (0, 49, 50, 59, 60, 99)] == ["warmup", "warmup", "ramp", "ramp", "shrink", "shrink"]
    assert s.lr(0) == pytest.approx(0.15) and s.lr(50) == pytest.approx(0.075)
    lr60 = 0.075 * (1 + math.cos(0.6 * math.pi))  # 0.0518237..., the LR where the ramp ends
    assert s.lr(60) == pytest.approx(0.0518237, abs=1e-6)
    assert s.beta(49) == 0.0
    assert s.beta(50) == pytest.approx(0.1 * lr60 / 0.075)  # 0.0690983
    assert s.beta(50) == pytest.approx(0.0690983, abs=1e-6)
    assert s.beta(59) == pytest.approx(0.958356, abs=1e-5)  # lr(59) = 0.0540757
    assert s.beta(60) == 1.0 and s.beta(99) == 1.0
    # the subnets' effective LR rises linearly, per step, from lr60/10 to lr60
    effective = [s.beta(i) * s.lr(i) for i in range(50, 60)]
    assert effective == pytest.approx([lr60 * (k + 1) / 10 for k in range(10)])


def test_deps_ramp_defaults_to_the_reference_codes_share_of_training():
    """The DεpS code ramps the subnets over `smallnet_warmup` 5 epochs of its 270 (not our former 10%)."""
    cfg = TrainConfig(method="deps", epochs=270)
    assert cfg.ramp_frac == pytest.approx(5 / 270)
    s = Schedule(cfg, 10)  # 2,700 steps: warm-up to 1,350, ramp of 50 steps (5 "epochs" of 10 steps)
    assert s.boundaries == (1350, 1400)
    assert [s.phase(i) for i in (1349, 1350, 1399, 1400)] == ["warmup", "ramp", "ramp", "shrink"]
    effective = [s.beta(i) * s.lr(i) for i in range(1350, 1400)]
    assert effective == pytest.approx([s.lr(1400) * (k + 1) / 50 for k in range(50)])
    short = Schedule(TrainConfig(method="deps", epochs=2), 10)  # 20 steps: 5/270 of them rounds to 0
    assert short.boundaries == (10, 11) and 0 < short.beta(10) < 1 and short.beta(11) == 1.0
    assert Schedule(TrainConfig(method="deps", epochs=2, ramp_frac=0.0), 10).boundaries == (10, 10)
    with pytest.raises(ConfigError, match="reorganize_momentum"):
        TrainConfig(reorganize_momentum="permute")
    # configs stored before the option existed were trained with the momentum cleared
    assert TrainConfig.from_dict({"method": "deps"}).reorganize_momentum == "reset"
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_bignas_and_ofa_schedules():
    b = Schedule(TrainConfig(method="bignas", epochs=10), 10)
    assert {b.phase(i) for i in range(100)} == {"sandwich"} and b.beta(0) == 1.0
    o = Schedule(TrainConfig(method="ofa", epochs=10, lr=0.1), 10)
    assert o.boundaries == (30, 50, 75)
    assert [o.phase(i) for i in (29, 30, 50, 75)] == ["full", "kernel", "depth", "width"]
    # each phase restarts its own cosine at lr * scale (1.0, 0.3, 0.1, 0.1)
    assert [o.lr(i) for i in (0, 30, 50, 75)] == pytest.approx([0.1, 0.03, 0.01, 0.01])
    assert o.lr(40) == pytest.approx(0.5 * 0.03 * (1 + math.cos(math.pi * 10 / 20)))


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="unknown training method"):
        TrainConfig(method="sgd")
    with pytest.raises(ConfigError):
        TrainConfig(fm_warmup_frac=0.9, ramp_frac=0.2)
    with pytest.raises(ConfigError, match="too few"):
        Schedule(TrainConfig(method="ofa", epochs=1), 2)


def test_ofa_phases_sample_from_their_elastic_sets():
    for step in range(20):
        (k,) = sample_subnets(TINY, "ofa", "kernel", step, 0, 1)
        assert k.depths == (2, 2) and {e for s in k.expand_ratios for e in s} == {1.0}
        d = sample_subnets(TINY, "ofa", "depth", step, 0, 2)
        assert all({e for s in c.expand_ratios for e in s} == {1.0} for c in d)
    sandwich = sample_subnets(TINY, "deps", "shrink", 3, 0, 4)
    assert sandwich[:2] == [SubnetConfig.max(TINY), SubnetConfig.min(TINY)] and len(sandwich) == 4
    assert sandwich == sample_subnets(TINY, "deps", "shrink", 3, 0, 4)  # seeded by (seed, step, index)


# --- one step -------------------------------------------------------------------------------------------------------
def _grads(net, beta, x, y, subnets):
    torch.manual_seed(7)  # same dropout mask on the max net every time
    result = sandwich_step(net, x, y, subnets, beta, TrainConfig(), MacRatio(net))
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}, \
        result


def test_sandwich_gradients_reach_exactly_the_active_slices_and_sum():
    torch.manual_seed(0)
    net = SuperNet(TINY).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    small = SubnetConfig(((0.25,), (0.25,)), ((3,), (3,))).validate(TINY)
    g0, r0 = _grads(net, 0.0, x, y, [SubnetConfig.max(TINY), small])
    g1, r1 = _grads(net, 1.0, x, y, [SubnetConfig.max(TINY), small])
    g2, _ = _grads(net, 2.0, x, y, [SubnetConfig.max(TINY), small])
    assert r0.subnets == (SubnetConfig.max(TINY).subnet_id,)  # β = 0: the subnet is not even run
    assert len(r1.subnets) == 2 and r1.loss == pytest.approx(r0.loss)
    diff = {n: g1[n] - g0[n] for n in g0}  # the small subnet's contribution
    for n in g0:  # gradients are summed, scaled by β
        assert torch.allclose(g2[n] - g0[n], 2 * diff[n], atol=1e-5), n
    for name, d in diff.items():
        if ".blocks.1." in name:  # second block of each stage: inactive at depth 1
            assert torch.count_nonzero(d) == 0, name
    block = net.stages[1].blocks[0]  # 16 wide: expand 0.25 -> 8 of 16 middle channels
    mid = block.mid_channels(0.25)
    assert mid < block.max_mid
    reduce = diff["stages.1.blocks.0.reduce.weight"]  # (max_mid, in, 1, 1)
    assert torch.count_nonzero(reduce[:mid]) > 0 and torch.count_nonzero(reduce[mid:]) == 0
    spatial = diff["stages.1.blocks.0.spatial.weight"]  # (max_mid, max_mid, 5, 5), kernel 3 = centre crop
    assert torch.count_nonzero(spatial[:mid, :mid, 1:4, 1:4]) > 0
    assert torch.count_nonzero(spatial) == torch.count_nonzero(spatial[:mid, :mid, 1:4, 1:4])
    expand = diff["stages.1.blocks.0.expand.weight"]  # (out, max_mid, 1, 1): only the first `mid` inputs
    assert torch.count_nonzero(expand[:, mid:]) == 0 and torch.count_nonzero(expand[:, :mid]) > 0
    assert torch.count_nonzero(diff["classifier.weight"]) > 0  # always-on parts learn from every subnet


def test_budget_accounting_matches_what_training_spends(digits, tmp_path):
    torch.manual_seed(0)
    net = SuperNet(TINY)
    cfg = TrainConfig(method="bignas", epochs=1.0, batch_size=32, seed=0)
    per_epoch = expected_cost_per_epoch(net, cfg)
    assert 1.0 < per_epoch < 4.0  # max (1) + min + 2 random, each cheaper than max
    assert epochs_for_budget(net, cfg, 2 * per_epoch) == pytest.approx(2.0)
    deps = TrainConfig(method="deps", epochs=1.0)
    assert expected_cost_per_epoch(net, deps) == pytest.approx(0.5 + 0.5 * per_epoch, rel=0.05)
    result = train(net, digits, replace(cfg, epochs=2.0), tmp_path / "b.pt", progress=False)
    assert result.fme_epochs == pytest.approx(2 * per_epoch, rel=0.25)


# --- channel re-organisation and momentum ----------------------------------------------------------------------
def _momentum(optimizer):
    return {id(p): st["momentum_buffer"].clone() for p, st in optimizer.state.items() if "momentum_buffer" in st}


@pytest.mark.parametrize("mode", ["keep", "reset"])
def test_reorganize_keeps_or_clears_momentum(mode):
    """keep: the buffers survive the channel sort untouched (old channel order), as the DεpS code's `.data =`
    assignment leaves them; reset: cleared. The max net's function is unchanged either way."""
    from training.trainer import _reorganize, make_optimizer

    torch.manual_seed(0)
    net = SuperNet(TINY).train()
    opt = make_optimizer(net, TrainConfig())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(2):
        sandwich_step(net, x, y, [SubnetConfig.max(TINY)], 0.0, TrainConfig(), MacRatio(net))
        opt.step()
    before = _momentum(opt)
    with torch.no_grad():  # train mode: batch statistics, no dropout asked for
        out_before = net(x, SubnetConfig.max(TINY))
    spatial = net.stages[0].blocks[0].spatial.weight.detach().clone()
    _reorganize(net, opt, mode)
    assert not torch.equal(spatial, net.stages[0].blocks[0].spatial.weight)  # channels did move
    with torch.no_grad():
        assert torch.allclose(net(x, SubnetConfig.max(TINY)), out_before, atol=1e-4)
    after = _momentum(opt)
    assert before  # two steps made buffers
    if mode == "keep":
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    else:
        assert after == {}


def test_deps_training_momentum_handling_changes_the_steps_after_the_sort(digits, tmp_path):
    """Through the trainer: the two momentum modes agree up to the re-organisation step and differ after it; the
    checkpoint written right after the sort still holds momentum buffers with "keep"."""
    cfg = TrainConfig(method="deps", epochs=2, batch_size=32, fm_warmup_frac=0.5, seed=1)  # 6 steps, sort at 3

    def run(mode, steps):
        torch.manual_seed(1)
        return train(SuperNet(TINY), digits, replace(cfg, reorganize_momentum=mode), tmp_path / f"{mode}{steps}.pt",
                     progress=False, max_steps=steps, validate_every=100)

    keep3, reset3 = run("keep", 3), run("reset", 3)
    assert all(torch.equal(a, b) for a, b in zip(keep3.net.state_dict().values(), reset3.net.state_dict().values()))
    keep4, reset4 = run("keep", 4), run("reset", 4)
    assert not all(torch.equal(a, b) for a, b in zip(keep4.net.state_dict().values(),
                                                       reset4.net.state_dict().values()))
    assert read_checkpoint(tmp_path / "keep4.pt")["extra"]["optimizer"]["state"]


def test_deps_code_shaped_space():
    space = SupernetSpace.deps_code_shaped(image_size=8, stem_width=8, stage_widths=(8, 16), stage_strides=(1, 2),
                                           head_width=16)
    assert space.kernel_choices == (3,) and min(space.depth_choices) == 2 and space.max_depth == 4
    assert space.max_expand / min(space.expand_choices) == 2  # as the code's 3..6
    sub = sample_subnets(space, "deps", "shrink", 0, 0, 4)
    assert all(min(c.depths) >= 2 and {k for s in c.kernel_sizes for k in s} == {3} for c in sub)
    net = SuperNet(space)
    ratio = MacRatio(net)(SubnetConfig.min(space))
    assert 0.1 < ratio < 0.4, ratio  # the default space's smallest subnet is a few % of the largest
    assert MacRatio(SuperNet(TINY))(SubnetConfig.min(TINY)) < ratio
    assert SupernetSpace.from_dict(space.to_dict()) == space
    from training.cli import space_from_arg

    data = load_dataset("digits", seed=0)
    assert space_from_arg("deps-code", data) == SupernetSpace.deps_code_shaped(image_size=8)


# --- resume and stop ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["deps", "ofa"])
def test_resume_gives_identical_weights(digits, tmp_path, method):
    cfg = TrainConfig(method=method, epochs=8 / 3, batch_size=32, fm_warmup_frac=0.25, ramp_frac=0.25, seed=3)

    def fresh():
        torch.manual_seed(3)
        return SuperNet(TINY)

    full = train(fresh(), digits, cfg, tmp_path / "full.pt", progress=False, validate_every=100)
    assert full.step == 8
    half = train(fresh(), digits, cfg, tmp_path / "half.pt", progress=False, max_steps=5, validate_every=100)
    assert half.step == 5 and not half.interrupted
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = train(fresh(), digits, cfg, tmp_path / "half.pt", resume_from=tmp_path / "half.pt", progress=False,
                    validate_every=100)
    assert resumed.step == 8
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert resumed.fme_epochs == pytest.approx(full.fme_epochs)


def test_resume_refuses_another_config_or_space(digits, tmp_path):
    cfg = TrainConfig(method="bignas", epochs=1.0, batch_size=32)
    torch.manual_seed(0)
    train(SuperNet(TINY), digits, cfg, tmp_path / "r.pt", progress=False, max_steps=1)
    with pytest.raises(CheckpointError, match="another training configuration"):
        train(SuperNet(TINY), digits, replace(cfg, lr=0.3), tmp_path / "x.pt", resume_from=tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="different space"):
        train(SuperNet(replace(TINY, head_width=32)), digits, cfg, tmp_path / "x.pt", resume_from=tmp_path / "r.pt")


def test_stop_flag_checkpoints_after_the_current_step(digits, tmp_path):
    flag = StopFlag()
    flag.request(signal.SIGTERM)
    torch.manual_seed(0)
    result = train(SuperNet(TINY), digits, TrainConfig(method="bignas", epochs=2, batch_size=32), tmp_path / "s.pt",
                   stop=flag, progress=False)
    assert result.interrupted and result.step == 0
    assert read_checkpoint(tmp_path / "s.pt")["extra"]["step"] == 0


def _progress_steps(text: str) -> int:
    """The last step count the tqdm bar printed ("train deps:   1%|   | 12/2000 ...")."""
    import re

    found = re.findall(r"\| *(\d+)/\d+ \[", text)
    return int(found[-1]) if found else 0


@pytest.mark.slow  # three training processes, ~40 s on a shared 2-core host
def test_sigterm_leaves_a_checkpoint_that_train_resume_continues_exactly(tmp_path):
    """README: Ctrl-C/SIGTERM writes a checkpoint atomically, and `superserve train --out run.pt --resume` continues
    exactly where the stopped run left off (the same weights as an uninterrupted run). From the CLI: start a long
    run, send SIGTERM once the bar shows a completed step (read from the bar, not a sleep), resume it to 3 steps
    past the stop, and compare with an uninterrupted run to that step."""
    out, ref = tmp_path / "sig.pt", tmp_path / "ref.pt"
    space = ('{"image_size": 8, "stem_width": 8, "stage_widths": [8, 16], "stage_strides": [1, 2], '
             '"head_width": 16, "depth_choices": [1, 2]}')
    args = ["--method", "deps", "--data", "digits", "--epochs", "50", "--batch-size", "32", "--space", space,
            "--checkpoint-every", "100000", "--val-every", "100000", "--threads", "1"]
    cli = [sys.executable, "-m", "superserve.cli", "train"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([*cli, *args, "--out", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    try:
        while _progress_steps(seen) < 1:  # a step done: the bar says so (it refreshes at least every 0.1 s)
            char = proc.stderr.read(1)
            assert char, f"the run ended before its first step:\n{seen[-2000:]}"
            seen += char
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    net, data = load_checkpoint(out)
    step = data["extra"]["step"]
    assert 0 < step < data["meta"]["total_steps"] and f"superserve train --out {out} --resume" in err
    assert not list(tmp_path.glob(".*tmp*"))  # no half-written temp file left behind
    assert isinstance(net, SuperNet)

    target = step + 3
    # no --threads: the checkpoint's thread count is the default (another count sums in another order)
    resumed = subprocess.run([*cli, "--out", str(out), "--resume", "--max-steps", str(target), "--quiet"], cwd=REPO,
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out} at step {step}/" in resumed.stderr and "threads 1" in resumed.stderr
    straight = subprocess.run([*cli, *args, "--out", str(ref), "--max-steps", str(target), "--quiet"], cwd=REPO,
                              capture_output=True, text=True, env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = read_checkpoint(out), read_checkpoint(ref)
    assert a["extra"]["step"] == b["extra"]["step"] == target
    wa, wb = load_checkpoint(out)[0].state_dict(), load_checkpoint(ref)[0].state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), \
        [k for k in wa if not torch.equal(wa[k], wb[k])][:3]


def test_resume_takes_the_stopped_runs_thread_count_and_warns_on_another(tmp_path, capsys):
    """Bit-exact resume needs the stopped run's thread count: the checkpoint stores it, `--resume` without `--threads`
    uses it, and a different `--threads` is warned about (training still continues)."""
    out = tmp_path / "t.pt"
    space = '{"image_size": 8, "stem_width": 8, "stage_widths": [8], "stage_strides": [1], "head_width": 8}'
    base = ["train", "--method", "bignas", "--data", "digits", "--epochs", "1", "--batch-size", "64", "--space",
            space, "--val-every", "100000", "--quiet", "--out", str(out)]
    before = torch.get_num_threads()
    try:
        assert cli_main([*base, "--threads", "1", "--max-steps", "1"]) == 0
        assert read_checkpoint(out)["meta"]["threads"] == 1
        capsys.readouterr()
        torch.set_num_threads(2)
        assert cli_main(["train", "--out", str(out), "--resume", "--max-steps", "2", "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "threads 1" in err and "warning" not in err
        assert cli_main(["train", "--out", str(out), "--resume", "--max-steps", "3", "--quiet", "--threads", "2"]) == 0
        err = capsys.readouterr().err
        assert "threads 2" in err and "the stopped run used 1 thread(s), this one 2" in err
        assert read_checkpoint(out)["extra"]["step"] == 3
    finally:
        torch.set_num_threads(before)


# --- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_help_and_errors(capsys, tmp_path):
    for argv, flag in ((["train", "--help"], "--budget-fme"), (["zoo", "--help"], "reprofile"),
                       (["zoo", "build", "--help"], "--min-size")):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 0 and flag in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--method", "nope", "--out", str(tmp_path / "x.pt")])
    assert exc.value.code == 2
    assert cli_main(["train", "--data", "imagenet", "--out", str(tmp_path / "x.pt")]) == 2
    assert "unknown dataset spec" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(tmp_path / "missing.pt"), "--resume"]) == 2
