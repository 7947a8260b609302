"""Extraction: a knockoff-style surrogate trained on the victim's answers, its accuracy and fidelity, and baselines.

- Fingerprinted attack: every transfer-set query goes out with the pinned hints (`fingerprint.Pin`); every
  `check_every` calls the attacker re-identifies the responder at the pin and throws away the labels gathered since
  the last check when another responder answers (an inconclusive check keeps them; it cannot tell single moved
  images apart).
- Naive attack: the same transfer set and budget without hints (the server's defaults): whatever the selection
  serves, typically a load-dependent mixture of subnets.
- Upper bound: the victim's own labels on the transfer set (attacking a server that serves the victim alone).

The surrogate is a small CNN trained with top-1 labels only (the server's CLASS output); its accuracy is measured on
the victim's held-out MNIST-5k test split (which the attacker never queries), and its fidelity is the agreement with
the victim's predictions on that split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Collected:
    indices: np.ndarray  # transfer-set images with a label
    labels: np.ndarray  # the labels the attacker keeps
    queries: int  # images sent (including discarded and failed ones, and the consistency probes)
    discarded: int  # labels thrown away by failed consistency checks
    failed: int  # images shed / refused
    truth: dict[str, int] = field(default_factory=dict)  # which subnet really labelled the kept images (evaluation)
    repins: int = 0  # times the victim's step was re-located after a failed check


def collect(oracle: Any, indices: np.ndarray, slo_ms: float | None, min_accuracy: float | None, batch: int = 4,
            fingerprinter: Any = None, pin: Any = None, check_every: int = 50, interval_s: float | None = None,
            repeats: int = 1, repin: bool = True) -> Collected:
    """Query the transfer set in calls of `batch` images. With a fingerprinter and pin: consistency checks.
    `repeats` > 1 is the adaptive attacker against per-request noise: every image is sent `repeats` times and
    labelled by its most frequent answer (ties: the first). With `repin`, a check naming another responder, or a group of
    calls mostly shed, also re-locates the victim's step (`Fingerprinter.repin`) and the rest goes out with the new hints."""
    if repeats > 1:
        got = collect(oracle, np.repeat(indices, repeats), slo_ms, min_accuracy, batch, fingerprinter, pin,
                      check_every, interval_s, repin=repin)
        votes: dict[int, list[int]] = {}
        for i, lab in zip(got.indices, got.labels):
            votes.setdefault(int(i), []).append(int(lab))
        keep = [i for i in dict.fromkeys(int(x) for x in got.indices)]
        labels = [max(set(votes[i]), key=votes[i].count) for i in keep]
        return Collected(np.array(keep, dtype=np.int64), np.array(labels, dtype=np.int64), got.queries,
                         got.discarded, got.failed, got.truth, got.repins)
    q0 = oracle.queries
    repins = 0
    chunks = [indices[k:k + batch] for k in range(0, len(indices), batch)]
    kept_idx: list[int] = []
    kept_lab: list[int] = []
    kept_truth: list[Any] = []
    pending: list[tuple[int, int, Any]] = []
    discarded = failed = 0
    stream = hasattr(oracle, "query_stream")
    group = check_every if (fingerprinter is not None and pin is not None) else len(chunks)
    for g in range(0, len(chunks), max(group, 1)):
        part = chunks[g:g + group]
        t0 = len(oracle.truth)
        answers = oracle.query_stream(part, slo_ms, min_accuracy, interval_s) if stream else \
            [oracle.query(c, slo_ms, min_accuracy) for c in part]
        truths = oracle.truth[t0:]
        flat_idx = np.concatenate(part)
        flat = [a for call in answers for a in call]
        group_failed = 0
        for i, a, t in zip(flat_idx, flat, truths):
            if a.label is None:
                group_failed += 1
            else:
                pending.append((int(i), a.label, t))
        failed += group_failed
        if repin and fingerprinter is not None and pin is not None and group_failed * 2 > len(flat):
            # most calls shed: the victim's step moved up (a server's latency correction); re-locate it
            pin = fingerprinter.repin(pin)
            slo_ms, min_accuracy = pin.slo_ms, pin.min_accuracy
            repins += 1
        if fingerprinter is not None and pin is not None:
            seen = fingerprinter.identify(pin.slo_ms, pin.min_accuracy)
            if seen is not None and seen != pin.victim:  # another responder answered: drop; unknown: keep
                discarded += len(pending)
                pending = []
                if repin:  # the step may have moved (a server correcting its latency table): find it again
                    pin = fingerprinter.repin(pin)
                    slo_ms, min_accuracy = pin.slo_ms, pin.min_accuracy
                    repins += 1
                continue
        for i, lab, t in pending:
            kept_idx.append(i)
            kept_lab.append(lab)
            kept_truth.append(t)
        pending = []
    truth: dict[str, int] = {}
    for t in kept_truth:
        truth[str(t)] = truth.get(str(t), 0) + 1
    return Collected(np.array(kept_idx, dtype=np.int64), np.array(kept_lab, dtype=np.int64),
                     oracle.queries - q0, discarded, failed, truth, repins)


# --- the surrogate ------------------------------------------------------------------------------------------------
def make_surrogate(num_classes: int = 10) -> Any:
    import torch.nn as nn

    return nn.Sequential(  # (B, 1, 28, 28)
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 14, 14)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 7, 7)
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes))


def train_surrogate(x: Any, y: np.ndarray, seed: int, epochs: int = 15, batch: int = 64, lr: float = 2e-3,
                    max_shift_px: int = 2) -> Any:
    """Adam on (x (N, 1, 28, 28), y (N,)) with random shifts; seeded (torch generator from `seed`)."""
    import torch
    import torch.nn.functional as F

    if len(y) == 0:
        raise ValueError("no labels to train a surrogate on (every query failed or was discarded)")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_surrogate()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            xb = x[idx]
            if max_shift_px:
                dx, dy = (int(v) for v in torch.randint(-max_shift_px, max_shift_px + 1, (2,), generator=g))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def evaluate(model: Any, test_x: Any, test_y: np.ndarray, victim_test: np.ndarray) -> tuple[float, float]:
    """(accuracy %, fidelity %) on the victim's test split (`test_x` in the attacker's preprocessing)."""
    import torch

    with torch.inference_mode():
        pred = model(test_x).argmax(dim=1).numpy()
    return float((pred == test_y).mean() * 100), float((pred == victim_test).mean() * 100)


@dataclass(frozen=True)
class AttackScore:
    name: str
    accuracy_pct: float
    fidelity_pct: float
    labels: int  # labels trained on
    queries: int  # images sent for them (extraction phase)
    victim_label_share_pct: float  # of the kept labels, the share the victim really produced (evaluation only)


def score(name: str, data: Any, collected: Collected, victim_id: str, test: tuple[Any, np.ndarray, np.ndarray],
          seed: int, epochs: int = 15) -> AttackScore:
    if len(collected.labels) == 0:  # the attack got nothing: no surrogate (reported as NaN, not dropped)
        return AttackScore(name, float("nan"), float("nan"), 0, collected.queries, float("nan"))
    model = train_surrogate(data.surrogate_input(collected.indices), collected.labels, seed, epochs)
    acc, fid = evaluate(model, *test)
    share = 100.0 * collected.truth.get(victim_id, 0) / max(1, len(collected.labels))
    return AttackScore(name, acc, fid, len(collected.labels), collected.queries, share)
