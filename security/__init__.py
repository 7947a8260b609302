"""Security of model-zoo serving: fingerprinting and extraction attacks on our own server, and defenses (issue 7).

Threat model
------------
The attacker is a black-box client of the public gRPC API (Open Inference Protocol, `superserve serve`):

- It can send ModelInfer calls with its own images and the request parameters every client may send, `slo_ms` and
  `min_accuracy`, and read what the responses show: the CLASS (and PROBABILITIES) outputs, failure status codes
  (DEADLINE_EXCEEDED when shed, INVALID_ARGUMENT when no subnet meets the accuracy hint, RESOURCE_EXHAUSTED when
  rate limited), and, unless the server runs with `--no-response-params`, the served `subnet_id` and
  `subnet_accuracy`. Both cases are modelled (`Fingerprinter(use_subnet_param=...)`).
- It knows neither the zoo (how many subnets, their accuracies and latencies) nor the policy, has no access to the
  victim's training data, and owns unlabelled images of the same task that the victim neither trained on nor is
  scored on (the MNIST-5k validation split and the odd half of its test split; the victim is scored on the even
  half). sklearn's digits, a different dataset, was tried first and is useless as a transfer set here (the subnets
  label the upsampled 8x8 digits almost at random). It competes with benign traffic it does not control, so the same hints do not always select the same
  subnet.
- It has a query budget: every image sent counts (fingerprinting and extraction alike); the server can enforce one
  per tenant (`--rate-limit`, images/s).
- Goal: train a surrogate of one chosen zoo member (the victim) with high accuracy and fidelity, by making the
  selection layer serve the victim consistently (fingerprinting) and querying through those hints (extraction).

Out of scope: attacks on the host or the process, side channels other than the response contents and codes (timing
is not used), and white-box access to the weights.

Modules
-------
- `fingerprint`: discover the responders, choose a small fingerprint set, pin a victim with (slo_ms, min_accuracy).
- `extraction`: knockoff-style surrogate training, accuracy and fidelity, the naive and upper-bound baselines.
- `oracles`: the two serving paths the attack runs against (the real server; the simulator with benign load).
- `experiment`: the attack end to end. Serving-side hardening lives in `superserve/server/security.py`.

The defenses (hint transforms applied before selection: PSML noise, our Pareto-neighbour defense; and goodput) live
in `superserve/hint_defense.py`, which imports neither the server nor this package: the server applies them, the
attack code measures them, and neither imports the other.
"""
