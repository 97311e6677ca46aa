"""One accelerator check, run once on a lent GPU/TPU machine (bench/device_check.sh).

Prints one table row per check, each with its own time, and never stops at a failed
check (its row says FAILED and why):
  conv      native grouped conv vs the CPU kernels (gemm, split, dense): outputs and
            gradients equal (relative L2 error)
  step      NFNet-F0 train step at 224 px, batch 256, fp32 and bf16: images/s, model
            FLOP/s and MFU against the chip's peak (scaling.units); ViT-B/16 too when
            the model registry has it
  lag       the one-step-lag loop (dispatch s, then read s-1) against a synchronous
            one (read every step): steps/s of each
  data      the procedural and ArrayRecord pipelines at 224 px: images/s on the host
            against the F0 step's images/s (does the pipeline keep up?)
With no accelerator visible it prints one line saying so and exits 0. It runs from the
source tree against whatever jax the machine has (the project's pins are for this
project's own installs; the code keeps to APIs that jax 0.10 and 0.11 both have).

    python bench/device_check.py [--budget-s 420] [--steps 20] [--batch 256]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree


ROWS: list[dict] = []


def row(check: str, what: str, value: str, seconds: float, status: str = "ok") -> None:
    ROWS.append({"check": check, "what": what, "value": value, "seconds": round(seconds, 1), "status": status})
    print(f"{check:6} {what:44} {value:>34} {seconds:7.1f}s  {status}", flush=True)


def guarded(check: str, what: str):
    """Run a check; a failure becomes a FAILED row with the error's first line."""
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one check's failure must not stop the rest
            line = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
            row(check, what, "-", time.perf_counter() - t0, f"FAILED: {type(err).__name__}: {line}")
            traceback.print_exc(file=sys.stderr)
        return fn
    return wrap


def rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_conv() -> None:
    import jax
    import jax.numpy as jnp

    from scaling.models.layers import conv2d

    # NFNet-like grouped 3x3 convs (groups of 128 channels): gemm and split at 28x28 maps,
    # dense (a Toeplitz matrix per tap, meant for small maps) at 8x8.
    for impl, size in (("gemm", 28), ("split", 28), ("dense", 8)):
        x = jax.random.normal(jax.random.key(0), (8, size, size, 256), jnp.float32)
        w = jax.random.normal(jax.random.key(1), (3, 3, 128, 256), jnp.float32) * 0.05
        for stride in (1, 2):
            def loss(x, w, impl, stride=stride):
                return jnp.sum(conv2d(x, w, stride=stride, groups=2, impl=impl) ** 2)

            t0 = time.perf_counter()
            ref_y = conv2d(x, w, stride=stride, groups=2, impl="native")
            ref_g = jax.grad(loss, argnums=(0, 1))(x, w, "native")
            y = conv2d(x, w, stride=stride, groups=2, impl=impl)
            g = jax.grad(loss, argnums=(0, 1))(x, w, impl)
            err = max(rel_err(y, ref_y), rel_err(g[0], ref_g[0]), rel_err(g[1], ref_g[1]))
            row("conv", f"native vs {impl}, {size}x{size}, stride {stride}", f"max rel L2 {err:.2e}",
                time.perf_counter() - t0, "ok" if err < 1e-3 else "MISMATCH")


def step_rate(model_name: str, resolution: int, batch: int, dtype: str, steps: int, sync_every_step: bool = True):
    """(images/s, train FLOPs per image, compile s, steps/s with one-step lag or sync)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.models.config import get_config
    from scaling.models.counts import count
    from scaling.models.nfnet import NFNet, init_params
    from scaling.optim import OptimConfig, apply_updates, make_optimizer
    from scaling.train import step as step_mod

    cfg = get_config(model_name, num_classes=1000)
    counts = count(cfg, resolution)
    mesh = step_mod.make_mesh()
    optimizer = make_optimizer(OptimConfig())
    params = init_params(cfg, jax.random.key(0), resolution)
    rep, data = step_mod.replicated(mesh), step_mod.batch_sharded(mesh)
    state = jax.device_put({"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}, rep)
    rng = np.random.default_rng(0)
    batch_dev = jax.device_put({"image": rng.normal(size=(batch, resolution, resolution, 3)).astype(np.float32),
                                "label": rng.integers(0, 1000, size=batch).astype(np.int32)}, data)
    hyper = jax.device_put(step_mod.make_hyper(peak_lr=0.1, warmup_steps=0, total_steps=10**6, seed=0), rep)
    fn = step_mod.make_train_step(NFNet(cfg, dtype=dtype), optimizer, apply_updates, label_smoothing=0.0, mesh=mesh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch_dev, hyper).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch_dev, hyper)
    float(m["loss"])

    def timed(sync: bool) -> float:
        nonlocal state
        t = time.perf_counter()
        pending = None
        for _ in range(steps):
            state, m = compiled(state, batch_dev, hyper)
            if sync:
                float(m["loss"])
            else:
                if pending is not None:
                    float(pending["loss"])
                pending = m
        if pending is not None:
            float(pending["loss"])
        return steps / (time.perf_counter() - t)

    sync_rate = timed(True)
    lag_rate = timed(False)
    return batch * max(sync_rate, lag_rate), counts.train_flops, compile_s, sync_rate, lag_rate


def _arrayrecord_copy(spec: str, n: int, resolution: int) -> str:
    """`n` procedural images written as PNG class folders, then `scaling data prepare`d
    into ArrayRecord shards: the real decode path (PNG bytes -> pixels) at `resolution`."""
    import numpy as np
    from PIL import Image

    from scaling.data import get_dataset
    from scaling.data.prepare import prepare_folder

    root = Path(tempfile.mkdtemp())
    ds = get_dataset(spec)
    images, labels = ds.source.read(0, np.arange(n), resolution)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / "folder" / f"c{int(label):04d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.asarray(img, np.float32) * 255 if img.dtype != np.uint8 else img, 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    prepare_folder(str(root / "folder"), str(root / "shards"))
    return f"arrayrecord:{root / 'shards'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--model", default="F0", help="NFNet preset or family name for the step checks")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run the checks on CPU too (tests: a tiny --model, small --resolution/--batch)")
    args = ap.parse_args()

    try:
        import jax
    except ImportError as err:
        print(f"device_check: {sys.executable} cannot import jax ({err}); run it with a Python that has jax "
              "(on the lent GPU machine: its preinstalled python3; here: PATH=.venv/bin:$PATH)")
        return 2

    from scaling import units

    devices = jax.devices()
    if devices[0].platform == "cpu" and not args.allow_cpu:
        print(f"device_check: no accelerator visible (jax {jax.__version__} sees only {len(devices)} CPU "
              "device(s)); nothing measured. Run it on a GPU/TPU machine.")
        return 0
    kind = devices[0].device_kind
    try:
        hw = units.hardware(units.hardware_for_device_kind(kind))
        peak = hw.peak_flops_per_chip * len(devices) if hasattr(hw, "peak_flops_per_chip") else None
    except Exception:  # noqa: BLE001 - an unknown device still gets its rates, without MFU
        hw, peak = None, None
    if hw is not None and peak is None:
        peak = units.cores_in_use(hw, len(devices)) * hw.peak_flops_per_core
    print(f"device_check: jax {jax.__version__}, {len(devices)} x {kind}, peak "
          f"{peak:.3g} FLOP/s ({hw.source})" if peak else f"device_check: jax {jax.__version__}, {len(devices)} x {kind}, "
          "no peak on record (no MFU)")
    print(f"{'check':6} {'what':44} {'value':>34} {'time':>8}  status")

    guarded("conv", "native vs CPU kernels")(check_conv)

    f0_rate = {}
    for dtype in ("float32", "bfloat16"):
        what = f"{args.model} {args.resolution}px b{args.batch} {dtype}"

        @guarded("step", what)
        def _step(dtype=dtype, what=what):
            t0 = time.perf_counter()
            img_s, flops_per_img, compile_s, sync_rate, lag_rate = step_rate(
                args.model, args.resolution, args.batch, dtype, args.steps)
            f0_rate[dtype] = img_s
            mfu = f"{img_s * flops_per_img / peak:.1%} MFU" if peak else "MFU n/a"
            row("step", what, f"{img_s:,.0f} img/s, {mfu}", time.perf_counter() - t0)
            row("step", f"  compile {args.model} {dtype}", f"{compile_s:.1f} s", 0.0)
            row("lag", f"{args.model} {dtype}: sync vs one-step lag", f"{sync_rate:.2f} vs {lag_rate:.2f} steps/s", 0.0)

    # ViT-B/16 joins this table when the ViT family lands in scaling/models (not yet).
    row("step", "ViT-B/16", "not in this version", 0.0, "skipped")

    for source in ("procedural", "arrayrecord"):
        @guarded("data", f"{source} pipeline {args.resolution}px")
        def _data(source=source):
            from scaling.data import get_dataset, train_iterator

            t0 = time.perf_counter()
            spec = f"procedural:classes=1000,train_size={max(64, 16 * args.batch)},heldout=64,res={args.resolution}"
            if source == "arrayrecord":
                spec = _arrayrecord_copy(spec, min(1024, 16 * args.batch), args.resolution)
            ds = get_dataset(spec)
            workers = min(8, os.cpu_count() or 1)
            it = train_iterator(ds, global_batch_size=args.batch, seed=0, resolution=args.resolution,
                                worker_count=workers)
            next(it)
            t = time.perf_counter()
            n = 8
            for _ in range(n):
                next(it)
            img_s = n * args.batch / (time.perf_counter() - t)
            need = f0_rate.get("bfloat16") or f0_rate.get("float32")
            verdict = "ok" if need is None or img_s >= need else "SLOWER than the step"
            row("data", f"{source} pipeline {args.resolution}px ({workers} workers)",
                f"{img_s:,.0f} img/s (step {need or 0:,.0f})", time.perf_counter() - t0, verdict)

    if args.json:
        Path(args.json).write_text(json.dumps(ROWS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
