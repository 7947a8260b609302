"""Where the shipped default lives: the trained supernet checkpoint and its zoo, inside the package."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS_DIR / "supernet.pt"
DEFAULT_ZOO = ASSETS_DIR / "zoo.json"

# INFaaS's model-load time in `superserve experiment` (ms): benchmarks/actuation.py's load_standalone_median_ms for the
# shipped checkpoint on the 2-core CPU host that built the zoo (benchmarks/results/actuation.json, 2026-11-22). Shipped
# as a number because benchmarks/ is not in an installed package; measure another host and pass --infaas-switch-ms.
INFAAS_SWITCH_MS = 39.811
