"""The model every peer serves: one fixed subnet of the shipped supernet, exported with `supernet.export.export`.

Imported by the peer server scripts (`peers_triton.py`, `peers_ray.py`), which run in the peers' own virtualenvs
(Debian's python3.11 + torch + the peer package, without superserve installed): the project root is put on sys.path,
and only `supernet` (torch) and `superserve.zoo` (pure Python) are imported from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INPUT_NAME = "INPUT"  # the same input/outputs as `superserve serve`: INPUT FP32 [B,1,28,28] -> PROBABILITIES, CLASS
OUTPUTS = ("PROBABILITIES", "CLASS")


def pin_threads(threads: int) -> None:
    """Torch intra-op threads (and BLAS/OpenMP through the environment) for this process, as superserve's workers."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (torch allows it once, before any parallel work)
        pass


class FixedSubnet:
    """`export(net, subnet)` of one zoo entry: the model, its id, its zoo accuracy, its input shape (no batch)."""

    def __init__(self, zoo_path: str, checkpoint: str, subnet_id: str, threads: int = 1):
        pin_threads(threads)
        import torch

        from supernet.checkpoint import load_checkpoint
        from supernet.export import export
        from superserve.zoo import Zoo

        zoo = Zoo.load(zoo_path)
        entry = zoo.entry(subnet_id)
        net, _ = load_checkpoint(checkpoint)
        self.model = export(net, entry.config)
        del net
        self.subnet_id = subnet_id
        self.accuracy = entry.accuracy
        sp = zoo.space
        self.input_shape = (sp.in_channels, sp.image_size, sp.image_size)
        self._torch = torch
        with torch.inference_mode():  # first call allocates; keep it out of the first request's latency
            self.model(torch.zeros((1, *self.input_shape)))

    def __call__(self, x: Any) -> tuple[Any, Any]:
        """numpy FP32 [B,C,H,W] -> (probabilities FP32 [B,classes], class INT64 [B,1])."""
        torch = self._torch
        with torch.inference_mode():
            probs = torch.softmax(self.model(torch.from_numpy(x)), dim=1)
        return probs.numpy(), probs.argmax(dim=1, keepdim=True).numpy()


def server_arg_parser(description: str) -> argparse.ArgumentParser:
    """The flags every peer server script takes (benchmarks/peers.py passes them); each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--zoo", required=True, help="zoo file the subnet comes from")
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint the subnet is exported from")
    p.add_argument("--subnet-id", required=True, help="zoo id of the subnet to serve")
    p.add_argument("--model-name", default="subnet", help="model name clients ask for (default %(default)s)")
    p.add_argument("--grpc-port", type=int, required=True, help="gRPC port to listen on")
    p.add_argument("--http-port", type=int, required=True, help="HTTP port to listen on")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch the server forms (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    return p
