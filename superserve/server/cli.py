"""`superserve serve`: serve the supernet's zoo over the Open Inference Protocol (gRPC and HTTP/REST) until
SIGTERM/SIGINT.

With no arguments: the shipped checkpoint and zoo on 127.0.0.1:8001 (gRPC), 127.0.0.1:8000 (HTTP/REST, KServe v2
JSON) and 127.0.0.1:8002/metrics, SlackFit,
one embedded worker. Heavy imports (torch, grpc) happen in `run`, so `superserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port; 0 = any free port (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=None,
                        help="HTTP/REST port (KServe v2 JSON: curl /v2/models/NAME/infer); 0 = any free port, -1 = "
                             "off (default: 8000, Triton's, or a free port printed at start when 8000 is taken)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus /metrics HTTP port; -1 = off (default: %(default)s)")
    parser.add_argument("--model-name", default="superserve", help="protocol model name (default: %(default)s)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="serve several models: each DIR holds zoo.json and supernet.pt, or a plain exported "
                             "model's model.pt (TorchScript) and model.json (repeat the flag); replaces "
                             "--zoo/--checkpoint/--model-name")
    parser.add_argument("--model-repository", type=Path, default=None, metavar="DIR",
                        help="serve every DIR/<name>/ (zoo.json + supernet.pt, or model.pt + model.json) as model "
                             "<name>; a directory that fails to load is reported by name and the others serve")
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (default: the shipped one)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="supernet checkpoint (default: the shipped one)")
    parser.add_argument("--policy", default="slackfit",
                        help="scheduling policy: slackfit, maxacc, maxbatch, clipper+, clockwork, infaas")
    parser.add_argument("--policy-params", default="{}",
                        help='policy parameters as JSON, e.g. \'{"subnet": 0}\' for a fixed-subnet baseline')
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes, each with its own supernet copy; 0 = embedded worker threads")
    parser.add_argument("--embedded-workers", type=int, default=1, help="worker threads when --workers 0")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="torch intra-op threads per worker")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N: where the model runs (its speed check and any re-profile too; the "
                             "host fingerprint then names the GPU). With --workers N each worker process holds its "
                             "own copy there; without CUDA it is an error at start (default: %(default)s)")
    parser.add_argument("--default-slo-ms", type=float, default=100.0,
                        help="latency SLO of requests without an slo_ms parameter (default: %(default)s)")
    parser.add_argument("--late", choices=("shed", "serve"), default="shed",
                        help="requests that cannot meet their deadline: answer DEADLINE_EXCEEDED at once (shed) or "
                             "serve them late on the fastest allowed subnet (default: %(default)s)")
    parser.add_argument("--queue-capacity", type=int, default=1024,
                        help="images queued at most; more get RESOURCE_EXHAUSTED (default: %(default)s)")
    parser.add_argument("--rpc-overhead-ms", type=float, default=2.0,
                        help="time the policy budgets per batch for receiving and answering calls (default: "
                             "%(default)s; policy_params overhead_ms overrides it)")
    parser.add_argument("--no-correction", action="store_true",
                        help="do not correct the latency table online from observed execution times")
    parser.add_argument("--no-response-params", action="store_true",
                        help="omit subnet_id / subnet_accuracy / slo_met from responses")
    parser.add_argument("--records", type=Path, default=None, help="write per-request JSONL records here")
    parser.add_argument("--reprofile", choices=("auto", "never", "always"), default="auto",
                        help="re-profile the zoo when it was profiled on other hardware (auto; cached per host), "
                             "never, or always. With --backend the front end publishes the zoo's table as it is "
                             "(auto and never alike; always is refused): each `superserve worker` checks it on its "
                             "own device and scales it to its speed (its own --reprofile)")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0,
                        help="on SIGTERM, how long to wait for admitted requests (default: %(default)s)")
    # --- scale-out (superserve.cluster) ---
    parser.add_argument("--backend", default=None, metavar="redis://HOST:PORT",
                        help="run as a stateless front end of a Redis cluster: requests go through Redis to "
                             "`superserve worker --backend ...` processes on any host, which fit the published "
                             "latency table to their own devices (default: embedded workers)")
    # --- security (issue 7; superserve/server/security.py). Defaults: localhost, no keys, no limits, plaintext.
    sec = parser.add_argument_group("security")
    sec.add_argument("--api-keys", type=Path, default=None,
                     help='JSON file {"tenant": "key", ...}: calls must send metadata "authorization: Bearer <key>" '
                          "or \"x-api-key: <key>\" (else UNAUTHENTICATED); health checks stay open")
    sec.add_argument("--auth-health", action="store_true", help="require a key for ServerLive/ServerReady too")
    sec.add_argument("--rate-limit", type=float, default=None, metavar="IMAGES_PER_S",
                     help="per-tenant token bucket in images/s (else RESOURCE_EXHAUSTED); tenant = API key, or the "
                          "peer address without keys")
    sec.add_argument("--rate-burst", type=float, default=None, metavar="IMAGES",
                     help="bucket size in images (default: max(64, one second's worth))")
    sec.add_argument("--max-inflight", type=int, default=None, help="calls per tenant handled at once")
    sec.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain: serve TLS only")
    sec.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    sec.add_argument("--max-message-bytes", type=int, default=16 << 20,
                     help="largest request/response message (default: %(default)s)")
    sec.add_argument("--max-images", type=int, default=64, help="images per request at most (default: %(default)s)")
    sec.add_argument("--hint-defense", default=None,
                     help="anti-fingerprinting transform of each image's hints before selection: "
                          "'noise:acc=0.01,slo=0.2,dist=gaussian' (PSML) or 'pareto:p=0.3,q=0' (ours; see "
                          "superserve/hint_defense.py)")
    sec.add_argument("--defense-seed", type=int, default=None, help="seed of the defense's random generator")


def config_from_args(args: argparse.Namespace) -> "object":
    from superserve.server.app import ServeConfig
    from superserve.server.engine import EngineConfig

    try:
        params = json.loads(args.policy_params)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--policy-params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise SystemExit("--policy-params must be a JSON object")
    engine = EngineConfig(args.default_slo_ms, args.late, args.queue_capacity,
                          None if args.no_correction else 0.25)
    return ServeConfig(host=args.host, port=args.port, metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                       http_port=http_port(args), http_port_fallback=args.http_port is None,
                       model_name=args.model_name, zoo_path=args.zoo, checkpoint_path=args.checkpoint,
                       policy=args.policy, policy_params=params, workers=args.workers,
                       embedded_workers=args.embedded_workers, threads_per_worker=args.threads_per_worker,
                       engine=engine, response_params=not args.no_response_params, records_path=args.records,
                       reprofile=args.reprofile, rpc_overhead_ms=args.rpc_overhead_ms, device=args.device,
                       **security_from_args(args))


DEFAULT_HTTP_PORT = 8000  # Triton's: 8000 HTTP, 8001 gRPC, 8002 metrics


def http_port(args: argparse.Namespace) -> int | None:
    """The HTTP door's port: as given (-1 = off), or by default 8000 (any free port when 8000 is taken at bind time,
    so that several servers on one host, tests among them, do not fail on the default)."""
    if args.http_port is not None:
        return None if args.http_port < 0 else args.http_port
    return DEFAULT_HTTP_PORT


def security_from_args(args: argparse.Namespace) -> dict:
    """ServeConfig fields for the security flags (issue 7); SystemExit with the reason on bad values."""
    from superserve.server.security import SecurityConfig, load_api_keys

    if args.max_message_bytes < 1024 or args.max_images < 1:
        raise SystemExit("--max-message-bytes must be >= 1024 and --max-images >= 1")
    if args.hint_defense is not None:
        from superserve.hint_defense import parse_defense_spec

        try:  # check the spec now; the transform is built once the zoo is loaded
            parse_defense_spec(args.hint_defense)
        except ValueError as exc:
            raise SystemExit(f"--hint-defense: {exc}") from None
    try:
        keys = load_api_keys(args.api_keys) if args.api_keys is not None else None
        security = SecurityConfig(api_keys=keys, auth_health=args.auth_health, rate_limit_images_per_s=args.rate_limit,
                                  rate_burst_images=args.rate_burst, max_inflight_per_tenant=args.max_inflight,
                                  tls_cert=args.tls_cert, tls_key=args.tls_key, hint_defense=args.hint_defense,
                                  defense_seed=args.defense_seed)
    except ValueError as exc:
        raise SystemExit(f"superserve serve: {exc}") from None
    return dict(security=security, max_message_bytes=args.max_message_bytes, max_images=args.max_images)


def _since_process_start_s() -> float:
    import time

    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - only for the message
        return float("nan")


class _InterruptedStart(BaseException):  # BaseException: no `except Exception` on the start-up path may swallow it
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from superserve.server.app import Server

    sources = []
    if args.model or args.model_repository is not None:
        from superserve.server.repository import parse_model_flag, scan_repository

        if args.backend:
            print("superserve serve: --model/--model-repository are not supported with --backend", file=sys.stderr)
            return 2
        try:
            sources = ([parse_model_flag(m) for m in args.model]
                       + (scan_repository(args.model_repository) if args.model_repository is not None else []))
        except ValueError as exc:
            print(f"superserve serve: {exc}", file=sys.stderr)
            return 2
    for path, what in ((args.zoo, "zoo"), (args.checkpoint, "checkpoint")):
        if not sources and not Path(path).is_file():
            print(f"superserve serve: {what} file {path} does not exist (train and build one with `superserve train` "
                  f"and `superserve zoo`, or pass --{what})", file=sys.stderr)
            return 2
    if args.backend and args.device != "cpu":
        print("superserve serve: --device applies to the processes that run the model: with --backend those are "
              "`superserve worker` processes", file=sys.stderr)
        return 2
    if args.backend:  # scale-out (superserve.cluster): this process is a front end, workers run elsewhere
        from superserve.cluster.server import ClusterServer

        server: Server = ClusterServer(config_from_args(args), args.backend)  # type: ignore[arg-type]
    elif sources:
        from superserve.server.repository import RepositoryServer

        try:
            server = RepositoryServer(config_from_args(args), sources)  # type: ignore[arg-type]
        except ValueError as exc:
            print(f"superserve serve: {exc}", file=sys.stderr)
            return 2
    else:
        server = Server(config_from_args(args))  # type: ignore[arg-type]
    stop = threading.Event()
    starting = True

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        # Nothing admitted yet, so nothing to drain: leave now, even mid re-profile (minutes). Once the gRPC door
        # admits calls (the rest of start-up, the HTTP door, may still run), the stop drains after start returns.
        if starting and not getattr(server, "admitting", False):
            raise _InterruptedStart(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except (ValueError, OSError, RuntimeError) as exc:  # bad files, or the port is taken (gRPC: RuntimeError)
        print(f"superserve serve: {exc}", file=sys.stderr)
        return 2
    except _InterruptedStart as exc:
        print(f"\nsuperserve serve: {signal.Signals(exc.signum).name} during start-up; stopped before serving",
              file=sys.stderr, flush=True)
        return 128 + exc.signum
    starting = False
    zoo = server.zoo
    assert zoo is not None
    accs = [e.accuracy for e in zoo.entries]
    metrics = f", metrics http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    rest = f", HTTP/REST http://{args.host}:{server.http_port}/v2" if server.http_port else ""
    if args.http_port is None and server.http_port not in (None, DEFAULT_HTTP_PORT):
        print(f"superserve: port {DEFAULT_HTTP_PORT} is taken; the HTTP/REST door listens on {server.http_port} "
              f"(--http-port N to choose, -1 for none)", file=sys.stderr, flush=True)
    served = f"model '{args.model_name}' ({len(zoo.entries)} subnets, accuracy {min(accs) * 100:.1f}-" \
             f"{max(accs) * 100:.1f}%, policy {args.policy})"
    if sources:
        units = server.units  # type: ignore[attr-defined]
        served = "models " + ", ".join(f"'{n}' ({len(u.zoo.entries)} subnets)" for n, u in units.items())
        if server.failed:  # type: ignore[attr-defined]
            served += " (not loaded: " + ", ".join(server.failed) + ")"  # type: ignore[attr-defined]
    print(f"superserve: serving {served} on {args.host}:{server.port} "
          f"(gRPC, Open Inference Protocol){rest}{metrics}; answering {_since_process_start_s():.1f} s after start "
          f"(loading took {server.startup_s:.1f} s)", flush=True)
    cfg_sec = server.config.security
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (cfg_sec.tls and cfg_sec.api_keys):
        print(f"superserve: WARNING: listening on {args.host} without "
              f"{' and '.join(x for x, on in (('TLS', cfg_sec.tls), ('API keys', cfg_sec.api_keys)) if not on)}: "
              f"anyone who can reach the port can query (and fingerprint) the zoo", file=sys.stderr, flush=True)
    warm = False
    while not stop.wait(0.1 if not warm else 0.5):
        if not warm and server.service.warm:  # ServerReady says ready from here on
            warm = True
            print(f"superserve: ready {_since_process_start_s():.1f} s after start (background warm-up done)",
                  flush=True)
    print("superserve: draining (no new requests; answering the admitted ones)...", file=sys.stderr, flush=True)
    drained = server.stop(args.drain_timeout_s)
    print("superserve: stopped" + ("" if drained else " (drain timed out; the rest were answered with an error)"),
          file=sys.stderr, flush=True)
    return 0
