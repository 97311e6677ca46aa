"""Train ONE model at ONE budget and account for its compute.

Kept import-light on purpose: `analysis` uses the pure modules `scaling.units`,
`scaling.errors` and `scaling.models.config` / `scaling.models.counts` without
pulling in jax. Modules that need jax import it themselves.
"""
