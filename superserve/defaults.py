"""Where the shipped default lives: the trained supernet checkpoint and its zoo, inside the package."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS_DIR / "supernet.pt"
DEFAULT_ZOO = ASSETS_DIR / "zoo.json"
