"""Fingerprinting: learn which subnet answers, and find hints that make a chosen victim answer consistently.

Black box (see `security/__init__.py`): the attacker knows neither the zoo nor the policy. It has its own images
(`AttackerData`), sends calls with (slo_ms, min_accuracy) and reads labels and failures.

1. Discovery. `probe` = a few candidate images (blended digits, on which models disagree), each sent as its own
   single-image call (so that no image rides in a batch chosen for another request). The attacker scans the
   SLO axis (min_accuracy 0) on a log grid and bisects between neighbouring grid points that answer with different
   probe signatures (signature = the tuple of top-1 labels on the probe set), until the boundary is located within
   `resolution`. Each point is `repeats` passes over the probe set, reduced to the per-image majority label.
   Signatures are clustered (a label or two may differ); clusters seen at least twice are the responders, ordered
   by the median SLO at which they answer (the Pareto order, fastest first; by the shown accuracy when shown).
   NOTE: this scans the SLO axis only, which is what moves a slack-driven policy such as SlackFit; a policy driven
   by the accuracy hint alone (INFaaS-style) needs the same scan on the accuracy axis (not implemented).
2. Fingerprint set: the fewest probe images whose labels still separate every pair of responders (greedy set cover),
   so that each later identification costs |X_fp| queries (typically 2-4).
3. Pin: for the victim responder, the SLO interval where it answers on the SLO axis -> its geometric middle; then,
   at that SLO, bisect the largest min_accuracy at which it still answers and pin just there: lower-accuracy subnets
   are then excluded (under load the server sheds instead of downgrading), slower ones excluded by the SLO.
   When the response shows `subnet_id`/`subnet_accuracy` the signature is the id and the accuracy hint is the shown
   accuracy: no probes and no accuracy search.
4. Identification under noise: the labels on X_fp are matched to the responder signatures image by image and the
   responder with most matches wins (ties or fewer than half matching: unknown), so a defense that moves single
   images does not make the attacker lose track.
Every call is counted (`oracle.queries` images, `oracle.calls` calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

SLO_GRID_MS = tuple(float(x) for x in np.geomspace(0.5, 2000.0, 12))


@dataclass(frozen=True)
class Pin:
    slo_ms: float
    min_accuracy: float
    victim: int  # responder index (Pareto order)
    signature: tuple  # the victim's signature on the fingerprint set (or its subnet id)


@dataclass
class Fingerprinter:
    oracle: Any  # ServerOracle or SimOracle
    probe: np.ndarray  # candidate image indices for discovery
    use_subnet_param: bool = True  # read subnet_id/subnet_accuracy when the response shows them
    resolution: float = 1.03  # SLO boundaries located within this ratio
    acc_resolution: float = 0.001
    max_fp: int = 8
    votes: int = 3  # identifications per step of the accuracy search (majority decides)
    repeats: int = 3  # passes over the probe set per discovery point (per-image majority)
    responders: list[tuple] = field(default_factory=list)  # signatures on `probe` (or subnet ids), Pareto order
    fp_positions: list[int] = field(default_factory=list)  # positions within `probe` forming X_fp
    log: list[tuple[float, float, Any]] = field(default_factory=list)  # (slo, acc, signature) of every probe call
    _slo_axis: list[tuple[float, Any]] = field(default_factory=list)
    _seen_first: dict = field(default_factory=dict)

    # --- signatures ---------------------------------------------------------------------------------------------
    def _visible(self, answers: Sequence[Any]) -> bool:
        return self.use_subnet_param and all(a.subnet_id is not None for a in answers)

    def signature(self, slo_ms: float | None, min_accuracy: float | None) -> Any:
        """The full probe signature (discovery); None when the call failed."""
        if self.use_subnet_param and getattr(self.oracle, "subnet_visible", False):
            sig = self._sig(self.oracle.query(self.probe[:1], slo_ms, min_accuracy))
        else:
            # `repeats` passes over the probe set; per image the most frequent label (a pass whose image rode in
            # another request's batch, or was moved by a defense, is outvoted)
            passes = np.array([[-1 if a.label is None else a.label
                                for a in self.oracle.query_each(self.probe, slo_ms, min_accuracy)]
                               for _ in range(self.repeats)])  # (repeats, P)
            modal = []
            for col in passes.T:
                known = col[col >= 0]
                modal.append(int(np.bincount(known).argmax()) if known.size else -1)
            sig = None if sum(m < 0 for m in modal) * 3 >= len(modal) else tuple(modal)
        self.log.append((slo_ms, min_accuracy, sig))
        return sig

    def _sig(self, answers: Sequence[Any]) -> Any:
        """Labels, -1 where the call failed (shed under load); None when a third or more failed."""
        failed = sum(a.label is None for a in answers)
        if failed * 3 >= len(answers):
            return None
        if self._visible([a for a in answers if a.label is not None]):
            shown = {(a.subnet_id, a.accuracy) for a in answers if a.label is not None}
            return ("id",) + shown.pop() if len(shown) == 1 else None
        return tuple(-1 if a.label is None else a.label for a in answers)

    def identify(self, slo_ms: float | None, min_accuracy: float | None) -> int | None:
        """Which responder answers these hints: one call of |X_fp| images (1 when the id is shown)."""
        if self.use_subnet_param and getattr(self.oracle, "subnet_visible", False):
            answers = self.oracle.query(self.probe[:1], slo_ms, min_accuracy)
            sig = self._sig(answers)
            return None if sig is None or sig not in self.responders else self.responders.index(sig)
        idx = self.probe[self.fp_positions]
        answers = self.oracle.query_each(idx, slo_ms, min_accuracy)
        got = np.array([-1 if a.label is None else a.label for a in answers])
        known = got >= 0
        if not known.any():
            return None  # every image was shed or refused
        matches = np.array([(np.array(r)[self.fp_positions][known] == got[known]).sum() for r in self.responders])
        best = int(matches.argmax())
        if (matches == matches[best]).sum() > 1 or matches[best] * 2 <= known.sum():
            return None  # a tie, or most of the images match nobody: unknown
        return best

    # --- 1. discovery -------------------------------------------------------------------------------------------
    def discover(self, slo_grid: Sequence[float] = SLO_GRID_MS) -> list[tuple]:
        counts: dict[Any, int] = {}
        seen_at: dict[Any, list[float]] = {}

        def note(slo: float, sig: Any) -> None:
            if sig is not None:
                counts[sig] = counts.get(sig, 0) + 1
                seen_at.setdefault(sig, []).append(slo)

        points = [(s, self.signature(s, 0.0)) for s in slo_grid]
        for s, sig in points:
            note(s, sig)
        # bisect between neighbours with different answers (geometric midpoints)
        stack = [(points[k], points[k + 1]) for k in range(len(points) - 1) if points[k][1] != points[k + 1][1]]
        while stack:
            (lo, lo_sig), (hi, hi_sig) = stack.pop()
            if hi / lo <= self.resolution:
                continue
            mid = math.sqrt(lo * hi)
            sig = self.signature(mid, 0.0)
            note(mid, sig)
            points.append((mid, sig))
            if sig != lo_sig:
                stack.append(((lo, lo_sig), (mid, sig)))
            if sig != hi_sig:
                stack.append(((mid, sig), (hi, hi_sig)))
        self._slo_axis = sorted(points)
        self.responders = self._cluster(counts, seen_at)
        self._choose_fingerprint_set()
        return self.responders

    def _cluster(self, counts: dict, seen_at: dict) -> list[tuple]:
        """Responders from the signatures seen, in Pareto order (by the median SLO at which each was seen: a
        faster subnet answers smaller SLOs). Shown ids are exact. Label signatures are clustered: the most frequent
        signature founds a cluster and every signature within `tolerance` differing labels joins it (a call whose
        image rode in a batch chosen for another request, or a defense moving one image, changes a label or two);
        a cluster seen only once is dropped as a likely mixture."""
        if any(isinstance(sig[0], str) for sig in counts):  # shown ids: order by the shown accuracy
            return sorted(counts, key=lambda s: (s[2] if s[2] is not None else 0.0, float(np.median(seen_at[s]))))
        centroids: list[tuple] = []
        total: dict[tuple, int] = {}
        where: dict[tuple, list[float]] = {}
        for sig in sorted(counts, key=lambda s: (sum(x < 0 for x in s), -counts[s], min(seen_at[s]))):
            home = self._nearest(sig, centroids)
            if home is None:
                centroids.append(sig)
                home = sig
            total[home] = total.get(home, 0) + counts[sig]
            where.setdefault(home, []).extend(seen_at[sig])
        kept = [c for c in centroids if total[c] >= 2] or centroids
        return sorted(kept, key=lambda c: float(np.median(where[c])))

    @property
    def tolerance(self) -> int:
        return max(1, len(self.probe) // 6)

    def _nearest(self, sig: Any, centroids: Sequence[tuple]) -> tuple | None:
        if sig is None or not centroids:
            return None
        if isinstance(sig[0], str):
            return sig if sig in centroids else None
        x = np.array(sig)
        dist = []
        for c in centroids:
            y = np.array(c)
            known = (x >= 0) & (y >= 0)
            dist.append(np.inf if known.sum() * 2 < len(x) else float((x[known] != y[known]).sum()))
        k = int(np.argmin(dist))
        return centroids[k] if dist[k] <= self.tolerance else None

    # --- 2. fingerprint set -------------------------------------------------------------------------------------
    def _choose_fingerprint_set(self, votes: int = 3) -> None:
        """Greedy: add the probe image separating the most still-under-separated responder pairs, until every
        pair differs on `votes` images of the set (or `max_fp` images are used)."""
        if not self.responders or isinstance(self.responders[0][0], str):
            self.fp_positions = [0]
            return
        sigs = np.array(self.responders)  # (R, P)
        need = {(i, j): votes for i in range(len(sigs)) for j in range(i + 1, len(sigs))}
        chosen: list[int] = []
        while need and len(chosen) < self.max_fp:
            gain = [0 if p in chosen else sum(sigs[i, p] != sigs[j, p] for i, j in need)
                    for p in range(sigs.shape[1])]
            p = int(np.argmax(gain))
            if gain[p] == 0:
                break
            chosen.append(p)
            need = {(i, j): n - (sigs[i, p] != sigs[j, p]) for (i, j), n in need.items()}
            need = {k: n for k, n in need.items() if n > 0}
        self.fp_positions = chosen or [0]

    # --- 3. pin -------------------------------------------------------------------------------------------------
    def slo_interval(self, victim: int) -> tuple[float, float]:
        """[lowest SLO seen answering with the victim, lowest larger SLO answering with a later responder)."""
        sig = self.responders[victim]
        home = [(s, self._nearest(g, self.responders)) for s, g in self._slo_axis]
        seen = [s for s, h in home if h == sig]
        if not seen:
            raise LookupError(f"responder {victim} never answered on the SLO axis (an accuracy-driven policy?)")
        lo = min(seen)
        later = [s for s, h in home if s > lo and h is not None and h in self.responders[victim + 1:]]
        hi = min(later) if later else max(seen) * 4.0
        return lo, hi

    def pin(self, victim: int) -> Pin:
        lo, hi = self.slo_interval(victim)
        slo = math.sqrt(lo * hi)
        sig = self.responders[victim]
        if isinstance(sig[0], str) and sig[0] == "id" and sig[2] is not None:
            return Pin(slo, float(sig[2]), victim, sig)  # the response showed the subnet's accuracy
        a_lo, a_hi = 0.0, 1.0  # victim answers at a_lo; find the largest such a
        while a_hi - a_lo > self.acc_resolution:
            mid = 0.5 * (a_lo + a_hi)
            if sum(self.identify(slo, mid) == victim for _ in range(self.votes)) * 2 > self.votes:
                a_lo = mid
            else:
                a_hi = mid
        return Pin(slo, a_lo, victim, sig)

    def consistency(self, pin: Pin, trials: int = 5) -> float:
        """Fraction of `trials` identifications at the pin that name the victim."""
        return float(np.mean([self.identify(pin.slo_ms, pin.min_accuracy) == pin.victim for _ in range(trials)]))
