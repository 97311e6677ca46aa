"""The fair two-process harness shared by the framework benchmarks (bench_nfnet, bench_vit).

The rules (bench/README.md): each framework runs in its OWN process with its own best
settings, as its users run it (XLA's CPU client on every core; torch with its default
thread count and the faster of its two OpenMP wait policies, picked by a short alternated
pilot); the two processes take turns A B A B, one block of steps at a time, each blocked
on a pipe while the other runs, with a pause between blocks; medians over the blocks are
quoted with the min..max of the ratio and the load average before and after.

A benchmark script provides `runner(framework, size, args)` building an object with
`.step() -> float` (one synchronous train step) and `.params`; this module drives it.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

# torch's OpenMP threads spin-wait by default; PASSIVE makes them sleep when idle. Which
# is faster depends on the machine's load, so both are tried.
TORCH_POLICIES = ("default", "PASSIVE")
PAUSE_S = 0.3  # between blocks: OpenMP's spin-wait (KMP_BLOCKTIME 200 ms) ends before the other starts
PILOT_BLOCKS = 2  # blocks per torch policy in the pilot


def import_timm():
    """Import timm, working around a CUDA-linked torchvision beside a CPU torch.

    timm imports torchvision; PyPI's torchvision 0.28.0 is built against the CUDA torch
    2.13.0, so beside the CPU wheel its C extension (detection ops, unused here) cannot
    load and torchvision's import fails while registering fake kernels for the ops
    `nms`/`qnms`. Declaring those two op schemas first lets the pure-Python part of
    torchvision import. With a matching pair (bench/README.md) the first import works.
    """
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_timm._keep = lib  # the schema lives as long as the Library object
        import torchvision  # noqa: F401
    import timm

    return timm


def jax_train_step(apply_loss, params, opt, batch: tuple):
    """Compile one optax train step (forward, backward, update; params and optimizer state
    donated) for a loss `apply_loss(params, *batch)`. Returns (step, state, compile seconds)
    where `step(state) -> (state, loss)` blocks until the step is done."""
    import jax
    import optax

    def train_step(p, opt_state, *b):
        loss, grads = jax.value_and_grad(apply_loss)(p, *b)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    state = (params, opt.init(params))
    t0 = time.perf_counter()
    fn = jax.jit(train_step, donate_argnums=(0, 1)).lower(*state, *batch).compile()
    compile_s = time.perf_counter() - t0

    def step(state):
        p, o, loss = fn(*state, *batch)
        return (p, o), float(loss)

    step.compiled = fn  # bench/profile_step.py reads the optimised HLO from it
    return step, state, compile_s


def timed(runner, steps: int) -> float:
    """Seconds per step over `steps` steps (each step ends with a host sync)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return (time.perf_counter() - t0) / steps


def serve(runner_factory, framework: str, size: str, args) -> int:
    """The worker side: build, warm up, report, then time one block per 'go' line."""
    t0 = time.perf_counter()
    runner = runner_factory(framework, size, args)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.step()
    runner.step()
    info = {"ready": True, "params": runner.params, "build_s": build_s, "warmup_s": time.perf_counter() - t0,
            "compile_s": getattr(runner, "compile_s", None)}
    if framework == "timm":
        import torch

        info.update(torch_threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(json.dumps({"step_s": timed(runner, args.steps)}), flush=True)
    return 0


class Proc:
    """A worker process (`script --worker FRAMEWORK --sizes SIZE ...`) driven over its pipes."""

    def __init__(self, script: str, framework: str, worker_args: list[str], policy: str = "default"):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        self.label = framework if framework == "jax" else f"timm[{policy}]"
        self.p = subprocess.Popen([sys.executable, script, "--worker", framework, *worker_args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"{self.label}: the worker died (run it alone with --worker to see why)")
        return json.loads(line)

    def block(self) -> float:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        out = self._read()["step_s"]
        time.sleep(PAUSE_S)
        return out

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def duel(script: str, worker_args: list[str], repeats: int, batch: int, expected_params: int, label: str) -> dict:
    """Pilot torch's wait policies, then alternate ours and the peer A B A B.

    Stops (SystemExit) unless both frameworks build exactly `expected_params` parameters:
    a speed ratio between two different models would mean nothing."""
    load_before = os.getloadavg()[0]
    peers = {pol: Proc(script, "timm", worker_args, pol) for pol in TORCH_POLICIES}
    pilot = {pol: [] for pol in peers}
    for _ in range(PILOT_BLOCKS):
        for pol, proc in peers.items():
            pilot[pol].append(proc.block())
    best = min(pilot, key=lambda pol: statistics.median(pilot[pol]))
    for pol, proc in peers.items():
        if pol != best:
            proc.close()
    peer = peers[best]
    ours = Proc(script, "jax", worker_args)
    if not ours.info["params"] == peer.info["params"] == expected_params:
        raise SystemExit(f"{label}: parameter counts differ: ours {ours.info['params']}, timm "
                         f"{peer.info['params']}, analytic {expected_params}; the configurations do not match")
    per_step = {"jax": [], "timm": []}
    for rep in range(repeats):
        order = (("jax", ours), ("timm", peer)) if rep % 2 == 0 else (("timm", peer), ("jax", ours))
        for name, proc in order:
            per_step[name].append(proc.block())
    ours.close()
    peer.close()
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return dict(
        batch=batch, params=expected_params,
        jax_img_s=batch / med["jax"], timm_img_s=batch / med["timm"], ratio=med["timm"] / med["jax"],
        ratio_min=min(per_step["timm"]) / max(per_step["jax"]), ratio_max=max(per_step["timm"]) / min(per_step["jax"]),
        jax_compile_s=ours.info["compile_s"], torch_policy=best, torch_threads=peer.info.get("torch_threads"),
        pilot_s=pilot, jax_step_s=per_step["jax"], timm_step_s=per_step["timm"],
        load_before=load_before, load_after=os.getloadavg()[0])


def machine() -> dict:
    """The machine and versions, printed at the top and written with --json."""
    import flax
    import jax
    import jaxlib
    import torch

    timm = import_timm()
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return dict(cpu=cpu, cores=len(os.sched_getaffinity(0)), platform=platform.platform(),
                python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                flax=flax.__version__, torch=torch.__version__, timm=timm.__version__,
                xla_flags=os.environ.get("XLA_FLAGS", ""), loadavg_start=os.getloadavg())


def print_machine(info: dict) -> None:
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}")
    print(f"versions: python {info['python']}, jax {info['jax']} (jaxlib {info['jaxlib']}), flax {info['flax']}, "
          f"torch {info['torch']}, timm {info['timm']}; XLA_FLAGS={info['xla_flags']!r}")
