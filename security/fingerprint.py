"""Fingerprinting: learn which responders the zoo has, and find hints that make a chosen victim answer consistently.

Black box (see `security/__init__.py`): the attacker knows neither the zoo nor the policy. It has its own images
(`AttackerData`), sends single-image calls with (slo_ms, min_accuracy), one call in flight at a time, and reads labels,
failure statuses and, only when the server shows them, `subnet_id` / `subnet_accuracy`.

1. Discovery: the staircase. An accuracy/latency-aware server serves a call iff some subnet meets both hints, so
   "served or not" traces the zoo's Pareto front: A(s) = the largest min_accuracy still served at slo_ms = s is a
   step function with one step per front subnet (its accuracy), and S(a) = the smallest slo_ms served at
   min_accuracy = a steps at each front subnet's latency budget. The attacker walks the staircase:
   the smallest SLO served without an accuracy hint (the fastest responder's budget), the largest accuracy hint
   served there (its accuracy), the smallest SLO served with a hint just above it (the next responder's budget), and
   so on until a hint is refused outright (INVALID_ARGUMENT: above the most accurate subnet; the attacker bisects
   that bound first, one call per step, since refusals do not depend on load). Each step is a bisection (SLO in log
   space to `resolution`, accuracy to `acc_resolution`) whose tests estimate the served fraction: an SLO test is a
   sequential majority (`need` of `tries` calls served), which puts a boundary where the served fraction crosses
   one half, the undefended boundary under symmetric noise on the hints (with "served once in 3" tiny noise made
   phantom steps); the accuracy test at a step's lower edge counts one served call (there about half of the
   feasible calls are shed under load), and the next floor is then pushed past the noise until `tries` calls are
   all unserved (`_clear_above`). Only statuses are needed: labels play no part, so
   the label noise of the old probe-signature scan (ambiguous images, riders) cannot split or merge responders. When
   the response shows the subnet, the shown accuracy replaces the accuracy bisection.
   NOTE: this reads a policy that honours both hints (SlackFit and every baseline here do); a policy that ignores
   the SLO when idle would show one step per accuracy level only.
2. Signatures and the fingerprint set: every responder's labels on the probe images at its lower edge as it is
   when signed (`edge_hints`: accuracy hint = its floor, SLO walked from the discovered start to the smallest
   served; only the fastest subnet meeting the floor fits there, however a real server's online latency correction
   has moved the steps since discovery) (`repeats` passes, per-image majority; a third pass only where two
   disagree), then the fewest probe images that separate
   every pair of responders by `votes` images, neighbouring pairs first (greedy; at most `max_fp`). Neighbours are
   the pairs a defense or a rider swaps, and they disagree on the fewest images: the disagreement set is chosen from
   the attacker's own blends and its own answers.
3. Pin and verification: candidate hints inside the victim's step (SLO at a few points of its interval; the accuracy
   hint half-way between the previous responder's accuracy and the victim's, or no accuracy hint at all), each
   checked by `checks` identifications; a later candidate replaces the default only when it names the victim at
   least twice more often, and its
   measured consistency is kept in the Pin. A hint-shaping defense that moves only "pin-shaped" requests is then met
   by whichever candidate it leaves alone.
   During extraction a check that names another responder makes the attacker re-locate the victim's step
   (`repin`: the two SLO boundaries bisected again at the same accuracy hints) and carry on with the new pin.
4. Identification: the labels on the fingerprint set matched to the responder signatures image by image; the
   responder with most matches wins (ties, or fewer than half matching: unknown). One call per image.
Every call is counted (`oracle.queries` images, `oracle.calls` calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

REFUSED = ("invalid_argument", "INVALID_ARGUMENT")


@dataclass(frozen=True)
class Responder:
    """One step of the staircase: a subnet the server can be made to serve alone."""

    accuracy: float  # the largest accuracy hint found served (or the shown accuracy)
    slo_lo_ms: float  # the smallest SLO found served with a hint just above the previous responder's accuracy
    floor: float  # a hint above this excludes every faster responder (just above the previous accuracy; 0 first)
    next_slo_ms: float = math.inf  # where the next, more accurate responder starts answering
    subnet_id: str | None = None  # when the response shows it


@dataclass(frozen=True)
class Pin:
    slo_ms: float
    min_accuracy: float
    victim: int  # responder index (Pareto order)
    signature: tuple  # the victim's labels on the fingerprint set (or ("id", subnet_id))
    consistency: float = float("nan")  # fraction of verification identifications naming the victim
    queries: int = 0  # images spent choosing and verifying this pin


@dataclass
class Fingerprinter:
    oracle: Any  # ServerOracle or SimOracle
    probe: np.ndarray  # candidate image indices (blends): status calls and signatures
    use_subnet_param: bool = True  # read subnet_id/subnet_accuracy when the response shows them
    resolution: float = 1.01  # SLO steps located within this ratio
    acc_resolution: float = 0.0005
    slo_min_ms: float = 0.1
    slo_max_ms: float = 10_000.0
    tries: int = 5  # calls per feasibility test at most (sequential: stops once the majority is decided)
    need: int = 3  # served calls out of `tries` that make a point feasible (the served fraction is >= need/tries)
    repeats: int = 3  # passes per signature (majority)
    votes: int = 3  # images separating each pair of responders in the fingerprint set
    max_fp: int = 8
    checks: int = 5  # identifications per pin candidate
    max_responders: int = 64
    responders: list[Responder] = field(default_factory=list)
    signatures: list[tuple] = field(default_factory=list)  # labels on `probe` per responder (hidden mode)
    fp_positions: list[int] = field(default_factory=list)  # positions within `probe` forming X_fp
    max_hint: float = 1.0  # the largest accuracy hint not refused
    log: list[tuple[float, float, str]] = field(default_factory=list)  # (slo, acc, status) of every status call
    _k: int = 0

    # --- calls --------------------------------------------------------------------------------------------------
    @property
    def shown(self) -> bool:
        return self.use_subnet_param and bool(getattr(self.oracle, "subnet_visible", False))

    def _call(self, slo_ms: float, min_accuracy: float) -> Any:
        """One single-image call (the probe images in turn)."""
        image = self.probe[self._k % len(self.probe)]
        self._k += 1
        a = self.oracle.query(np.asarray([image]), slo_ms, min_accuracy)[0]
        self.log.append((slo_ms, min_accuracy, a.status))
        return a

    def feasible(self, slo_ms: float, min_accuracy: float, need: int | None = None) -> bool:
        """Is the served fraction at these hints at least `need` / `tries`? Sequential: calls stop as soon as `need`
        are served or `tries - need + 1` are not (a refusal decides at once). A majority, not "served once": under a
        noise defense a hint just past a step is still served now and then (the noise pulled it back), and "any of
        3" read that as a feasible point, so discovery saw phantom steps; a majority puts the boundary where the
        served fraction crosses one half, the undefended one for symmetric noise. A feasible call shed by load
        counts against it: at the loads here (pins shed ~15%) a majority still holds."""
        need = self.need if need is None else need
        served = failed = 0
        while served < need and failed <= self.tries - need:
            a = self._call(slo_ms, min_accuracy)
            if a.status in REFUSED:
                return False
            if a.label is not None:
                served += 1
            else:
                failed += 1
        return served >= need

    def _shown_at(self, slo_ms: float, min_accuracy: float) -> tuple[str, float] | None:
        """The majority shown (subnet_id, accuracy) over the first `tries` served calls (at most 3 x `tries`
        calls: near a step's edge, under a defense, many calls fail)."""
        seen: list[tuple[str, float]] = []
        for _ in range(3 * self.tries):
            a = self._call(slo_ms, min_accuracy)
            if a.label is not None and a.subnet_id is not None:
                seen.append((a.subnet_id, a.accuracy))
                if len(seen) == self.tries:
                    break
        return max(set(seen), key=seen.count) if seen else None

    def tests(self) -> list[tuple[float, float, int, int]]:
        """The status calls grouped into tests: (slo_ms, min_accuracy, served, calls) per run of identical hints."""
        out: list[list] = []
        for slo, acc, status in self.log:
            ok = status in ("ok", "late")
            if out and out[-1][0] == slo and out[-1][1] == acc:
                out[-1][2] += ok
                out[-1][3] += 1
            else:
                out.append([slo, acc, int(ok), 1])
        return [tuple(t) for t in out]

    # --- 1. discovery -------------------------------------------------------------------------------------------
    def _largest_hint(self) -> float:
        """The largest accuracy hint the server does not refuse outright (refusals do not depend on load)."""
        lo, hi = 0.0, 1.0
        if self._call(self.slo_max_ms, 1.0).status not in REFUSED:
            return 1.0
        while hi - lo > self.acc_resolution / 4:
            mid = 0.5 * (lo + hi)
            if self._call(self.slo_max_ms, mid).status in REFUSED:
                hi = mid
            else:
                lo = mid
        return lo

    def _smallest_slo(self, acc: float, lo: float, hi: float) -> float:
        """Bisect (log space) the smallest SLO served at `acc`; `hi` is known served."""
        while hi / lo > self.resolution:
            mid = math.sqrt(lo * hi)
            if self.feasible(mid, acc):
                hi = mid
            else:
                lo = mid
        return hi

    def _largest_acc(self, slo: float, lo: float, hi: float) -> tuple[float, float]:
        """Bisect the largest accuracy hint served at `slo`: (served, not served) within `acc_resolution`. Here a
        hint counts as served once in `tries` calls: `slo` is the step's lower edge as a majority test found it,
        where about half of the feasible calls are shed under load; an infeasible hint is served only when noise
        pulls it down (the estimate then errs upwards, and `_clear_above` places the next floor past the noise)."""
        while hi - lo > self.acc_resolution:
            mid = 0.5 * (lo + hi)
            if self.feasible(slo, mid, need=1):
                lo = mid
            else:
                hi = mid
        return lo, hi

    def _clear_above(self, slo: float, acc: float, above: float) -> float:
        """The accuracy hint that excludes this responder for sure: the majority boundary `acc` is where the served
        fraction crosses one half; under noise on the hints a hint just above it is still served often, and a
        floor there made the next SLO bisection find a phantom step. So the offset above `acc` doubles until
        `tries` calls at this SLO are all refused or shed (undefended: the first offset, `tries` calls)."""
        off = max(above - acc, self.acc_resolution)
        for _ in range(8):
            h = acc + off
            if h > self.max_hint:
                return h
            for _ in range(self.tries):
                a = self._call(slo, h)
                if a.label is not None:
                    break
                if a.status in REFUSED:
                    return h
            else:
                return h
            off *= 2
        return acc + off

    def discover(self) -> list[Responder]:
        self.max_hint = self._largest_hint()
        found: list[Responder] = []
        if not self.feasible(self.slo_max_ms, 0.0):
            self.responders = []
            return []
        floor = 0.0  # a hint at this level is served at every SLO from the current step on
        s = self.slo_min_ms if self.feasible(self.slo_min_ms, 0.0) else \
            self._smallest_slo(0.0, self.slo_min_ms, self.slo_max_ms)
        while len(found) < self.max_responders:
            sid = None
            if self.shown:
                got = self._shown_at(s, floor)
                for _ in range(6):  # all shed: the step moved up since it was found (a server's latency correction)
                    if got is not None:
                        break
                    s *= 1.04
                    got = self._shown_at(s, floor)
                if got is None or got[1] is None:
                    break
                sid, acc = got
                above = min(acc + 1e-6, 1.0)
            else:
                hi = min(1.0, self.max_hint + self.acc_resolution / 4)
                acc, above = (hi, hi) if self.feasible(s, hi, need=1) else self._largest_acc(s, floor, hi)
                above = self._clear_above(s, acc, above)
            if sid is not None and found and found[-1].subnet_id == sid:
                # the same subnet again (a defense blurs the steps): one responder, its step extended
                prev = found.pop()
                found.append(Responder(max(acc, prev.accuracy), prev.slo_lo_ms, prev.floor, subnet_id=sid))
            else:
                found.append(Responder(acc, s, floor, subnet_id=sid))
            if above > self.max_hint or acc >= 1.0 or not self.feasible(self.slo_max_ms, above):
                break
            s_next = self._smallest_slo(above, s, self.slo_max_ms)
            last = found[-1]
            found[-1] = Responder(last.accuracy, last.slo_lo_ms, last.floor, s_next, sid)
            floor, s = above, s_next
        self.responders = found
        if not self.shown:
            self._signatures()
            self._merge()
            self._choose_fingerprint_set()
        return self.responders

    def _merge(self) -> None:
        """Adjacent steps whose signatures agree on every image both answered are one responder: noise on the hints
        (a defense) blurs each step's edges, and the staircase then walks up one subnet in several small steps.
        (Neighbouring subnets of the shipped zoo disagree on 7-34 of its 48 blends, so true neighbours rarely
        collide on the probe set; when they do, they are one responder to this attacker.)"""
        rs, sigs = list(self.responders), list(self.signatures)
        k = 0
        while k + 1 < len(rs):
            a, b = np.array(sigs[k]), np.array(sigs[k + 1])
            both = (a >= 0) & (b >= 0)
            if both.sum() * 2 >= len(a) and (a[both] == b[both]).all():
                rs[k] = Responder(rs[k + 1].accuracy, rs[k].slo_lo_ms, rs[k].floor, rs[k + 1].next_slo_ms,
                                  rs[k].subnet_id)
                sigs[k] = tuple(int(x) if x >= 0 else int(y) for x, y in zip(a, b))
                del rs[k + 1], sigs[k + 1]
            else:
                k += 1
        self.responders, self.signatures = rs, sigs

    # --- 2. signatures and the fingerprint set ------------------------------------------------------------------
    def default_hints(self, k: int, where: float = 0.5, loose: bool = False) -> tuple[float, float]:
        """Hints inside responder k's step: SLO at geometric fraction `where` of [its start, the next one's start)
        (four times its start for the last: nothing above to avoid, and slack helps under load), accuracy half-way between the floor and its accuracy (0 when `loose`)."""
        r = self.responders[k]
        top = r.next_slo_ms if math.isfinite(r.next_slo_ms) else 4.0 * r.slo_lo_ms
        slo = r.slo_lo_ms * (top / r.slo_lo_ms) ** where
        acc = 0.0 if loose else 0.5 * (r.floor + r.accuracy)
        return slo, acc

    def edge_hints(self, k: int, step: float = 1.04, walk: int = 6) -> tuple[float, float]:
        """Hints at responder k's lower edge as it is now: the accuracy hint `floor` (every faster responder
        excluded) and the smallest SLO served there, found by walking from the discovered start in `step` ratios
        (down while served, up while not; single calls, at most `walk` each way), plus 2%; never above the middle of
        the step. At the edge only the fastest subnet meeting the floor fits, i.e. responder k, wherever a server's
        online latency correction has moved the step since discovery (on a busy host it moved by 1.5x within
        seconds, and mid-step hints of the narrow steps then selected a neighbour)."""
        r = self.responders[k]
        mid = self.default_hints(k)[0]
        s = r.slo_lo_ms
        served = self._call(s, r.floor).label is not None
        for _ in range(walk):
            nxt = s / step if served else s * step
            if served and nxt < self.slo_min_ms:
                break
            ok = self._call(nxt, r.floor).label is not None
            if served and not ok:
                break  # s is the smallest served
            s = nxt
            if not served and ok:
                served = True
                break
        return min(1.02 * s, mid) if served else mid, r.floor

    def _labels(self, slo: float, acc: float, positions: Sequence[int]) -> np.ndarray:
        answers = self.oracle.query_each(self.probe[list(positions)], slo, acc)
        return np.array([-1 if a.label is None else a.label for a in answers])

    def _signatures(self) -> None:
        """Per responder, the per-image majority label on the probe set at its edge hints (`edge_hints`; two
        passes, a third only where they differ or failed)."""
        sigs = []
        everything = list(range(len(self.probe)))
        for k in range(len(self.responders)):
            hints = self.edge_hints(k)
            passes = [self._labels(*hints, everything) for _ in range(min(2, self.repeats))]
            unsure = [p for p in everything if passes[0][p] != passes[1][p] or passes[0][p] < 0] \
                if len(passes) == 2 else []
            extra = np.full(len(everything), -1)
            for _ in range(self.repeats - 2):
                if unsure:
                    extra[unsure] = self._labels(*hints, unsure)
            stacked = np.vstack(passes + [extra])
            sig = []
            for col in stacked.T:
                known = col[col >= 0]
                sig.append(int(np.bincount(known).argmax()) if known.size else -1)
            sigs.append(tuple(sig))
        self.signatures = sigs

    def _choose_fingerprint_set(self) -> None:
        """Greedy: add the probe image separating the most still-under-separated pairs (neighbouring pairs weigh
        4x), until every pair differs on `votes` images of the set (or `max_fp` images are used)."""
        if len(self.signatures) < 2:
            self.fp_positions = [0]
            return
        sigs = np.array(self.signatures)  # (R, P)
        known = sigs >= 0
        need = {(i, j): self.votes for i in range(len(sigs)) for j in range(i + 1, len(sigs))}
        chosen: list[int] = []
        while need and len(chosen) < self.max_fp:
            def gain(p: int) -> float:
                return sum((4.0 if j == i + 1 else 1.0) for i, j in need
                           if known[i, p] and known[j, p] and sigs[i, p] != sigs[j, p])
            gains = [-1.0 if p in chosen else gain(p) for p in range(sigs.shape[1])]
            p = int(np.argmax(gains))
            if gains[p] <= 0:
                break
            chosen.append(p)
            need = {(i, j): n - int(known[i, p] and known[j, p] and sigs[i, p] != sigs[j, p])
                    for (i, j), n in need.items()}
            need = {k: n for k, n in need.items() if n > 0}
        self.fp_positions = chosen or [0]

    # --- 3. pin and verification --------------------------------------------------------------------------------
    def candidates(self, victim: int) -> list[tuple[float, float]]:
        """Pin candidates, the default first: mid-interval with the accuracy hint, then without it, then the SLO
        nearer either end of the step."""
        out = [self.default_hints(victim), self.default_hints(victim, loose=True),
               self.default_hints(victim, 0.2), self.default_hints(victim, 0.8)]
        if not self.shown:
            out.append(self.edge_hints(victim))
        return list(dict.fromkeys(out))

    def pin(self, victim: int, verify: bool = True) -> Pin:
        if not 0 <= victim < len(self.responders):
            raise LookupError(f"no responder {victim} (found {len(self.responders)})")
        q0 = self.oracle.queries
        sig = ("id", self.responders[victim].subnet_id) if self.shown else \
            tuple(np.array(self.signatures[victim])[self.fp_positions].tolist())
        best, best_score = self.default_hints(victim), float("nan")
        if verify:
            for hints in self.candidates(victim):
                score = float(np.mean([self.identify(*hints) == victim for _ in range(self.checks)]))
                # the first candidate, or one naming the victim at least twice more often (a single check is noise)
                if math.isnan(best_score) or score >= best_score + 1.5 / self.checks:
                    best, best_score = hints, score
                if best_score == 1.0:
                    break
        return Pin(best[0], best[1], victim, sig, best_score, self.oracle.queries - q0)

    def repin(self, pin: Pin) -> Pin:
        """Re-locate the victim's step and return a pin at its middle: the attacker's answer to a server whose
        latency table moves under it (online correction rescales each subnet by its own observed factor, so the SLO
        interval that selected the victim drifts). The accuracy side does not move: the hint that excludes every
        faster responder (`floor`) and the one that excludes the victim (just above its accuracy) are re-used; only
        the two SLO boundaries are bisected again, bracketed around the old ones (4x either side, coarser: 3%)."""
        k = pin.victim
        r = self.responders[k]
        res, self.resolution = self.resolution, max(self.resolution, 1.03)
        try:
            hi = min(self.slo_max_ms, 4.0 * r.slo_lo_ms)
            while not self.feasible(hi, r.floor) and hi < self.slo_max_ms:
                hi = min(self.slo_max_ms, 4.0 * hi)
            start = self._smallest_slo(r.floor, max(self.slo_min_ms, r.slo_lo_ms / 4.0), hi)
            nxt = math.inf
            if k + 1 < len(self.responders):
                above = self.responders[k + 1].floor
                top = min(self.slo_max_ms, 4.0 * max(r.next_slo_ms, start))
                if self.feasible(top, above):
                    nxt = self._smallest_slo(above, start, top)
        finally:
            self.resolution = res
        self.responders[k] = Responder(r.accuracy, start, r.floor, nxt, r.subnet_id)
        slo, acc = self.default_hints(k)
        return Pin(slo, acc, k, pin.signature, pin.consistency, pin.queries)

    # --- 4. identification --------------------------------------------------------------------------------------
    def identify(self, slo_ms: float | None, min_accuracy: float | None) -> int | None:
        """Which responder answers these hints: |X_fp| single-image calls (one when the id is shown, retried when
        shed)."""
        if self.shown:  # one call; a shed call says nothing, so up to `tries` calls
            ids = [r.subnet_id for r in self.responders]
            for _ in range(self.tries):
                a = self.oracle.query(self.probe[:1], slo_ms, min_accuracy)[0]
                if a.label is not None:
                    return ids.index(a.subnet_id) if a.subnet_id in ids else None
            return None
        if not self.signatures:
            return None
        got = self._labels(slo_ms, min_accuracy, self.fp_positions)
        known = got >= 0
        if not known.any():
            return None  # every image was shed or refused
        sigs = np.array(self.signatures)[:, self.fp_positions]
        matches = np.array([(s[known] == got[known]).sum() for s in sigs])
        best = int(matches.argmax())
        if (matches == matches[best]).sum() > 1 or matches[best] * 2 <= known.sum():
            return None  # a tie, or most of the images match nobody: unknown
        return best

    def consistency(self, pin: Pin, trials: int = 5) -> float:
        """Fraction of `trials` identifications at the pin that name the victim."""
        return float(np.mean([self.identify(pin.slo_ms, pin.min_accuracy) == pin.victim for _ in range(trials)]))
