"""Measuring edgerec: `edgerec bench` (speed and quality) and `edgerec reliability` (failure behaviour).

- `harness/`: the one load-test harness both share: the server under test,
  the load driver, the Prometheus scraper and the typed results;
- the benchmark: `run` (the command), `runners` and `offline` (the runner
  grid), `quality`, `server_bench` (batching on vs off under load), `workload`,
  `limits`, `machine`, `goals`, `report` and `plots`;
- `reliability/`: overload, soak, hostile input, faults and access scenarios.
"""
