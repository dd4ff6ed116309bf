"""The load-test harness that the benchmark (`edgerec bench`) and the reliability scenarios share.

- `server`: `edgerec serve` as a child process on 127.0.0.1 (`ServerUnderTest`):
  its CPU time, its health and metrics;
- `memory`: a process's resident memory sampled over time (`MemoryWatch`);
- `prometheus`: a scrape of the server's /metrics endpoint (`Samples`) and
  the difference between two scrapes;
- `requests`: the Score requests the clients send (a round-robin pool over a
  bundle's catalog);
- `driver`: the load driver: closed loop (streams back to back) or open loop
  (Poisson arrivals), bounded in requests and in time;
- `results`: what the clients saw (`Tally`): sent, answered, refused by code,
  lost, and latency percentiles.
"""
