"""Peer 1: NVIDIA Triton Inference Server (PyTriton's bundled binary) serving one exported fixed subnet on the CPU.

Run by `benchmarks/peers.py` with the Triton venv's python (Debian's python3.11: the bundled server needs a shared
libpython). The model is a PyTriton Python model behind Triton's dynamic batcher; Triton's own gRPC endpoint speaks
the Open Inference Protocol, so the replayer talks to it unchanged. Stop with SIGTERM.

    python benchmarks/peers_triton.py --zoo Z --checkpoint C --subnet-id ID --grpc-port P [--max-batch 16]
        [--queue-delay-us 2000] [--queue-timeout-ms 0] [--threads 1]
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_model import INPUT_NAME, FixedSubnet, server_arg_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = server_arg_parser(__doc__.splitlines()[0])
    p.add_argument("--metrics-port", type=int, required=True, help="Triton's Prometheus metrics port")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher max_queue_delay_microseconds")
    p.add_argument("--queue-timeout-ms", type=float, default=0.0,
                   help="> 0: the batcher rejects requests queued longer than this (Triton's queue policy)")
    args = p.parse_args(argv)

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
    from pytriton.triton import Triton, TritonConfig

    model = FixedSubnet(args.zoo, args.checkpoint, args.subnet_id, args.threads)

    @batch
    def infer(**inputs):
        probs, cls = model(np.ascontiguousarray(inputs[INPUT_NAME], dtype=np.float32))
        return {"PROBABILITIES": probs, "CLASS": cls}

    policy = None
    if args.queue_timeout_ms > 0:
        policy = QueuePolicy(timeout_action=TimeoutAction.REJECT,
                             default_timeout_microseconds=int(args.queue_timeout_ms * 1000))
    batcher = DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us, default_queue_policy=policy)
    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                          grpc_address="127.0.0.1", http_address="127.0.0.1", log_verbose=0)
    triton = Triton(config=config)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True) or triton.stop())
    with triton:
        triton.bind(model_name=args.model_name, infer_func=infer,
                    inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=model.input_shape)],
                    outputs=[Tensor(name="PROBABILITIES", dtype=np.float32, shape=(-1,)),
                             Tensor(name="CLASS", dtype=np.int64, shape=(1,))],
                    config=ModelConfig(max_batch_size=args.max_batch, batcher=batcher))
        print(f"peers_triton: serving {args.model_name} = subnet {model.subnet_id} (accuracy {model.accuracy:.4f}) "
              f"on 127.0.0.1:{args.grpc_port} (gRPC), max batch {args.max_batch}", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
