"""The inference server: Open Inference Protocol (KServe v2) over gRPC, EDF queue, the policies, SubNetAct workers.

Modules, from the wire inward:
- `service`: the thin gRPC servicer (proto <-> types, no policy logic);
- `codec`: decoding and validating protocol tensors and parameters, encoding responses;
- `engine`: the router (EDF queue + policy.decide whenever a worker is free; every call completed exactly once);
- `workers`: in-process thread workers and worker processes that run `net(x, subnet)`;
- (the online correction of the latency table from observed execution times is `superserve.profile_correction`,
  which the simulator runs too);
- `metrics`: Prometheus metrics and per-request JSONL records;
- `app`: wiring (load assets, host check, start/stop) and `cli` (`superserve serve`).
"""
