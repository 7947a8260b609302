"""Scale-out over Redis: stateless front ends (`superserve serve --backend redis://...`) and workers on any host
(`superserve worker --backend redis://...`) sharing one deadline-ordered queue, the zoo profile, a worker registry
with heartbeats and live metrics in Redis. See `redis_queue` for the key layout and the protocol."""
