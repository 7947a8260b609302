"""Time from `superserve serve` (a fresh process) to its first answered inference request, and how much of that is
`import torch` on this host (measured in a separate fresh process, right before).

    nice python benchmarks/serve_startup.py                  # shipped zoo and checkpoint
    nice python benchmarks/serve_startup.py --zoo Z --checkpoint C
Writes benchmarks/results/serve_startup.json. Target (issue 5): first answer within 3 s when the zoo is profiled
for this host.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer_s(zoo: Path, checkpoint: Path) -> tuple[float, str]:
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    port = free_port()
    cmd = [sys.executable, "-m", "superserve.cli", "serve", "--port", str(port), "--metrics-port", "-1",
           "--zoo", str(zoo), "--checkpoint", str(checkpoint)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    from superserve.zoo import Zoo

    space = Zoo.load(zoo).space
    inp = tc.InferInput("INPUT", [1, space.in_channels, space.image_size, space.image_size], "FP32")
    inp.set_data_from_numpy(np.zeros((1, space.in_channels, space.image_size, space.image_size), np.float32))
    try:
        while True:
            try:
                client.infer("superserve", [inp], client_timeout=5)
                elapsed = time.perf_counter() - start
                break
            except InferenceServerException:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {proc.communicate()[0]}") from None
                time.sleep(0.02)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    return elapsed, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_startup.json")
    args = p.parse_args(argv)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_import_s = time.perf_counter() - t
    runs = [first_answer_s(args.zoo, args.checkpoint) for _ in range(args.repeats)]
    times = [r[0] for r in runs]
    headline = {"first_answer_after_start_s": round(min(times), 2), "first_answer_worst_s": round(max(times), 2),
                "torch_import_alone_s": round(torch_import_s, 2)}
    result = {"command": "nice python benchmarks/serve_startup.py" + "".join(" " + a for a in (argv or sys.argv[1:])),
              "host_load_avg_1min": os.getloadavg()[0], "headline": headline,
              "server_output": runs[-1][1].strip().splitlines()[-3:]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"first answer {min(times):.2f} s after `superserve serve` started (worst of {len(times)}: "
          f"{max(times):.2f} s); `import torch` alone takes {torch_import_s:.2f} s here "
          f"(load average {result['host_load_avg_1min']:.1f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
