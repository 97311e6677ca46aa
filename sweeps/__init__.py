"""Sweep specs -> trials -> workers -> results store (docs/sweeps.md).

Public API (import the modules; this package imports nothing, so `analysis` can use
`sweeps.schema` / `sweeps.store` without pulling in jax):
  sweeps.spec.load_spec(path_or_name) -> SweepSpec;  sweeps.spec.expand(spec) -> [Trial]
  sweeps.store.Store(url, results_dir=None, create=True)
  sweeps.runner.run_sweep(spec, store_url, workers=2, ...) -> RunSummary
  sweeps.worker.work(store_url, trainer=None, options=WorkerOptions(), ...)
"""
