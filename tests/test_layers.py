"""Layers import downward only (issue 19): rules stated as data, checked by parsing every module's imports with `ast`,
and the torch-free core imported in a subprocess where importing torch or grpc fails."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("superserve", "supernet", "policies", "training", "security", "loadtest")  # what the wheel ships

# The torch-free core: what the simulator, the policies and the records need, and the simulator itself (it predicts
# what the server does without a model). `dispatch` and `outcomes` (the shared scheduling step and request outcomes)
# join it when they exist; `hint_defense` is here because both the server and the attack code import it, so it may
# import neither.
CORE = ("superserve/types.py", "superserve/zoo.py", "superserve/records.py", "superserve/queue.py",
        "superserve/metrics.py", "superserve/sim.py", "superserve/hint_defense.py", "superserve/host_cost.py",
        "superserve/profile_correction.py", "policies/")
CORE_IF_PRESENT = ("superserve/dispatch.py", "superserve/outcomes.py")
HEAVY = ("torch", "torchvision", "grpc", "tritonclient")  # what the core must import without


@dataclass(frozen=True)
class Rule:
    name: str
    sources: tuple[str, ...]  # files, or folders ending in "/", relative to the repository root
    forbidden: tuple[str, ...]  # module prefixes none of them may import
    allowed: tuple[str, ...] = ()  # exceptions to `forbidden` (each with its reason in the rule's name)
    why: str = ""


def core_sources() -> tuple[str, ...]:
    return CORE + tuple(p for p in CORE_IF_PRESENT if (ROOT / p).is_file())


RULES = (
    Rule("the core imports no higher layer, and neither torch nor grpc", core_sources(),
         forbidden=("superserve", "supernet", "training", "security", "benchmarks", "loadtest", *HEAVY),
         allowed=("superserve.types", "superserve.zoo", "superserve.records", "superserve.queue",
                  "superserve.metrics", "superserve.sim", "superserve.outcomes", "superserve.dispatch",
                  "superserve.profile_correction",
                  "superserve.hint_defense", "supernet.config"),
         why="supernet.config is pure Python: the subnet configuration the zoo's entries carry"),
    Rule("superserve/ does not import training/, the attack code or benchmarks/", ("superserve/",),
         forbidden=("training", "security", "benchmarks"),
         why="the server re-profiles with superserve.profiler and applies superserve.hint_defense"),
    Rule("the attack code does not import the server", ("security/",),
         forbidden=("superserve.server", "superserve.cluster"),
         why="it talks to a server over the public API; the defenses it measures are in superserve.hint_defense"),
    Rule("the supernet imports no serving, training or attack code", ("supernet/",),
         forbidden=("superserve", "policies", "training", "security", "loadtest", "benchmarks")),
    Rule("training imports neither the server nor the attack code", ("training/",),
         forbidden=("superserve.server", "superserve.cluster", "security", "benchmarks")),
    Rule("the load generator imports neither the server nor training", ("loadtest/",),
         forbidden=("superserve.server", "superserve.cluster", "training", "security", "benchmarks")),
    Rule("the engine imports no grpc", ("superserve/server/engine.py",
                                        *(p for p in ("superserve/server/engine_api.py",) if (ROOT / p).is_file())),
         forbidden=("grpc", "tritonclient"),
         why="it returns refusals as values (superserve.outcomes.Reason); only the servicer maps them to gRPC statuses"),
)


def files_of(sources: tuple[str, ...], root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for s in sources:
        p = root / s
        out.extend(sorted(p.rglob("*.py")) if s.endswith("/") else [p])
    return out


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside `try: ... except ImportError` is optional: the module works without it."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
    return False


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth (lazy imports count too), resolving
    relative imports and `importlib.import_module("constant")`; optional imports guarded by ImportError are skipped."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # `from pkg import x` is recorded as pkg.x: a rule on pkg (or on the module pkg.x) catches it
            names = [module if a.name == "*" else module + "." * bool(module) + a.name for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            names = [node.args[0].value]
        if names and not _guarded(node, parents):
            found.extend((node.lineno, n) for n in names)
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(rule: Rule, root: Path = ROOT) -> list[str]:
    out = []
    for path in files_of(rule.sources, root):
        for line, module in imports_of(path, root):
            if any(_matches(module, f) for f in rule.forbidden) and not any(_matches(module, a) for a in rule.allowed):
                out.append(f"{path.relative_to(root)}:{line} imports {module} ({rule.name})")
    return sorted(set(out))


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_layer_rule(rule: Rule) -> None:
    assert all((ROOT / s).exists() for s in rule.sources), rule.sources
    assert violations(rule) == []


def test_nobody_imports_benchmarks_or_reads_its_results() -> None:
    """benchmarks/ is not in the wheel: no shipped module imports it or builds a path into benchmarks/results/."""
    bad = violations(Rule("shipped code imports benchmarks/", tuple(f"{p}/" for p in PACKAGES), ("benchmarks",)))
    for path in files_of(tuple(f"{p}/" for p in PACKAGES)):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)}
        bad += [f"{path.relative_to(ROOT)}:{n.lineno} names {n.value!r}" for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                and (n.value.strip("/") == "benchmarks" or "benchmarks/results" in n.value)]
    assert bad == []


def test_the_checker_catches_forbidden_imports(tmp_path: Path) -> None:
    """The rules can fail: a module breaking each kind of import is caught, a guarded optional one is not."""
    pkg = tmp_path / "policies"
    pkg.mkdir()
    (pkg / "bad.py").write_text(textwrap.dedent("""
        import numpy as np
        from superserve.zoo import Zoo
        from superserve.server import engine
        from supernet.config import SubnetConfig

        def lazy():
            import torch.nn
            from grpc import aio
            import importlib
            importlib.import_module("training.data")

        try:
            import tritonclient
        except ImportError:
            tritonclient = None
    """))
    (pkg / "rel.py").write_text("from .. import benchmarks\nfrom ..superserve.cluster import worker\n")
    core = RULES[0]
    found = violations(Rule(core.name, ("policies/",), core.forbidden, core.allowed), tmp_path)
    modules = {v.split(" imports ")[1].split(" (")[0] for v in found}
    assert {"superserve.server.engine", "torch.nn", "grpc.aio", "training.data",
            "benchmarks", "superserve.cluster.worker"} <= modules
    assert not any(m.startswith(("superserve.zoo", "supernet.config", "tritonclient", "numpy")) for m in modules)


def test_core_imports_without_torch_or_grpc() -> None:
    """The core imports, SlackFit decides on the shipped zoo and the simulator replays a trace with it, in a process
    where importing torch, torchvision, grpc or tritonclient raises ImportError (a `sys.meta_path` blocker installed
    before anything else)."""
    modules = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                      for p in files_of(core_sources())})
    script = textwrap.dedent(f"""
        import importlib, sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError(name + " is blocked in this test")

        sys.meta_path.insert(0, Blocker())
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not block torch")
        for m in {modules!r}:
            importlib.import_module(m)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        assert not heavy, heavy
        from policies.base import make_policy
        from superserve.defaults import DEFAULT_ZOO
        from superserve.types import QueueSnapshot, Request, WorkerState
        from superserve.zoo import HostFingerprint, Zoo

        policy = make_policy("slackfit", Zoo.load(DEFAULT_ZOO))
        snapshot = QueueSnapshot((Request(0, 0.0, 0.1),), 1)
        decision, _ = policy.decide(snapshot, 0.0, WorkerState(0), policy.initial_state())
        print("decision", decision.request_ids)
        import numpy as np

        from superserve.metrics import summarize
        from superserve.sim import SimConfig, simulate

        arrivals = np.sort(np.random.default_rng(0).uniform(0.0, 1.0, 200))
        summary = summarize(simulate(arrivals, policy, 100.0, config=SimConfig(workers=2)))
        print("simulated", summary.requests)
        print("torch_version", HostFingerprint.current().torch_version)
        print("imported", len({modules!r}))
    """)
    run = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert "decision (0,)" in run.stdout and "simulated 200" in run.stdout and "torch_version none" in run.stdout
    assert f"imported {len(modules)}" in run.stdout and len(modules) >= 9
