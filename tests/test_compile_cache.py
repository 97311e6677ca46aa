"""The persistent compilation cache is found again after its folder is moved or reached
through a symlink (scaling.train.loop.setup_compile_cache), so the test suite's and a
user's runs in other working directories share one cache (each a real process)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Compiles one small function with the cache at argv[1]; prints nothing.
PROGRAM = """
import sys
import jax, jax.numpy as jnp
from scaling.train.loop import setup_compile_cache
setup_compile_cache(sys.argv[1])
jax.jit(lambda x: jnp.tanh(x) @ x.T + 3.0)(jnp.ones((7, 5))).block_until_ready()
"""


def _compile_with_cache(cache: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.name.startswith("jit_") and p.name.endswith("-cache")}


def test_a_moved_or_symlinked_cache_still_hits(tmp_path):
    first = tmp_path / "first"
    _compile_with_cache(first)
    compiled = _entries(first)
    assert any(name.startswith("jit__lambda") for name in compiled), compiled

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    first.rename(moved)
    _compile_with_cache(moved)
    assert _entries(moved) == compiled  # a hit: no entry under a new key

    link = tmp_path / "link"
    link.symlink_to(moved, target_is_directory=True)
    _compile_with_cache(link)
    assert _entries(moved) == compiled
