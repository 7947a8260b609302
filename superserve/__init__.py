"""superserve: serve a whole family of subnets from one supernet, choosing one per batch.

Kept import-light on purpose: policies and the simulator import `superserve.zoo` / `superserve.types` without torch.
"""

__version__ = "0.1.0"
