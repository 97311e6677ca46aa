"""Read the results store, fit scaling laws, choose lr / epochs / model size, plan, report.

Never imports jax or flax (tests/test_analysis.py checks it in a subprocess): from
`scaling` only the pure modules errors, units and models (registry, configs, counts).
See docs/analysis.md.
"""
