"""Data-pipeline throughput vs the training step it must feed.

Prints images/s of a jitted train step (forward + backward + SGD update) of the
smallest demo NFNet (sweeps/specs/demo.toml: depth 0.25, width 1/32), then images/s of
`train_iterator` on the procedural dataset with 0, 1 and 2 worker processes, measured in
the same run on the same machine, and the ratios. The target is >= 3x. Two rates
per worker count, never one without the other:

- render: a 1e6-image train split (too big for the render cache), so every image is
  rendered: the first-epoch rate of any run;
- per epoch on the demo's 16,384-image split, which fits ProceduralSource's per-process
  cache: epoch 1 renders, later epochs mostly read the cache (with worker processes each
  worker has its own cache, so epoch 2 still renders about half).

`--source fashion-mnist` measures the real Fashion-MNIST source instead (after `scaling
data fetch fashion-mnist`): 28 px, one channel, batch 128 and the more expensive
augmentation (zero-pad 2 + crop + flip; the fashion specs use the flip alone), against
the train step of the fashion specs' smallest model (depth 1/4, width 1/32: the fastest
step, so the hardest to keep ahead of); the images are in memory, so there is one rate
per worker count.

    python bench/bench_data.py [--resolution 16] [--classes 10] [--batch 64] [--seconds 8]
    python bench/bench_data.py --source fashion-mnist [--model 0.25,0.03125] [--seconds 8]
"""
from __future__ import annotations

import argparse
import os
import time


def pipeline_rate(spec: str, batch: int, resolution: int, workers: int, seconds: float,
                  augment: dict | None = None) -> float:
    from scaling.data import get_dataset, train_iterator

    it = train_iterator(get_dataset(spec), global_batch_size=batch, seed=0, resolution=resolution, worker_count=workers,
                        augment=augment)
    for _ in range(3 + 2 * workers):  # start workers, fill their buffers
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["label"])
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def epoch_rates(spec: str, batch: int, resolution: int, workers: int, epochs: int) -> list[float]:
    """images/s over each of the first `epochs` epochs (time to the epoch's last batch)."""
    from scaling.data import get_dataset, train_iterator

    ds = get_dataset(spec)
    it = train_iterator(ds, global_batch_size=batch, seed=0, resolution=resolution, worker_count=workers)
    steps = ds.train_size // batch
    next(it)  # start worker processes (not timed: epoch 1 is timed from its second batch)
    rates = []
    for e in range(epochs):
        n = steps - 1 if e == 0 else steps
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        rates.append(n * batch / (time.perf_counter() - t0))
    it.close()
    return rates


def train_step_rate(model: str, classes: int, batch: int, resolution: int, seconds: float,
                    channels: int = 3) -> tuple[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    try:
        from scaling.models.config import family_config
        from scaling.models.nfnet import NFNet, init_params

        depth, width = (float(x) for x in model.split(","))
        cfg = family_config(depth, width, num_classes=classes)
        net = NFNet(cfg)
        params = init_params(cfg, jax.random.key(0), resolution, channels=channels)
        label = f"NFNet family depth={depth:g} width={width:g}"

        def apply(p, x, key):
            return net.apply({"params": p}, x, train=True, rngs={"dropout": key})
    except ImportError:  # before the model existed; named as such in the output
        import flax.linen as nn

        class SmallCNN(nn.Module):
            @nn.compact
            def __call__(self, x):
                for w in (16, 32, 64):
                    x = nn.relu(nn.Conv(w, (3, 3), strides=2)(x))
                return nn.Dense(classes)(x.mean(axis=(1, 2)))

        net = SmallCNN()
        params = net.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, channels)))["params"]
        label = "small flax CNN (16-32-64 convs; scaling.models.nfnet missing)"

        def apply(p, x, key):
            return net.apply({"params": p}, x)

    opt = optax.sgd(0.1, momentum=0.9, nesterov=True)

    @jax.jit
    def step(p, s, x, y, key):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, x, key), y).mean()
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    state = opt.init(params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, resolution, resolution, channels)), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    key = jax.random.key(1)
    params, state, v = step(params, state, x, y, key)  # compile
    v.block_until_ready()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        params, state, v = step(params, state, x, y, key)
        v.block_until_ready()
        n += batch
    return label, n / (time.perf_counter() - t0)


def fashion_main(args) -> None:
    """The Fashion-MNIST source against the fashion specs' smallest train step."""
    spec, resolution, batch = "fashion-mnist", 28, args.batch or 128
    augment = {"crop_pad": 2, "pad_mode": "zero"}  # costlier than the specs' flip-only recipe
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs share the cores); "
          f"dataset {spec} (60,000 images in memory, 1 channel); batch {batch}; {resolution}x{resolution}; "
          f"augment {augment}")
    label, step_rate = train_step_rate(args.model or "0.25,0.03125", 10, batch, resolution, args.seconds, channels=1)
    print(f"train step, {label}, 1 channel: {step_rate:,.0f} img/s")
    for w in (int(x) for x in args.workers.split(",")):
        rate = pipeline_rate(spec, batch, resolution, w, args.seconds, augment=augment)
        print(f"pipeline, worker_count={w}: {rate:,.0f} img/s  = {rate / step_rate:.1f}x the train step"
              f"  [load {os.getloadavg()[0]:.1f}]")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=("procedural", "fashion-mnist"), default="procedural")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None, help="default 64 (procedural), 128 (fashion-mnist)")
    ap.add_argument("--model", default=None, help="depth_mult,width_mult of the family member "
                    "(default 0.25,0.03125, also the fashion specs' smallest)")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--epochs", type=int, default=4, help="epochs timed on the cached (demo-sized) split")
    args = ap.parse_args()
    if args.source == "fashion-mnist":
        fashion_main(args)
        return
    args.batch = args.batch or 64
    args.model = args.model or "0.25,0.03125"
    spec = f"procedural:classes={args.classes},res={args.resolution}"
    cached_spec = f"{spec},train_size=16384"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other jobs share the cores); "
          f"dataset {spec}; batch {args.batch}; {args.resolution}x{args.resolution}")
    label, step_rate = train_step_rate(args.model, args.classes, args.batch, args.resolution, args.seconds)
    print(f"train step, {label}: {step_rate:,.0f} img/s")
    for w in (int(x) for x in args.workers.split(",")):
        rate = pipeline_rate(spec, args.batch, args.resolution, w, args.seconds)
        print(f"pipeline, worker_count={w}, every image rendered: {rate:,.0f} img/s"
              f"  = {rate / step_rate:.1f}x the train step")
        rates = epoch_rates(cached_spec, args.batch, args.resolution, w, args.epochs)
        print(f"pipeline, worker_count={w}, 16,384-image split, epochs 1..{args.epochs}: "
              + ", ".join(f"{r:,.0f} ({r / step_rate:.1f}x)" for r in rates) + f"  [load {os.getloadavg()[0]:.1f}]")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
