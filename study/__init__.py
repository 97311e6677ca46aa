"""The study: the composition root above scaling -> sweeps -> analysis.

`study.cli` is the `scaling` console entry point (it mounts the commands each package
owns and applies the exit-code contract); `study.demo` is `scaling demo`, the one
command that strings all three packages together. Nothing below imports this package
(tests/test_layering.py).
"""
