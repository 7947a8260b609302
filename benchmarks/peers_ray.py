"""Peer 2: Ray Serve serving one exported fixed subnet, batched with `@serve.batch`, behind Ray Serve's gRPC ingress.

Run by `benchmarks/peers.py` with the Ray venv's python. The ingress is Ray Serve's gRPC proxy (`gRPCOptions`) with
the Open Inference Protocol's own service (`GRPCInferenceService` from tritonclient's generated stubs) registered as
the servicer, so the deployment's `ModelInfer` method receives `ModelInferRequest`s and the same replayer client
talks to it as to superserve and Triton. One replica, `max_ongoing_requests` well above the max batch size (else it
never batches), no access log. Stop with SIGTERM (serve.shutdown, then ray.shutdown).

    python benchmarks/peers_ray.py --zoo Z --checkpoint C --subnet-id ID --grpc-port P --http-port H [--max-batch 16]
        [--batch-wait-ms 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SERVICER = "tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"


def build_app(args: argparse.Namespace):
    from ray import serve

    @serve.deployment(num_replicas=1, max_ongoing_requests=args.max_ongoing, ray_actor_options={"num_cpus": 1})
    class Subnet:
        def __init__(self, zoo: str, checkpoint: str, subnet_id: str, threads: int, model_name: str):
            import numpy as np
            from tritonclient.grpc import service_pb2 as pb

            from peers_model import INPUT_NAME, FixedSubnet

            self.np, self.pb, self.input_name = np, pb, INPUT_NAME
            self.model = FixedSubnet(zoo, checkpoint, subnet_id, threads)
            self.model_name = model_name

        # Readiness, as Triton and superserve answer it (the replayer waits for ServerReady before its schedule).
        # Without these, Ray's proxy forwards the call to a method the replica lacks and answers INTERNAL.
        def ServerReady(self, request):  # noqa: N802 - the gRPC method's name
            return self.pb.ServerReadyResponse(ready=True)  # this replica exists, so its model is loaded

        def ServerLive(self, request):  # noqa: N802
            return self.pb.ServerLiveResponse(live=True)

        def ModelReady(self, request):  # noqa: N802
            return self.pb.ModelReadyResponse(ready=request.name in ("", self.model_name))

        def _image(self, request):
            if not request.raw_input_contents or request.inputs[0].name != self.input_name:
                raise ValueError(f"expected one raw FP32 input named {self.input_name}")
            shape = tuple(int(d) for d in request.inputs[0].shape)
            return self.np.frombuffer(request.raw_input_contents[0], dtype=self.np.float32).reshape(shape)

        @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=args.batch_wait_ms / 1000.0)
        async def ModelInfer(self, requests):  # noqa: N802 - the gRPC method's name
            np, pb = self.np, self.pb
            images = [self._image(r) for r in requests]
            sizes = [len(x) for x in images]
            probs, cls = self.model(np.ascontiguousarray(np.concatenate(images)))
            out, k = [], 0
            for r, n in zip(requests, sizes):
                resp = pb.ModelInferResponse(model_name=self.model_name, id=r.id)
                resp.outputs.add(name="PROBABILITIES", datatype="FP32", shape=[n, probs.shape[1]])
                resp.outputs.add(name="CLASS", datatype="INT64", shape=[n, 1])
                resp.raw_output_contents.append(probs[k:k + n].tobytes())
                resp.raw_output_contents.append(cls[k:k + n].tobytes())
                out.append(resp)
                k += n
            return out

    return Subnet.bind(args.zoo, args.checkpoint, args.subnet_id, args.threads, args.model_name)


def _pb2_alias_dir() -> Path:
    """tritonclient's generated messages call their module `grpc_service_pb2` (the .proto's name), so pickling a
    ModelInferRequest from Ray's proxy to the replica fails ("import of module 'grpc_service_pb2' failed"). A one-line
    alias module on every Ray process's PYTHONPATH (a temporary directory, removed with the process) fixes that."""
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="peers_ray_pb2_"))
    (d / "grpc_service_pb2.py").write_text("from tritonclient.grpc.service_pb2 import *  # noqa: F401,F403\n")
    (d / "model_config_pb2.py").write_text("from tritonclient.grpc.model_config_pb2 import *  # noqa: F401,F403\n")
    atexit.register(shutil.rmtree, d, True)
    return d


def main(argv: list[str] | None = None) -> int:
    from peers_model import server_arg_parser

    p = server_arg_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="@serve.batch batch_wait_timeout_s, in ms")
    p.add_argument("--max-ongoing", type=int, default=0, help="max_ongoing_requests (0: 8 x max batch, >= 64)")
    args = p.parse_args(argv)
    args.max_ongoing = args.max_ongoing or max(64, 8 * args.max_batch)
    if args.max_ongoing < args.max_batch:
        p.error("--max-ongoing must be >= --max-batch, or Ray Serve never fills a batch")
    # The replica is a Ray worker process: it finds peers_model (and the project) through PYTHONPATH.
    shim = _pb2_alias_dir()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), str(shim),
                                                os.environ.get("PYTHONPATH", "")])

    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False,
             configure_logging=False)
    # No per-request access log (a production setting; it costs CPU on the one core everything shares).
    serve.start(http_options={"host": "127.0.0.1", "port": args.http_port},
                grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=[SERVICER]),
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    serve.run(build_app(args), name=args.model_name, route_prefix="/", blocking=False)
    print(f"peers_ray: serving {args.model_name} = subnet {args.subnet_id} on 127.0.0.1:{args.grpc_port} (gRPC), "
          f"max batch {args.max_batch}, max_ongoing_requests {args.max_ongoing}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
