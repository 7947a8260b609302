"""`superserve`: one command, many subcommands.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`; the module is
imported only when its subcommand runs, so `superserve --help` stays fast and does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported lazily.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("superserve.commands.demo", "start the server on the shipped zoo, replay a bursty trace over gRPC, compare SlackFit with a fixed subnet"),
    "serve": ("superserve.server.cli", "serve the zoo over gRPC (Open Inference Protocol) with SLO hints and SlackFit"),
    "worker": ("superserve.cluster.cli", "a worker of a Redis cluster (scale-out): serve front ends' requests"),
    "info": ("superserve.commands.info", "show the supernet space and the shipped zoo"),
    "train": ("training.cli", "train the supernet (DεpS, BigNAS or OFA progressive shrinking)"),
    "zoo": ("training.zoo_cli", "calibrate, search and profile the served zoo; re-profile a zoo on this host"),
    "simulate": ("superserve.commands.simulate", "replay a trace through a policy in the discrete-event simulator"),
    "experiment": ("superserve.commands.experiment", "policy trade-off experiments (simulator)"),
    "trace": ("loadtest.trace_cli", "generate, inspect and save arrival traces"),
    "loadgen": ("loadtest.loadgen_cli", "open-loop replay of a trace against an OIP gRPC endpoint; raw records"),
    "security": ("security.cli", "fingerprinting + extraction attack on a server or the simulator, with defenses"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="superserve",
        description="Serve a family of models from one weight-shared supernet; SlackFit picks the subnet per batch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
