"""Peers, side by side: superserve (SlackFit) vs NVIDIA Triton (PyTriton) and Ray Serve on the same machine, client
and traces, each peer serving exported fixed subnets of the same supernet.

Configurations (the subnets are read from the zoo, never hard-coded):
- `superserve[slackfit]`: `superserve serve` on the shipped checkpoint and a frozen copy of the zoo (1 embedded worker,
  1 torch thread, the zoo's latency table re-profiled for this host once and cached, as the server does itself);
- `superserve[slackfit,acc>=A%]` (`--floors`, default "peers"): the same server, every request carrying a peer
  subnet's accuracy A as its `min_accuracy` hint, once per peer subnet: superserve measured *at* that peer's accuracy
  (its mean accuracy is then >= A by construction), which is what "at equal mean accuracy" asks for against a peer
  that is more accurate than plain SlackFit's mix; explicit levels (`--floors peers,0.918`) add runs whose hint is
  below a peer's accuracy, where SlackFit mixes subnets to a mean that may still reach it. At each peer subnet's
  accuracy, superserve's figure is its best run whose *mean* accuracy is at least that subnet's;
- `triton[SUBNET,bB]` and `triton[SUBNET,bB,timeout]`: PyTriton's bundled Triton server, a Python model running
  `supernet.export.export(net, subnet)` behind Triton's dynamic batcher (max batch B, queue delay --batch-wait-ms);
  the `timeout` variant adds Triton's queue policy rejecting requests queued longer than the SLO (Triton's own way
  to shed, the fairest counterpart of superserve's shedding);
- `ray[SUBNET,bB]`: Ray Serve, one replica, `@serve.batch(max_batch_size=B)`, gRPC ingress (`gRPCOptions`) with the
  Open Inference Protocol's servicer, `max_ongoing_requests` 8 x B;
for SUBNET in {the zoo's most accurate subnet, its middle one by accuracy} and B in `--max-batch` (default: "auto",
the largest profiled batch size whose p99 latency on this host fits in half the SLO, as `capacity_qps` assumes; and
16, which amortises the peers' per-batch overhead at the price of longer batches).

Every server speaks the Open Inference Protocol over gRPC, so one client does all: the open-loop replayer
(`loadtest.replayer`, in this process) with the same arrivals per run: every trace (`--traces`, default gamma:8 and
azure) at every load (`--loads`, default 1 and 2 x `capacity_qps`, the most accurate subnet's sustainable rate on this
host, i.e. where it alone starts to fall behind). Pinning is the same for all:
servers and all their child processes (Triton's binary and Python stub, Ray's raylet/GCS/proxy/replica) run with CPU
affinity `--server-cpus` and 1 torch/OpenMP thread per model process; the client runs on `--client-cpus`.
Start-up = from spawning the server process to the first successful ModelInfer answer (polled every 50 ms).

The peers run in their own virtualenvs, made on demand under `--venv-dir` from Debian's python3.11 (PyTriton's
bundled server needs a shared libpython) with torch of the project's version, the peer package and the project on
sys.path (never installed into the project's venv; `pip install -e '.[peers]'` declares the same packages).

    python benchmarks/peers.py [--duration 30] [--traces gamma:8,azure] [--loads 1,2] [--slo-ms 100]
        [--systems superserve,triton,ray] [--venv-dir /tmp/superserve-peers] [--setup-only] [--remove-venvs]

Writes benchmarks/results/peers.json (+ peers.png) and prints the table (the reporting is benchmarks/peers_report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import RESULTS_DIR, command_line, free_port, stop_processes  # noqa: E402
from peers_report import (FLOOR_PREFIX, SYSTEMS, format_table, headline, plot, print_comparisons,  # noqa: E402
                          run_name, trace_comparison)

from superserve.experiments import capacity_qps, spread_indices  # noqa: E402
from superserve.zoo import Zoo, ZooEntry  # noqa: E402

PEER_IMPORT = {"triton": "pytriton.triton", "ray": "ray.serve"}  # what must import in a peer venv
# Besides torch: the `[peers]` extra's requirement for that peer (pyproject.toml), plus what its server script uses.
PEER_EXTRA_PREFIX = {"triton": "nvidia-pytriton", "ray": "ray[serve]"}
PEER_EXTRAS = {"triton": ["numpy"], "ray": ["tritonclient[grpc]", "numpy"]}
PEER_VERSIONS = {"triton": ["nvidia-pytriton", "torch", "numpy"], "ray": ["ray", "torch", "numpy", "tritonclient"]}
INPUT_SHAPE = (1, 1, 28, 28)  # one image per request, as the demo and e2e_tradeoff send
STARTUP_TIMEOUT_S = 300.0


# --- configurations ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    label: str  # e.g. "triton[d444-42213266,b4,timeout]"
    system: str  # superserve | triton | ray
    subnet_id: str | None = None  # the fixed subnet a peer serves (None: superserve chooses per batch)
    accuracy: float | None = None  # its zoo (validation) accuracy: what the replayer records for a peer's answers
    role: str = ""  # "most accurate" / "mid" for a peer, "slackfit" for superserve, "slackfit@mid" for a floor
    max_batch: int | None = None
    min_accuracy: float = 0.0  # superserve: the `min_accuracy` hint every request carries (0 = none)
    queue_timeout_ms: float = 0.0  # triton: reject requests queued longer than this (0 = never)
    options: dict[str, Any] = field(default_factory=dict)


def pick_subnets(zoo: Zoo, extra: Sequence[str] = ()) -> list[tuple[str, ZooEntry]]:
    """The zoo's most accurate subnet and its middle one by accuracy (e2e_tradeoff's spread of 3, middle pick), then
    any `extra` subnet ids (role "extra"): e.g. one near SlackFit's mean accuracy, so that "at equal accuracy" is a
    measured peer, not a line between two."""
    order = sorted(zoo.entries, key=lambda e: (e.accuracy, -e.flops))
    top = order[-1]
    mid = order[spread_indices(len(order), 3)[1]]
    picks = [("most accurate", top)] + ([("mid", mid)] if mid.subnet_id != top.subnet_id else [])
    by_id = {e.subnet_id: e for e in zoo.entries}
    for sid in extra:
        if sid not in by_id:
            raise SystemExit(f"--extra-subnets: {sid!r} is not in the zoo; its subnets: {', '.join(sorted(by_id))}")
        if sid not in {e.subnet_id for _, e in picks}:
            picks.append(("extra", by_id[sid]))
    return picks


def max_batch_within(entry: ZooEntry, slo_ms: float, fraction: float = 0.5) -> int:
    """The largest profiled batch size whose p99 latency fits in `fraction` of the SLO (at least 1): a batch may
    wait for the one running before it, so a batch that takes more than half the SLO cannot meet it under load."""
    fits = [b for b, s in entry.latency_ms.items() if s.p99_ms <= fraction * slo_ms]
    return max(fits) if fits else 1


def peer_batches(entry: ZooEntry, slo_ms: float, batches: Sequence[int | str] = ("auto",)) -> list[int]:
    """The max batch sizes a peer serving `entry` is tried with: "auto" = `max_batch_within`, ints as given."""
    out: list[int] = []
    for b in batches:
        size = max_batch_within(entry, slo_ms) if b == "auto" else int(b)
        if size not in out:
            out.append(size)
    return out


def parse_floors(spec: str) -> list[float | str]:
    """`--floors`: comma-separated "peers" (each peer subnet's accuracy) and/or accuracy hints in (0, 1]."""
    out: list[float | str] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item == "peers":
            out.append(item)
            continue
        try:
            value = float(item)
        except ValueError:
            raise SystemExit(f"--floors: {item!r} is neither 'peers' nor an accuracy in (0, 1]") from None
        if not 0 < value <= 1:
            raise SystemExit(f"--floors: {item!r} is not an accuracy in (0, 1] (a fraction: 0.918, not 91.8)")
        out.append(value)
    return out


def lineup(zoo: Zoo, slo_ms: float, systems: Sequence[str] = SYSTEMS, batches: Sequence[int | str] = ("auto",),
           triton_timeout: bool = True, extra: Sequence[str] = (),
           floors: Sequence[float | str] = ("peers",)) -> list[Config]:
    """superserve, then superserve once per `floors` level with it as every request's `min_accuracy` hint ("peers" =
    each peer subnet's accuracy: superserve *at* that peer's accuracy, what the issue's "at equal mean accuracy" asks
    for, measured rather than read off a line; a lower level lets SlackFit mix subnets to a mean at or above the
    peer's), then per peer subnet and max batch size: Triton (plain, and with the SLO as queue timeout) and Ray
    Serve."""
    out: list[Config] = []
    picks = pick_subnets(zoo, extra)
    if "superserve" in systems:
        out.append(Config("superserve[slackfit]", "superserve", role="slackfit"))
        levels: list[tuple[str, float]] = []
        for f in floors:
            levels += [(role, e.accuracy) for role, e in picks] if f == "peers" else [("hint", float(f))]
        for role, acc in levels:
            if any(abs(c.min_accuracy - acc) < 1e-9 for c in out):
                continue  # one superserve run per accuracy level
            out.append(Config(f"superserve[slackfit,acc>={100 * acc:.1f}%]", "superserve",
                              role=FLOOR_PREFIX + role, min_accuracy=acc))
    for role, e in picks:
        for b in peer_batches(e, slo_ms, batches):
            if "triton" in systems:
                out.append(Config(f"triton[{e.subnet_id},b{b}]", "triton", e.subnet_id, e.accuracy, role, b))
                if triton_timeout:
                    out.append(Config(f"triton[{e.subnet_id},b{b},timeout]", "triton", e.subnet_id, e.accuracy, role,
                                      b, queue_timeout_ms=slo_ms))
            if "ray" in systems:
                out.append(Config(f"ray[{e.subnet_id},b{b}]", "ray", e.subnet_id, e.accuracy, role, b))
    return out


# --- peer virtualenvs -----------------------------------------------------------------------------------------------
def peer_packages(kind: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """What the `kind` venv installs besides torch: its requirement from the `[peers]` extra, and the rest."""
    import tomllib

    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["peers"]
    req = next(r for r in extra if r.replace(" ", "").startswith(PEER_EXTRA_PREFIX[kind]))
    return [req, *PEER_EXTRAS[kind]]


def project_torch_version() -> str:
    from importlib.metadata import version

    return version("torch").split("+")[0]


def venv_python(venv_dir: Path, kind: str) -> Path:
    return venv_dir / kind / "bin" / "python"


def venv_ok(python: Path, kind: str) -> bool:
    if not python.is_file():
        return False
    return subprocess.run([str(python), "-c", f"import torch, numpy, {PEER_IMPORT[kind]}"],
                          capture_output=True).returncode == 0


def venv_versions(python: Path, kind: str) -> dict[str, str]:
    code = ("import json, importlib.metadata as m, sys; print(json.dumps({**{p: m.version(p) for p in "
            f"{PEER_VERSIONS[kind]!r}}}, 'python': sys.version.split()[0], 'executable': sys.executable}}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}


def ensure_venv(venv_dir: Path, kind: str, base_python: str, torch_spec: str) -> float:
    """Make `venv_dir/kind` (base_python -m venv + pip install) unless it already works; seconds spent (0: reused)."""
    python = venv_python(venv_dir, kind)
    if venv_ok(python, kind):
        return 0.0
    t0 = time.perf_counter()
    target = venv_dir / kind
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    packages = [torch_spec, *peer_packages(kind)]
    print(f"peers: making the {kind} venv in {target} ({base_python} -m venv; pip install {' '.join(packages)}) ...",
          flush=True)
    subprocess.run([base_python, "-m", "venv", str(target)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    if not venv_ok(python, kind):
        raise RuntimeError(f"the {kind} venv at {target} was made but cannot import torch/{PEER_IMPORT[kind]}")
    return time.perf_counter() - t0


def has_shared_libpython(python: str) -> bool:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('Py_ENABLE_SHARED'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() == "1"


# --- servers --------------------------------------------------------------------------------------------------------
@dataclass
class Server:
    config: Config
    proc: subprocess.Popen
    url: str
    model: str
    log: Path
    t_spawn: float


def server_command(cfg: Config, args: argparse.Namespace, zoo_path: Path, ports: list[int]) -> tuple[list[str], str]:
    """(argv, protocol model name) for one configuration."""
    ckpt = str(args.checkpoint)
    if cfg.system == "superserve":
        # The table was settled once before the timed runs (prepare_superserve_zoo); "never" makes every run use that
        # cached table: on a host whose speed drifts, a spot check failing in one run's start-up would otherwise
        # re-profile there (minutes, charged to its start-up) and hand the later runs a different table.
        reprofile = "auto" if cfg.role == "reprofile" else "never"
        return ([str(Path(sys.executable).with_name("superserve")), "serve", "--port", str(ports[0]),
                 "--metrics-port", "-1", "--zoo", str(zoo_path), "--checkpoint", ckpt, "--policy", "slackfit",
                 "--reprofile", reprofile, "--workers", "0", "--embedded-workers", "1",
                 "--threads-per-worker", str(args.threads), "--default-slo-ms", str(args.slo_ms),
                 "--drain-timeout-s", "5"], "superserve")
    python = str(venv_python(args.venv_dir, cfg.system))
    common = ["--zoo", str(zoo_path), "--checkpoint", ckpt, "--subnet-id", str(cfg.subnet_id), "--model-name",
              "subnet", "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--max-batch", str(cfg.max_batch),
              "--threads", str(args.threads)]
    if cfg.system == "triton":
        return ([python, str(HERE / "peers_triton.py"), *common, "--metrics-port", str(ports[2]),
                 "--queue-delay-us", str(int(args.batch_wait_ms * 1000)),
                 "--queue-timeout-ms", str(cfg.queue_timeout_ms)], "subnet")
    return ([python, str(HERE / "peers_ray.py"), *common, "--batch-wait-ms", str(args.batch_wait_ms)], "subnet")


def server_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.pop("PYTHONPATH", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def start(cfg: Config, args: argparse.Namespace, zoo_path: Path, work: Path) -> Server:
    ports = [free_port() for _ in range(3)]
    argv, model = server_command(cfg, args, zoo_path, ports)
    log = work / f"{cfg.label.replace('[', '_').replace(']', '').replace(',', '_')}.log"
    cpus = args.server_cpu_set

    def pin() -> None:  # in the child: the affinity is inherited by everything it spawns
        if cpus:
            os.sched_setaffinity(0, cpus)

    fh = open(log, "w")
    t0 = time.perf_counter()
    # A session of its own: SIGTERM goes to the server alone; a hung one is killed with its whole process group.
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=server_env(args.threads), cwd=str(work),
                            preexec_fn=pin, start_new_session=True)
    return Server(cfg, proc, f"127.0.0.1:{ports[0]}", model, log, t0)


def wait_first_answer(server: Server, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """Seconds from spawning the server to its first successful ModelInfer (one image)."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    req = pb.ModelInferRequest(model_name=server.model)
    req.inputs.add(name="INPUT", datatype="FP32", shape=list(INPUT_SHAPE))
    req.raw_input_contents.append(np.zeros(INPUT_SHAPE, np.float32).tobytes())
    last = "no answer"
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.perf_counter() - server.t_spawn < timeout_s:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.config.label} exited with {server.proc.returncode} before answering: "
                                   f"{server.log.read_text()[-1500:]}")
            try:
                stub.ModelInfer(req, timeout=2.0)
                return time.perf_counter() - server.t_spawn
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {(exc.details() or '')[:160]}"
            time.sleep(0.05)
    raise RuntimeError(f"{server.config.label} gave no answer within {timeout_s:g} s (last: {last}); log "
                       f"{server.log}")


def wait_idle(server: Server, slo_ms: float, timeout_s: float = 20.0) -> bool:
    """After a run, wait until one request is answered within a quarter of the SLO again: a peer may still be working
    through the previous run's backlog (calls the client gave up on are not cancelled inside every server), which
    must not be charged to the next run. False if it is still busy after `timeout_s`."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    req = pb.ModelInferRequest(model_name=server.model)
    req.inputs.add(name="INPUT", datatype="FP32", shape=list(INPUT_SHAPE))
    req.raw_input_contents.append(np.zeros(INPUT_SHAPE, np.float32).tobytes())
    t0 = time.perf_counter()
    with grpc.insecure_channel(server.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.perf_counter() - t0 < timeout_s:
            t = time.perf_counter()
            try:
                stub.ModelInfer(req, timeout=max(0.1, timeout_s - (t - t0)))
                if time.perf_counter() - t < slo_ms / 4e3:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def stop(server: Server, timeout_s: float = 60.0) -> float:
    """SIGTERM the server (PyTriton and Ray shut down their children on it); kill its process group if it hangs
    (leftovers of its own session only, e.g. Ray actors of a server that was killed). Returns the seconds taken."""
    return stop_processes([server.proc], timeout_s, group=True)


def prepare_superserve_zoo(args: argparse.Namespace, zoo_path: Path, work: Path) -> tuple[Zoo, float]:
    """The zoo as the server will use it here. The server itself decides (host fingerprint, then a spot check of its
    speed) and re-profiles once when the table does not fit, caching the result per host; it starts here once, pinned
    like every run, so that the timed start-ups do not include profiling. Returns (zoo, seconds spent re-profiling,
    0 when the table fitted)."""
    from superserve.server import profiling
    from superserve.zoo import HostFingerprint

    cached = profiling.cache_path(zoo_path, HostFingerprint.current(threads=args.threads))
    before = cached.stat().st_mtime if cached.is_file() else None
    t0 = time.perf_counter()
    server = start(Config("superserve[reprofile]", "superserve", role="reprofile"), args, zoo_path, work)
    try:
        wait_first_answer(server, timeout_s=1800)
    finally:
        stop(server)
    after = cached.stat().st_mtime if cached.is_file() else None
    spent = time.perf_counter() - t0 if after != before else 0.0
    if spent:
        print(f"peers: superserve re-profiled the zoo for this host ({spent:.0f} s, cached in {cached})", flush=True)
    return (Zoo.load(cached) if after is not None else Zoo.load(zoo_path)), spent


# --- the run --------------------------------------------------------------------------------------------------------
def run_config(cfg: Config, args: argparse.Namespace, zoo_path: Path, work: Path,
               runs: dict[str, tuple[str, float, float, Any]]) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    """Start the server, time its first answer, warm it up, replay every run (name -> (trace, load, rate, arrivals))
    and stop it. A server still busy with the previous run's backlog 20 s after it is restarted (a fresh start,
    timed and warmed up like the first). Returns (start-up s of each start, stop s of each stop, one row per run)."""
    from loadtest.replayer import ReplaySpec, make_trace, replay, saturate
    from superserve.metrics import summarize

    saturation: dict[str, float] = {}
    startups: list[float] = []
    stops: list[float] = []
    rows = []
    server: Server | None = None

    def fresh() -> tuple[Server, ReplaySpec]:
        srv = start(cfg, args, zoo_path, work)
        try:
            startups.append(wait_first_answer(srv))
            print(f"  {cfg.label}: first answer {startups[-1]:.1f} s after start", flush=True)
            spec = ReplaySpec(url=srv.url, model=srv.model, slo_ms=args.slo_ms, max_in_flight=2000,
                              drain_timeout_s=args.drain_s, accuracy=cfg.accuracy, subnet_label=cfg.subnet_id,
                              min_accuracy=cfg.min_accuracy,
                              input_name="INPUT", input_datatype="FP32", input_shape=INPUT_SHAPE, seed=args.seed)
            # The same short warm-up for everyone (first batches of each size allocate; superserve corrects its
            # latency table online).
            replay(make_trace("poisson", 10.0, args.warmup_s, args.seed + 1), spec)
            if args.saturate_s > 0 and not saturation:
                # Throughput with 32 calls always outstanding (closed loop; superserve then serves small subnets).
                saturation.update(saturate(spec, 32, args.saturate_s))
                print(f"  {cfg.label}: {saturation['throughput_qps']:.0f} q/s at saturation", flush=True)
        except BaseException:
            stops.append(stop(srv))
            raise
        return srv, spec

    try:
        server, spec = fresh()
        for run, (trace, load, rate, arrivals) in runs.items():
            restarted = False
            if rows and not wait_idle(server, args.slo_ms):
                print(f"  {cfg.label}: still busy with the previous run's backlog after 20 s: restarting", flush=True)
                stops.append(stop(server))
                server = None
                server, spec = fresh()
                restarted = True
            load_avg = os.getloadavg()[0]  # other work on the host shows here: a noisy neighbour skews a run
            report = replay(arrivals, spec)
            s = summarize(report.records)
            c = report.client_summary()
            rows.append({"config": cfg.label, "system": cfg.system, "role": cfg.role, "subnet_id": cfg.subnet_id,
                         "min_accuracy": cfg.min_accuracy,
                         "max_batch": cfg.max_batch, "queue_timeout_ms": cfg.queue_timeout_ms, "run": run,
                         "trace": trace, "load": load, "rate_qps": rate, **s.as_dict(),
                         "subnets_served": _subnet_shares(report.records),
                         "client": {k: c[k] for k in ("send_lag_p99_ms", "client_overloaded_count",
                                                      "unanswered_count", "server_error_count",
                                                      "client_cpu_fraction", "client_bottleneck")},
                         "errors": report.error_messages(), "restarted_before": restarted,
                         "host_load_avg_1min_before": round(load_avg, 2),
                         "saturation_qps": round(saturation["throughput_qps"], 1) if saturation else None})
            print(f"    {run:12s} {rate:6.1f} q/s: SLO att {100 * s.slo_attainment:5.1f}%  mean acc "
                  f"{100 * s.mean_accuracy:5.2f}%  p99 {s.p99_latency_ms:7.1f} ms  shed {s.shed} rejected "
                  f"{s.rejected}{'  CLIENT-BOUND' if c['client_bottleneck'] else ''}"
                  f"{'  errors: ' + '; '.join(report.error_messages(2)) if c['server_error_count'] else ''}",
                  flush=True)
    finally:
        if server is not None:
            stops.append(stop(server))
    return startups, stops, rows


def _subnet_shares(records: Sequence[Any]) -> dict[str, float]:
    served = [r.subnet_id for r in records if r.finish_s is not None and r.subnet_id is not None]
    return {k: round(served.count(k) / len(served), 4) for k in sorted(set(served))} if served else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per trace run (default 30)")
    parser.add_argument("--traces", default="gamma:8,azure", help="comma-separated trace specs (replayer syntax)")
    parser.add_argument("--loads", default="1,2",
                        help="mean rates as multiples of capacity_qps (the most accurate subnet's sustainable rate "
                             "on this host), comma-separated; every trace runs at every load (default 1,2)")
    parser.add_argument("--rates", default=None, help="mean rates in q/s instead of --loads, comma-separated")
    parser.add_argument("--slo-ms", type=float, default=100.0,
                        help="SLO every request carries, ms (default %(default)s)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="systems to run, comma-separated (default %(default)s)")
    parser.add_argument("--extra-subnets", default="",
                        help="comma-separated zoo subnet ids the peers also serve (role 'extra'), e.g. one near "
                             "SlackFit's mean accuracy so that 'at equal accuracy' compares with a measured peer")
    parser.add_argument("--max-batch", default="auto,16",
                        help="peers' max batch sizes, comma-separated; auto = per subnet, the largest whose p99 "
                             "latency here is <= SLO/2 (default auto,16)")
    parser.add_argument("--no-triton-timeout", action="store_true", help="skip the Triton queue-timeout variant")
    parser.add_argument("--floors", default="peers",
                        help="superserve runs with every request carrying a min_accuracy hint, one per level: "
                             "comma-separated 'peers' (each peer subnet's accuracy) and/or fractions such as 0.918; "
                             "'' = none (default: peers)")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0,
                        help="Triton max_queue_delay / Ray batch_wait_timeout (default 2 ms)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process, for every system")
    parser.add_argument("--server-cpus", default="1", help="CPU list the servers are pinned to ('' = no pinning)")
    parser.add_argument("--client-cpus", default="0", help="CPU list the client is pinned to ('' = no pinning)")
    parser.add_argument("--warmup-s", type=float, default=2.0,
                        help="seconds of warm-up load before each measured replay (default %(default)s)")
    parser.add_argument("--saturate-s", type=float, default=5.0,
                        help="per configuration, seconds of closed-loop saturation (32 outstanding) to measure its "
                             "throughput on the server CPUs; 0 = skip")
    parser.add_argument("--drain-s", type=float, default=5.0, help="replayer drain timeout after the last send")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the traces and the request images (default %(default)s)")
    parser.add_argument("--venv-dir", type=Path, default=Path(tempfile.gettempdir()) / "superserve-peers",
                        help="where the peers' virtualenvs live (made on first use; never inside the repo)")
    parser.add_argument("--peer-python", default="/usr/bin/python3.11",
                        help="base interpreter of the peer venvs (needs a shared libpython for PyTriton)")
    parser.add_argument("--torch-spec", default=None, help="torch requirement for the peer venvs "
                                                           "(default: torch==<the project's torch version>)")
    parser.add_argument("--fresh-profile", action="store_true",
                        help="re-profile the zoo for superserve now (private cache) instead of using the server's "
                             "per-host cache when it has one")
    parser.add_argument("--setup-only", action="store_true", help="make the peer venvs and exit")
    parser.add_argument("--remove-venvs", action="store_true", help="delete --venv-dir and exit")
    parser.add_argument("--checkpoint", type=Path, default=None, help="supernet checkpoint (default: the shipped one)")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo file (default: the shipped one)")
    parser.add_argument("--out", default="peers", help="result name under benchmarks/results/")
    args = parser.parse_args(argv)

    from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO

    args.checkpoint = (args.checkpoint or DEFAULT_CHECKPOINT).resolve()
    args.zoo = (args.zoo or DEFAULT_ZOO).resolve()
    args.venv_dir = args.venv_dir.resolve()
    if ROOT in args.venv_dir.parents or args.venv_dir == ROOT:
        parser.error("--venv-dir must be outside the repository")
    if args.remove_venvs:
        shutil.rmtree(args.venv_dir, ignore_errors=True)
        print(f"removed {args.venv_dir}")
        return 0
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.server_cpu_set = {int(c) for c in args.server_cpus.split(",") if c}
    client_cpus = {int(c) for c in args.client_cpus.split(",") if c}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s that stop the servers
    t_start = time.perf_counter()

    # --- peer venvs ---------------------------------------------------------------------------------------------
    torch_spec = args.torch_spec or f"torch=={project_torch_version()}"
    venvs: dict[str, Any] = {}
    for kind in (k for k in ("triton", "ray") if k in systems):
        if kind == "triton" and not has_shared_libpython(args.peer_python):
            print(f"warning: {args.peer_python} has no shared libpython; PyTriton's server may fail to start",
                  flush=True)
        spent = ensure_venv(args.venv_dir, kind, args.peer_python, torch_spec)
        py = venv_python(args.venv_dir, kind)
        venvs[kind] = {"path": str(args.venv_dir / kind), "install_s": round(spent, 1), "reused": spent == 0.0,
                       "packages": [torch_spec, *peer_packages(kind)], **venv_versions(py, kind)}
        print(f"peers: {kind} venv {'reused' if spent == 0 else f'made in {spent:.0f} s'}: {venvs[kind]}", flush=True)
    if args.setup_only:
        return 0

    # --- zoo, lineup, traces ------------------------------------------------------------------------------------
    from loadtest import traces as trace_lib
    from loadtest.replayer import make_trace

    work = Path(tempfile.mkdtemp(prefix="peers_"))
    zoo_path = work / "zoo.json"  # frozen: the shipped zoo may be rebuilt or re-profiled while this runs
    shutil.copy(args.zoo, zoo_path)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    if args.fresh_profile:  # the servers inherit it: superserve's per-host profile cache, private to this run
        os.environ["SUPERSERVE_CACHE"] = str(work / "cache")
    zoo, reprofile_s = prepare_superserve_zoo(args, zoo_path, work)
    capacity = capacity_qps(zoo, 1, args.slo_ms)
    batches = [b if b == "auto" else int(b) for b in args.max_batch.split(",") if b]
    extra = [x for x in args.extra_subnets.split(",") if x]
    configs = lineup(zoo, args.slo_ms, systems, batches, not args.no_triton_timeout, extra, parse_floors(args.floors))
    trace_specs = [t for t in args.traces.split(",") if t]
    if args.rates:
        levels = [(float(x) / capacity, float(x)) for x in args.rates.split(",") if x]
    else:
        levels = [(float(x), float(x) * capacity) for x in args.loads.split(",") if x]
    runs: dict[str, tuple[str, float, float, Any]] = {}
    stats: dict[str, dict[str, float]] = {}
    for t in trace_specs:
        for load, rate in levels:
            name = run_name(t, round(load, 3))
            runs[name] = (t, round(load, 3), rate, make_trace(t, rate, args.duration, args.seed))
            stats[name] = trace_lib.stats(runs[name][3])
    # The burstiest trace: the largest CV² of inter-arrival times (at the first load; CV² does not depend on it).
    burstiest = max(trace_specs, key=lambda t: stats[run_name(t, round(levels[0][0], 3))]["cv2"]) \
        if trace_specs and levels else None
    picks = [(role, e.subnet_id) for role, e in pick_subnets(zoo, extra)]
    print(f"zoo {args.zoo} ({len(zoo.entries)} subnets; latency table for {zoo.host.processor}); subnets for the "
          f"peers: {picks}; SLO {args.slo_ms:g} ms; capacity {capacity:.1f} q/s; {len(configs)} configurations x "
          f"{len(runs)} runs x {args.duration:g} s; servers on CPUs {sorted(args.server_cpu_set) or 'any'}, "
          f"client on {sorted(client_cpus) or 'any'}, {args.threads} torch thread(s)", flush=True)
    for name, st in stats.items():
        print(f"  {name}: {st['requests']} requests, mean {st['mean_rate_qps']:.1f} q/s, CV² {st['cv2']:.1f}, "
              f"busiest second {st['peak_1s_rate_qps']:.0f} q/s", flush=True)

    rows: list[dict[str, Any]] = []
    startups: dict[str, float] = {}
    stops: dict[str, list[float]] = {}
    startups_all: dict[str, list[float]] = {}
    failures: dict[str, str] = {}
    for cfg in configs:
        try:
            startup, stopped, cfg_rows = run_config(cfg, args, zoo_path, work, runs)
        except Exception as exc:  # noqa: BLE001 - one configuration failing must not lose the others' numbers
            failures[cfg.label] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"  {cfg.label}: FAILED: {failures[cfg.label][:600]}", flush=True)
            continue
        startups[cfg.label] = round(startup[0], 2)  # the first start; restarts in startup_s_all
        startups_all[cfg.label] = [round(x, 2) for x in startup]
        stops[cfg.label] = [round(x, 2) for x in stopped]
        rows.extend(cfg_rows)

    # --- report ---------------------------------------------------------------------------------------------------
    order = list(runs)
    rows.sort(key=lambda r: (order.index(r["run"]), SYSTEMS.index(r["system"]), r["config"]))
    head = headline(rows, order, startups, burstiest)
    head.update({"slo_ms": args.slo_ms, "duration_s_per_run": args.duration, "capacity_qps": round(capacity, 1),
        "superserve_reprofile_s": round(reprofile_s, 1), "configs_failed": len(failures),
        "wall_time_s": round(time.perf_counter() - t_start, 1)})
    table = format_table(rows, startups)
    print()
    print(table)
    print()
    print_comparisons(rows, order)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = RESULTS_DIR / f"{args.out}.png"
    plot(rows, order, startups, png,
         f"superserve (star; hollow: every request hinted with a peer subnet's accuracy) vs Triton and Ray Serve "
         f"serving fixed subnets (filled: most accurate, hollow: mid; "
         f"square: Triton with queue timeout): SLO {args.slo_ms:g} ms, {args.duration:g} s per run, "
         f"servers on CPUs {sorted(args.server_cpu_set) or 'any'}, {args.threads} thread(s), seed {args.seed}")
    out = {"command": command_line(), "headline": head,
           "setup": {"zoo": str(args.zoo), "zoo_host": zoo.host.__dict__, "checkpoint": str(args.checkpoint),
                     "peer_subnets": {role: {"subnet_id": e.subnet_id, "accuracy": e.accuracy,
                                             "max_batch": peer_batches(e, args.slo_ms, batches)}
                                      for role, e in pick_subnets(zoo, extra)},
                     "slo_ms": args.slo_ms, "capacity_qps": capacity,
                     "runs": {n: {"trace": t, "load": ld, "rate_qps": r} for n, (t, ld, r, _) in runs.items()},
                     "trace_stats": stats, "burstiest_trace": burstiest, "fresh_profile": args.fresh_profile,
                     "duration_s": args.duration, "seed": args.seed, "threads": args.threads,
                     "server_cpus": sorted(args.server_cpu_set), "client_cpus": sorted(client_cpus),
                     "host_load_avg_1min_at_end": round(os.getloadavg()[0], 2), "batch_wait_ms": args.batch_wait_ms,
                     "warmup_s": args.warmup_s, "saturate_s": args.saturate_s, "cpus": os.cpu_count(),
                     "venvs": venvs, "configs": [asdict(c) for c in configs]},
           "startup_s": startups, "startup_s_all": startups_all, "stop_s": stops, "failures": failures,
           "comparisons": [c for c in (trace_comparison(rows, t) for t in order) if c], "rows": rows}
    path = RESULTS_DIR / f"{args.out}.json"
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(head, indent=1))
    print(f"wrote {path} and {png}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
