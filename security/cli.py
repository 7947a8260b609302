"""`superserve security`: run the fingerprinting + extraction attack against a live server or the simulator.

    superserve security attack --url 127.0.0.1:8001 --budget 300          # a running `superserve serve`
    superserve security simulate --defense pareto:p=0.3 --budget 1000     # the simulator serving path

Both print what the attacker found (responders, fingerprint-set size, the pinned hints, queries spent) and the
surrogate's accuracy and fidelity on the victim's test split next to the naive attack (and, for `simulate`, the
upper bound and the benign goodput). The zoo and checkpoint are read only to score the surrogate (victim labels and
test split) and, for `simulate`, to build the serving path; the attack itself sees only responses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from superserve.defaults import DEFAULT_CHECKPOINT, DEFAULT_ZOO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("attack", "attack a running server over gRPC"),
                       ("simulate", "attack the simulator's serving path (SlackFit + benign load + a defense)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="zoo file (for scoring; default: shipped)")
        p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="supernet checkpoint (scoring)")
        p.add_argument("--victim", type=int, default=None, help="zoo index of the victim (default: the middle)")
        p.add_argument("--budget", type=int, default=300, help="extraction queries (images) (default: %(default)s)")
        p.add_argument("--epochs", type=int, default=15, help="surrogate training epochs (default: %(default)s)")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the attack's queries and the surrogate (default: %(default)s)")
        p.add_argument("--use-subnet-param", action="store_true",
                       help="let the attacker read subnet_id/subnet_accuracy when responses show them")
        p.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
        p.add_argument("--json", type=Path, default=None, help="also write the full result here")
        if name == "attack":
            p.add_argument("--url", default="127.0.0.1:8001", help="gRPC address (default: %(default)s)")
            p.add_argument("--model", default="superserve", help="model name on the server (default: %(default)s)")
            p.add_argument("--api-key", default=None, help="sent as 'authorization: Bearer <key>'")
            p.add_argument("--tls-ca", type=Path, default=None, help="PEM root certificate: connect with TLS")
        else:
            p.add_argument("--defense", default=None, help="'noise:acc=0.01,slo=0.2' or 'pareto:p=0.3,q=0'")
            p.add_argument("--load", type=float, default=0.5, help="benign load (x top subnet batch-1 throughput)")


def run(args: argparse.Namespace) -> int:
    for path, what in ((args.zoo, "zoo"), (args.checkpoint, "checkpoint")):
        if not Path(path).is_file():
            print(f"superserve security: {what} file {path} does not exist (pass --{what})", file=sys.stderr)
            return 2
    if args.budget < 1 or args.epochs < 1:
        print("superserve security: --budget and --epochs must be >= 1", file=sys.stderr)
        return 2
    if getattr(args, "defense", None):
        from superserve.hint_defense import parse_defense_spec

        try:  # fail before the minute of set-up
            parse_defense_spec(args.defense)
        except ValueError as exc:
            print(f"superserve security: {exc}", file=sys.stderr)
            return 2
    import torch

    from security.experiment import Setting, run_attack, upper_bound

    torch.set_num_threads(1)
    setting = Setting.load(args.zoo, args.checkpoint, args.victim, args.seed)
    print(f"victim: {setting.victim_id} (zoo index {setting.victim} of {len(setting.zoo.entries)}); attacker data: "
          f"{setting.dataset} validation + odd test images, scored on the even test images", flush=True)
    if args.action == "attack":
        from security.oracles import ServerOracle

        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else None
        oracle = ServerOracle(args.url, setting.data, args.model, headers, ssl=args.tls_ca is not None,
                              root_certificates=str(args.tls_ca) if args.tls_ca else None)
        try:
            oracle.client.is_server_live(headers=headers)
        except Exception as exc:  # noqa: BLE001 - any connection failure: say where and why
            print(f"superserve security: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 2
        try:
            result = run_attack(setting, oracle, args.budget, args.seed, args.use_subnet_param,
                                naive=not args.no_naive, epochs=args.epochs)
        finally:
            oracle.close()
    else:
        from superserve.hint_defense import parse_defense
        from security.oracles import BenignWorkload, SimOracle

        try:
            defense = parse_defense(args.defense, setting.zoo, 2.0) if args.defense else None
        except ValueError as exc:
            print(f"superserve security: {exc}", file=sys.stderr)
            return 2
        oracle = SimOracle(setting.zoo, setting.predictions, BenignWorkload(load=args.load), defense,
                           seed=args.seed, subnet_visible=args.use_subnet_param)
        result = run_attack(setting, oracle, args.budget, args.seed, args.use_subnet_param,
                            naive=not args.no_naive, epochs=args.epochs)
        result["goodput_pct"] = 100 * oracle.benign_goodput
        ub = upper_bound(setting, args.budget, args.seed, args.epochs)
        result["scores"]["upper_bound"] = ub.__dict__
    pin = result["pin"]
    print(f"fingerprinting: {result['responders_found']} responders found, fingerprint set of "
          f"{result['fingerprint_set_size']} image(s), {result['fingerprint_queries']} queries; pinned responder "
          f"{pin['responder']} with slo_ms={pin['slo_ms']:.2f}, min_accuracy={pin['min_accuracy']:.4f} "
          f"(verified: {100 * pin['consistency']:.0f}% of checks named it)")
    print(f"  really served by: {result['pinned_subnet']} ({'the victim' if result['pinned_is_victim'] else 'NOT the victim'})")
    for name, s in result["scores"].items():
        print(f"  {name:14s} accuracy {s['accuracy_pct']:5.1f}%  fidelity {s['fidelity_pct']:5.1f}%  "
              f"({s['labels']} labels, {s['queries']} queries)")
    if "goodput_pct" in result:
        print(f"  benign goodput (served within the original hints): {result['goodput_pct']:.1f}%")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0
