"""What the attacker talks to: the real gRPC server, or the simulator's serving path; and the attacker's own data.

Both oracles answer `query(indices, slo_ms, min_accuracy)`: one call carrying the attacker-pool images `indices`,
returning one `Answer` per image. An Answer shows only what the response shows: the top-1 label (and probabilities
from the server), a failure status, and the served subnet id only when the server puts it in the response
(`subnet_visible`). Ground truth (which subnet really answered) is kept apart in `truth` for evaluation; the attack
never reads it.

`SimOracle` is the simulator's serving path: the real SlackFit policy and EDF queue (`superserve.sim.simulate`) on the
zoo's latency table, the attacker's calls injected into a seeded benign workload, an optional hint defense applied to
every request (benign and attacker alike), and labels from each subnet's precomputed predictions on the pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from superserve.records import OK, LATE, STATUSES
from superserve.zoo import Zoo

_SERVED = (STATUSES.index(OK), STATUSES.index(LATE))


@dataclass(frozen=True)
class Answer:
    label: int | None  # top-1 class; None when the call failed
    status: str  # "ok", or why it failed (shed, rejected, a gRPC status name)
    subnet_id: str | None = None  # only when the response shows it
    accuracy: float | None = None  # the subnet_accuracy parameter, only when shown


# --- the attacker's data --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackerData:
    """Raw uint8 images the attacker owns, sent as the UINT8 `IMAGE` input. `from_splits` (used by the benchmark):
    MNIST-5k images disjoint from the victim's training split and from the images it is scored on. `load`: sklearn
    digits (8x8, 0-16 scaled to 0-255), a different dataset; NOTE: the subnets label these upsampled 8x8 digits
    nearly at random (a first run: a surrogate of the victim alone reached 12% on MNIST), so they are no use as a
    transfer set here. `blends` appends 50/50 mixtures of two images of different classes: ambiguous inputs on
    which the subnets disagree most (the fingerprint candidates).
    """

    raw: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64 true class (-1 for blends); the attacker never uses them to train
    transfer: np.ndarray  # indices of the natural digits (the extraction transfer set)
    candidates: np.ndarray  # indices of the blends (fingerprint candidates)

    @classmethod
    def load(cls, blends: int = 64, seed: int = 0, max_digits: int = 1000) -> "AttackerData":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        rng = np.random.default_rng(seed)
        keep_digits = np.sort(rng.permutation(len(bunch.target))[:max_digits])  # a seeded subset (budget-sized)
        digits = np.rint(bunch.images[keep_digits] * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (n, 1, 8, 8)
        labels = bunch.target[keep_digits].astype(np.int64)
        a = rng.integers(0, len(digits), blends * 4)
        b = rng.integers(0, len(digits), blends * 4)
        keep = np.flatnonzero(labels[a] != labels[b])[:blends]
        mixed = ((digits[a[keep]].astype(np.uint16) + digits[b[keep]]) // 2).astype(np.uint8)
        raw = np.concatenate([digits, mixed])
        n = len(digits)
        return cls(raw, np.concatenate([labels, np.full(len(mixed), -1)]), np.arange(n),
                   np.arange(n, n + len(mixed)))

    @classmethod
    def from_splits(cls, splits: Any, blends: int = 48, seed: int = 0) -> "AttackerData":
        """In-distribution attacker data that the victim never trained on and is never scored on: the validation
        split plus the odd-numbered images of the test split (the victim is scored on the even-numbered ones),
        back to raw uint8 pixels; plus `blends` 50/50 mixtures of two images of different classes."""
        import torch

        mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
        std = torch.tensor(splits.std).view(1, -1, 1, 1)
        x = torch.cat([splits.val_x, splits.test_x[1::2]])
        y = np.concatenate([splits.val_y.numpy(), splits.test_y[1::2].numpy()]).astype(np.int64)
        raw = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (n, C, S, S)
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, len(raw), blends * 4), rng.integers(0, len(raw), blends * 4)
        keep = np.flatnonzero(y[a] != y[b])[:blends]
        mixed = ((raw[a[keep]].astype(np.uint16) + raw[b[keep]]) // 2).astype(np.uint8)
        n = len(raw)
        return cls(np.concatenate([raw, mixed]), np.concatenate([y, np.full(len(mixed), -1)]), np.arange(n),
                   np.arange(n, n + len(mixed)))

    def surrogate_input(self, indices: np.ndarray) -> "Any":
        """The attacker's own preprocessing for its surrogate: pixels / 255, resized to 28 x 28, centred."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(self.raw[indices].astype(np.float32) / 255.0)
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return (x - 0.5) / 0.5


def subnet_predictions(net: Any, zoo: Zoo, x: Any, batch: int = 256) -> np.ndarray:
    """(K, N) top-1 labels of every zoo subnet on model-ready input x (N, C, S, S), in zoo order."""
    import torch

    out = np.empty((len(zoo.entries), x.shape[0]), dtype=np.int64)
    with torch.inference_mode():
        for k, e in enumerate(zoo.entries):
            for s in range(0, x.shape[0], batch):
                out[k, s:s + batch] = net(x[s:s + batch], e.config).argmax(dim=1).numpy()
    return out


# --- the real server ------------------------------------------------------------------------------------------------
class ServerOracle:
    """A tritonclient gRPC client sending the pool's raw images as the UINT8 `IMAGE` input."""

    def __init__(self, url: str, data: AttackerData, model: str = "superserve", headers: dict | None = None,
                 ssl: bool = False, root_certificates: str | None = None, timeout_s: float = 30.0) -> None:
        import tritonclient.grpc as tc

        self._tc = tc
        self.client = tc.InferenceServerClient(url, ssl=ssl, root_certificates=root_certificates)
        self.data, self.model, self.headers, self.timeout_s = data, model, headers, timeout_s
        self.queries = 0  # images sent
        self.calls = 0
        self.truth: list[str | None] = []  # served subnet per image, from the response when shown (evaluation)
        self.subnet_visible: bool | None = None  # learned from the first answer

    def query(self, indices: np.ndarray, slo_ms: float | None, min_accuracy: float | None) -> list[Answer]:
        from tritonclient.utils import InferenceServerException

        indices = np.asarray(indices)
        x = self.data.raw[indices]
        inp = self._tc.InferInput("IMAGE", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        params: dict[str, float] = {}
        if slo_ms is not None:
            params["slo_ms"] = float(slo_ms)
        if min_accuracy is not None:
            params["min_accuracy"] = float(min_accuracy)
        self.queries += len(indices)
        self.calls += 1
        try:
            result = self.client.infer(self.model, [inp], outputs=[self._tc.InferRequestedOutput("CLASS")],
                                       parameters=params or None, headers=self.headers,
                                       client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            status = str(exc.status()).replace("StatusCode.", "").lower()
            self.truth.extend([None] * len(indices))
            return [Answer(None, status)] * len(indices)
        labels = result.as_numpy("CLASS")
        p = result.get_response().parameters
        self.subnet_visible = "subnet_id" in p
        ids = p["subnet_id"].string_param.split(",") if "subnet_id" in p else [None]
        ids = ids * len(indices) if len(ids) == 1 else ids
        acc = p["subnet_accuracy"].double_param if "subnet_accuracy" in p else None
        self.truth.extend(ids)
        return [Answer(int(c), OK, s, acc) for c, s in zip(labels, ids)]

    def query_each(self, indices: np.ndarray, slo_ms: float | None, min_accuracy: float | None) -> list[Answer]:
        """One single-image call per image, one after the other (so that no image rides in another's batch)."""
        return [self.query(np.asarray([i]), slo_ms, min_accuracy)[0] for i in np.asarray(indices)]

    def close(self) -> None:
        self.client.close()


# --- the simulator's serving path -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenignWorkload:
    """The other users: Poisson arrivals at `load` x the most accurate subnet's batch-1 throughput, each with an
    SLO of LogUniform(slo_lo, slo_hi) x that subnet's batch-1 budget and, with probability `hinted`, an accuracy hint
    Uniform(lowest, highest zoo accuracy)."""

    load: float = 0.5
    slo_lo: float = 1.0
    slo_hi: float = 6.0
    hinted: float = 0.5

    def sample(self, zoo: Zoo, duration_s: float, overhead_ms: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        top_ms = zoo.entries[-1].latency_ms[zoo.batch_sizes[0]].p99_ms + overhead_ms
        rate = self.load * 1e3 / top_ms
        n = rng.poisson(rate * duration_s)
        arrivals = np.sort(rng.uniform(0.0, duration_s, n))
        slo = top_ms * np.exp(rng.uniform(np.log(self.slo_lo), np.log(self.slo_hi), n))
        accs = [e.accuracy for e in zoo.entries]
        acc = np.where(rng.random(n) < self.hinted, rng.uniform(min(accs), max(accs), n), 0.0)
        return arrivals, slo, acc


@dataclass
class SimOracle:
    zoo: Zoo
    predictions: np.ndarray  # (K, N) each subnet's label on each pool image
    workload: BenignWorkload = BenignWorkload()
    defense: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None  # a HintTransform
    seed: int = 0
    policy: str = "slackfit"
    overhead_ms: float = 2.0  # what the server budgets per batch (rpc_overhead_ms)
    default_slo_ms: float = 100.0  # a call without slo_ms
    subnet_visible: bool = False  # does the response show the subnet id and accuracy?
    window_s: float = 0.25  # benign traffic simulated around each single call
    queries: int = 0
    calls: int = 0
    truth: list = field(default_factory=list)
    benign_good: list = field(default_factory=list)  # per benign request: served within its ORIGINAL hints
    benign_shortfall: list = field(default_factory=list)  # per served benign request: max(0, hint - accuracy)

    def __post_init__(self) -> None:
        from policies.base import make_policy

        self._policy = make_policy(self.policy, self.zoo, overhead_ms=self.overhead_ms)
        self.rng = np.random.default_rng(self.seed)
        self._accuracy = np.array([e.accuracy for e in self.zoo.entries])

    def query(self, indices: np.ndarray, slo_ms: float | None, min_accuracy: float | None) -> list[Answer]:
        """One call at a random moment inside a window of benign traffic."""
        indices = np.asarray(indices)
        t = self.rng.uniform(0.3, 0.7) * self.window_s
        return self._run(indices, np.full(len(indices), t), slo_ms, min_accuracy, self.window_s)

    def pace_s(self, slo_ms: float | None) -> float:
        """The attacker's spacing between calls: one call in flight at a time, like a client that waits for each
        answer (an answer or a shed comes by the deadline). NOTE: calls 10-20 ms apart, as this oracle used to
        send them, overload the server with the attacker's own probes once the pinned subnet takes longer than
        that; the pin then looked unreliable for reasons that had nothing to do with fingerprinting."""
        return 1e-3 * (self.default_slo_ms if slo_ms is None else slo_ms) + 1e-3

    def query_each(self, indices: np.ndarray, slo_ms: float | None, min_accuracy: float | None,
                   interval_s: float | None = None) -> list[Answer]:
        """One single-image call per image, `interval_s` apart (default: `pace_s`), in one window of benign
        traffic."""
        out = self.query_stream([np.asarray([i]) for i in np.asarray(indices)], slo_ms, min_accuracy, interval_s)
        self.calls += len(out) - 1
        return [a[0] for a in out]

    def query_stream(self, batches: list[np.ndarray], slo_ms: float | None, min_accuracy: float | None,
                     interval_s: float | None = None) -> list[list[Answer]]:
        """Many calls, one every `interval_s` (default: `pace_s`), in one long run of benign traffic (the
        extraction phase)."""
        if interval_s is None:
            interval_s = self.pace_s(slo_ms)
        times = np.concatenate([np.full(len(b), 0.05 + k * interval_s) for k, b in enumerate(batches)])
        flat = self._run(np.concatenate(batches), times, slo_ms, min_accuracy, 0.1 + len(batches) * interval_s)
        out, pos = [], 0
        for b in batches:
            out.append(flat[pos:pos + len(b)])
            pos += len(b)
        return out

    def _run(self, indices: np.ndarray, times: np.ndarray, slo_ms: float | None, min_accuracy: float | None,
             duration_s: float) -> list[Answer]:
        from superserve.sim import SimConfig, simulate

        self.queries += len(indices)
        self.calls += 1
        if min_accuracy is not None and min_accuracy > self._accuracy.max() + 1e-12:
            self.truth.extend([None] * len(indices))  # the server refuses such a hint outright
            return [Answer(None, "invalid_argument")] * len(indices)
        b_arr, b_slo, b_acc = self.workload.sample(self.zoo, duration_s, self.overhead_ms, self.rng)
        n_b, n_a = len(b_arr), len(indices)
        arrivals = np.concatenate([b_arr, times])
        slo = np.concatenate([b_slo, np.full(n_a, self.default_slo_ms if slo_ms is None else slo_ms)])
        acc = np.concatenate([b_acc, np.full(n_a, 0.0 if min_accuracy is None else min_accuracy)])
        orig_slo, orig_acc = slo.copy(), acc.copy()
        if self.defense is not None:
            slo, acc = self.defense(slo, acc, self.rng)
            acc = np.minimum(acc, self._accuracy.max())
        order = np.argsort(arrivals, kind="stable")
        recs = simulate(arrivals[order], self._policy, slo[order], acc[order],
                        SimConfig(workers=1, seed=int(self.rng.integers(1 << 31))))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        status, subnet, finish = recs.status[back], recs.subnet[back], recs.finish_s[back]
        served = np.isin(status, _SERVED)
        with np.errstate(invalid="ignore"):
            good = served & (finish <= arrivals + orig_slo * 1e-3 + 1e-12) & \
                (self._accuracy[np.maximum(subnet, 0)] >= orig_acc - 1e-9)
        self.benign_good.extend(good[:n_b].tolist())
        served_acc = np.where(served, self._accuracy[np.maximum(subnet, 0)], np.nan)
        self.benign_shortfall.extend(np.maximum(0.0, orig_acc - served_acc)[:n_b][served[:n_b]].tolist())
        answers = []
        for j in range(n_a):
            k = n_b + j
            if not served[k]:
                self.truth.append(None)
                answers.append(Answer(None, STATUSES[status[k]]))
                continue
            sid = self.zoo.entries[subnet[k]].subnet_id
            self.truth.append(sid)
            shown = sid if self.subnet_visible else None
            answers.append(Answer(int(self.predictions[subnet[k], indices[j]]), OK, shown,
                                  float(self._accuracy[subnet[k]]) if self.subnet_visible else None))
        return answers

    @property
    def benign_goodput(self) -> float:
        return float(np.mean(self.benign_good)) if self.benign_good else float("nan")

    @property
    def benign_accuracy_shortfall_points(self) -> float:
        """Mean accuracy-hint shortfall over served benign requests, in accuracy points."""
        return 100.0 * float(np.mean(self.benign_shortfall)) if self.benign_shortfall else float("nan")
