"""bench/device_check.sh on a machine without an accelerator: one clear line, exit 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_device_check_says_no_accelerator_and_exits_0():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [out.stdout.strip()]
    assert out.stdout.startswith("device_check: no accelerator visible")


def test_device_check_without_jax_says_which_python_and_exits_2(tmp_path):
    """A python3 that cannot import jax (jax blocked in sys.modules): one line naming the
    interpreter and the fix, exit 2, no traceback."""
    shim = tmp_path / "python3"
    shim.write_text("#!/bin/sh\nexec " + sys.executable + " -c \"import runpy, sys; sys.modules['jax'] = None; "
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\" \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout.startswith("device_check: ") and "cannot import jax" in out.stdout
    assert len(out.stdout.strip().splitlines()) == 1
