#!/usr/bin/env bash
# GPU check (issue 21): the serving path on a GPU, end to end, in one script.
#
#   1. re-profiles the shipped zoo (native supernet, 28x28) on the GPU: `superserve zoo reprofile --device cuda`;
#   2. imports a randomly initialised OFA-ResNet50 at 224x224 (`superserve zoo import-ofa --random-init`) and builds
#      its zoo on the GPU (`superserve zoo build --device cuda`) from an image folder cut here from scikit-learn's two
#      sample photographs (random weights: accuracy is chance; what is measured is latency and serving);
#   3. serves each zoo on the GPU (`superserve serve --device cuda`, embedded worker thread; the start-up speed check
#      compares the GPU table with this GPU) and replays a bursty trace against it (`superserve loadgen`, gamma CV2=8);
#      then the native zoo again through the other two ways to run the model: 2 worker processes on the GPU
#      (`--workers 2 --device cuda`: a CUDA context and a weight copy each) and, when redis-server is installed, a
#      Redis cluster of one front end and one `superserve worker --device cuda` (the front end publishes the GPU
#      table as it is; the worker spot-checks it on the GPU and scales it only if it is over 1.5x off there);
#   4. writes benchmarks/results/gpu_check.json: the GPU, the GPU latency tables beside the shipped CPU table, and
#      per replay the SLO attainment, mean accuracy, goodput and latency.
#
# Run from anywhere on a machine with CUDA:  bash benchmarks/gpu_check.sh
# Knobs (environment): PYTHON (python), DEVICE (cuda), WORK (a temp dir), DURATION_S (30), NATIVE_RATE_QPS (400),
#   NATIVE_SLO_MS (36), OFA_RATE_QPS (100), OFA_SLO_MS (100), OFA_IMAGE_SIZE (224), RESULT (the path above),
#   REUSE=1 (with WORK of an earlier run: skip steps 1-2, serve and replay its zoos again).
# With DEVICE=cuda and no CUDA it stops at once with the reason (exit 2). DEVICE=cpu with a small OFA_IMAGE_SIZE and
# another RESULT smoke-tests the script itself on a CPU (its figures are then not the GPU check's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d -t gpu_check.XXXXXX)}
DURATION_S=${DURATION_S:-30}
NATIVE_RATE_QPS=${NATIVE_RATE_QPS:-400}
NATIVE_SLO_MS=${NATIVE_SLO_MS:-36}
OFA_RATE_QPS=${OFA_RATE_QPS:-100}
OFA_SLO_MS=${OFA_SLO_MS:-100}
OFA_IMAGE_SIZE=${OFA_IMAGE_SIZE:-224}
RESULT=${RESULT:-benchmarks/results/gpu_check.json}
export SUPERSERVE_CACHE="$WORK/cache"  # the servers' per-host re-profile cache: fresh, not the user's
mkdir -p "$WORK"
log() { echo "[gpu_check $(date +%T)] $*" >&2; }

"$PY" - "$DEVICE" <<'EOF' || exit 2
import sys, torch
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"gpu_check: CUDA is not available on this host (torch {torch.__version__}, built with CUDA "
             f"{torch.version.cuda}); run it on a machine with a GPU")
if sys.argv[1].startswith("cuda"):
    print(f"gpu_check: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, torch {torch.__version__})")
EOF

if [ "${REUSE:-0}" = 1 ] && [ -f "$WORK/native_gpu.json" ] && [ -f "$WORK/ofa_zoo.json" ]; then
    log "reusing the zoos in $WORK (REUSE=1)"
else
log "1/4 re-profiling the shipped zoo on $DEVICE"
"$PY" -m superserve.cli zoo reprofile --zoo superserve/assets/zoo.json --ckpt superserve/assets/supernet.pt \
    --device "$DEVICE" --out "$WORK/native_gpu.json" --quiet

log "2/4 OFA-ResNet50 (random weights, ${OFA_IMAGE_SIZE}px): image folder, import, zoo build on $DEVICE"
"$PY" - "$WORK/images" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

root, rng = Path(sys.argv[1]), np.random.default_rng(0)
photos = load_sample_images()
for name, img in zip(photos.filenames, photos.images):
    folder = root / Path(name).stem
    folder.mkdir(parents=True, exist_ok=True)
    h, w, _ = img.shape
    for i in range(60):  # 42 train / 6 val / 12 test per class
        side = int(rng.integers(160, 400))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        Image.fromarray(img[y:y + side, x:x + side]).save(folder / f"{i}.png")
EOF
"$PY" -m superserve.cli zoo import-ofa --supernet ofa_resnet50 --random-init --image-size "$OFA_IMAGE_SIZE" \
    --out "$WORK/ofa.pt"
"$PY" -m superserve.cli zoo build --ckpt "$WORK/ofa.pt" --data "folder:$WORK/images" --out "$WORK/ofa_zoo.json" \
    --out-ckpt "$WORK/ofa_served.pt" --device "$DEVICE" --num-random 24 --generations 2 --population 12 \
    --min-size 8 --max-size 12 --search-calibration-images 64 --calibration-images 84 --quiet
fi

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

serve_and_replay() {  # NAME RATE_QPS SLO_MS SERVE_ARGS...
    local name=$1 rate=$2 slo=$3 port
    shift 3
    port=$(free_port)
    "$PY" -m superserve.cli serve "$@" --port "$port" --metrics-port -1 --default-slo-ms "$slo" \
        > "$WORK/$name.serve.log" 2>&1 &
    local pid=$!
    "$PY" - "$port" "$pid" <<'PYEOF' || { kill "$pid" 2>/dev/null; cat "$WORK/$name.serve.log" >&2; return 1; }
import os, sys, time
import tritonclient.grpc as tc

port, pid = sys.argv[1], int(sys.argv[2])
client, deadline = tc.InferenceServerClient(f"127.0.0.1:{port}"), time.monotonic() + 900  # a re-profile takes minutes
while time.monotonic() < deadline:
    try:
        if client.is_server_live():
            sys.exit(0)
    except Exception:  # noqa: BLE001 - not listening yet
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("gpu_check: the server exited during start-up")
    time.sleep(0.5)
sys.exit("gpu_check: the server did not start within 900 s")
PYEOF
    "$PY" -m superserve.cli loadgen --trace gamma:8 --rate "$rate" --duration "$DURATION_S" --seed 0 \
        --url "127.0.0.1:$port" --slo-ms "$slo" --ready-timeout 900 --out "$WORK/$name.jsonl" \
        --summary-json "$WORK/$name.summary.json" || { kill "$pid"; cat "$WORK/$name.serve.log" >&2; return 1; }
    kill -TERM "$pid"
    wait "$pid" || true
}

log "3/4 serving on $DEVICE and replaying gamma:8 traces"
rm -f "$WORK"/*.summary.json  # a REUSE run reports this run's replays only
NATIVE=(--zoo "$WORK/native_gpu.json" --checkpoint superserve/assets/supernet.pt)
serve_and_replay native "$NATIVE_RATE_QPS" "$NATIVE_SLO_MS" "${NATIVE[@]}" --device "$DEVICE" --reprofile auto
serve_and_replay ofa_resnet50 "$OFA_RATE_QPS" "$OFA_SLO_MS" --zoo "$WORK/ofa_zoo.json" \
    --checkpoint "$WORK/ofa_served.pt" --device "$DEVICE" --reprofile auto
log "3/4 the native zoo on 2 worker processes on $DEVICE"
serve_and_replay native_workers2 "$NATIVE_RATE_QPS" "$NATIVE_SLO_MS" "${NATIVE[@]}" --device "$DEVICE" \
    --reprofile auto --workers 2
if command -v redis-server > /dev/null; then
    log "3/4 the native zoo through Redis: one front end, one superserve worker on $DEVICE"
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
    rpid=$!
    "$PY" -m superserve.cli worker --backend "redis://127.0.0.1:$rport" --checkpoint superserve/assets/supernet.pt \
        --device "$DEVICE" > "$WORK/native_cluster.worker.log" 2>&1 &
    wpid=$!
    serve_and_replay native_cluster "$NATIVE_RATE_QPS" "$NATIVE_SLO_MS" "${NATIVE[@]}" \
        --backend "redis://127.0.0.1:$rport" \
        || { cat "$WORK/native_cluster.worker.log" >&2; kill "$wpid" "$rpid"; exit 1; }
    kill -TERM "$wpid"; wait "$wpid" || true
    kill "$rpid"; wait "$rpid" || true
else
    log "3/4 no redis-server on this host: the cluster worker is not checked"
fi

log "4/4 writing $RESULT"
"$PY" - "$WORK" "$DURATION_S" "$NATIVE_RATE_QPS" "$NATIVE_SLO_MS" "$OFA_RATE_QPS" "$OFA_SLO_MS" "$DEVICE" \
    "$OFA_IMAGE_SIZE" "$RESULT" <<'EOF'
import json, platform, sys
from pathlib import Path

import torch

from superserve.zoo import HostFingerprint, Zoo
from superserve.profiler import device_name, resolve_device

work = Path(sys.argv[1])
duration_s, native_rate, native_slo, ofa_rate, ofa_slo = sys.argv[2:7]
device, ofa_size, out = device_name(resolve_device(sys.argv[7])), int(sys.argv[8]), Path(sys.argv[9])
cpu = Zoo.load("superserve/assets/zoo.json")
zoos = {"native": Zoo.load(work / "native_gpu.json"), "ofa_resnet50": Zoo.load(work / "ofa_zoo.json")}
replays = [name for name in ("native", "ofa_resnet50", "native_workers2", "native_cluster")
           if (work / f"{name}.summary.json").is_file()]
headline = {"gpu": device, "ofa_resnet50_image_size_px": ofa_size}
for name, zoo in zoos.items():
    fastest, largest = zoo.entries[0], max(zoo.entries, key=lambda e: e.flops)
    top = max(zoo.batch_sizes)
    headline[f"{name}_zoo_subnets"] = len(zoo.entries)
    headline[f"{name}_fastest_gpu_b1_median_ms"] = round(fastest.latency_ms[1].median_ms, 3)
    headline[f"{name}_largest_gpu_b1_median_ms"] = round(largest.latency_ms[1].median_ms, 3)
    headline[f"{name}_largest_gpu_b{top}_median_ms"] = round(largest.latency_ms[top].median_ms, 3)
for name in replays:
    summary = json.loads((work / f"{name}.summary.json").read_text())["metrics"]
    for key in ("slo_attainment", "mean_accuracy", "goodput_qps", "p50_latency_ms", "p99_latency_ms"):
        if key in summary:
            headline[f"{name}_gamma8_{key}"] = round(float(summary[key]), 4)
largest = max(cpu.entries, key=lambda e: e.flops).subnet_id
headline["native_cpu_over_gpu_b1_median_ratio_largest"] = round(
    cpu.entry(largest).latency_ms[1].median_ms / zoos["native"].entry(largest).latency_ms[1].median_ms, 2)
headline["native_cpu_over_gpu_b64_median_ratio_largest"] = round(
    cpu.entry(largest).latency_ms[64].median_ms / zoos["native"].entry(largest).latency_ms[64].median_ms, 2)
result = {
    "command": "bash benchmarks/gpu_check.sh",
    "headline": headline,
    "host": {**HostFingerprint.current(device=device).__dict__, "python": platform.python_version(),
             "cuda": torch.version.cuda},
    "settings": {"trace": "gamma:8", "duration_s": float(duration_s), "native_rate_qps": float(native_rate),
                 "native_slo_ms": float(native_slo), "ofa_rate_qps": float(ofa_rate), "ofa_slo_ms": float(ofa_slo),
                 "ofa_weights": "random (seed 0): accuracy is chance"},
    "zoos": {name: zoo.to_dict() for name, zoo in zoos.items()},
    "cpu_zoo_host": cpu.host.__dict__,
    "replays": {name: json.loads((work / f"{name}.summary.json").read_text()) for name in replays},
    "replay_setups": {"native": "embedded worker thread", "ofa_resnet50": "embedded worker thread",
                      "native_workers2": "--workers 2: two worker processes on the device",
                      "native_cluster": "Redis: one front end (publishes the table as is), one superserve worker --device"},
}
out.write_text(json.dumps(result, indent=1, default=str) + "\n")
for k, v in headline.items():
    print(f"{k:52} {v}")
print(f"wrote {out} (work files in {work})")
EOF
