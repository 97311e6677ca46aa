"""Where a train step's time goes, ours against timm's, by kind of work.

The speed benches (bench_nfnet.py, bench_vit.py) give one ratio per size; this script
says what the ratio is made of. It builds the same two runners those benches time, runs
a few steps of each under its framework's profiler, and sums op time into the same
categories on both sides:

- conv fwd / conv dgrad / conv wgrad: convolutions producing activations in the forward,
  the input gradient in the backward, and the kernel gradient;
- matmul fwd / matmul bwd: dots (XLA's YNNPACK / library calls; torch's mm/addmm/bmm);
- layout: copies and transposes (im2col patches, NHWC<->group-major moves);
- elementwise: everything else in the forward and backward (activations, norms,
  residual adds, weight standardisation, softmax, losses);
- optimizer: the parameter update (optax's, torch.optim's).

JAX side: `jax.profiler` trace (perfetto JSON), each executed thunk looked up in the
compiled HLO for its kind and its `op_name` metadata (`transpose(` marks the backward).
torch side: `torch.profiler`, self CPU time per aten op. Times are op time summed over
threads divided by the steps profiled, so on 2 cores they may exceed the wall time.
Under load the absolute ms inflate; the shares are the guide.

    python bench/profile_step.py nfnet d1-w0.25-r64
    python bench/profile_step.py vit w192-d12-p4-r32 --steps 3 --top 15 --json out.json

Each framework runs in its own process (as the benches), one after the other.
Results: docs/bench_nfnet.md#where-the-time-goes.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BENCHES = {"nfnet": "bench_nfnet", "vit": "bench_vit"}


# --- JAX: HLO lookup and classification -----------------------------------------------


_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? (\w[\w-]*)\(")


def hlo_index(text: str) -> dict[str, dict]:
    """name -> {shape, opcode, line} for every top-level and fused instruction."""
    out = {}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            out[m.group(1)] = {"shape": m.group(2), "opcode": m.group(3), "line": line}
    return out


def _op_name(line: str) -> str:
    m = re.search(r'op_name="([^"]*)"', line)
    return m.group(1) if m else ""


def _fused_ops(text: str, calls: str) -> str:
    """The body of a fused computation (for fusions whose own line has no metadata)."""
    m = re.search(rf"^%{re.escape(calls)} .*?^}}", text, flags=re.S | re.M)
    return m.group(0) if m else ""


def _numel(shape: str) -> int:
    dims = re.search(r"\[([\d,]*)\]", shape).group(1)
    n = 1
    for d in filter(None, dims.split(",")):
        n *= int(d)
    return n


def _conv_kind(conv_line: str, operand_shapes: list[str], bwd: bool) -> str:
    """fwd, dgrad or wgrad of one convolution. A weight gradient is a convolution whose
    'kernel' operand is an activation gradient: more elements than its output."""
    out_shape = re.search(r"= (\S+?)(?:\{[^}]*\})? convolution", conv_line).group(1)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", conv_line).group(1)
    if not labels.startswith("b") or (len(operand_shapes) == 2 and _numel(operand_shapes[1]) > _numel(out_shape)):
        return "conv wgrad"
    return "conv dgrad" if bwd else "conv fwd"


def classify_jax(name: str, index: dict, text: str) -> tuple[str, str]:
    """(category, layer) of one executed thunk. YNNPACK fusions carry no metadata of
    their own: their kind comes from the fused body and their layer from their operands."""
    rec = index.get(name)
    if rec is None:
        return "elementwise", "?"
    line = rec["line"]
    op = _op_name(line)
    body = ""
    if "calls=" in line:
        body = _fused_ops(text, re.search(r"calls=%([\w.\-]+)", line).group(1))
    if not op:
        op = _op_name(body)
    if not op:
        for operand in re.findall(r"%([\w.\-]+)", line.split("fusion(", 1)[-1].split(")", 1)[0]):
            if operand in index and index[operand]["opcode"] != "parameter" and _op_name(index[operand]["line"]):
                op = _op_name(index[operand]["line"])
                break
    bwd = "transpose(" in op
    layer = "/".join(p for p in op.split("/")[2:-1] if not p.startswith(("jit(", "jvp(", "transpose("))) or "-"
    if "jvp(" not in op and op:
        return "optimizer", layer
    conv = line if rec["opcode"] == "convolution" else next(
        (ln for ln in body.splitlines() if " convolution(" in ln), "")
    if conv:
        if conv is line:
            operands = re.search(r"convolution\(([^)]*)\)", line).group(1)
            shapes = [index[o.strip().lstrip("%")]["shape"] for o in operands.split(",") if o.strip().lstrip("%") in index]
        else:
            header = body.splitlines()[0].split("->")[0]  # the fused computation's parameters
            shapes = [m.group(1) for m in re.finditer(r"(f32\[[\d,]*\]|bf16\[[\d,]*\])", header)]
        return _conv_kind(conv, shapes, bwd), layer
    if rec["opcode"] in ("dot", "custom-call") or "__ynn_fusion" in line or "__onednn" in line:
        return ("matmul bwd" if bwd else "matmul fwd"), layer
    if rec["opcode"] in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        return "layout", layer
    return "elementwise", layer


def profile_jax(bench, size: str, args) -> dict:
    import jax

    run = bench.runner("jax", size, args)
    for _ in range(2):
        run.step()
    text = run._step.compiled.as_text()
    index = hlo_index(text)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run.step()
            wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        path = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)[0]
        trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    ops = collections.Counter()
    threads_used = {e["tid"] for e in events if e.get("ph") == "X" and "XLAEigen" in threads.get(e.get("tid"), "")}
    for e in events:
        if e.get("ph") == "X" and "XLAEigen" in threads.get(e.get("tid"), "") and e["name"] != "ThunkExecutor::Execute" \
                and "ThreadPool" not in e["name"]:  # a worker waiting for its partner, not an op
            ops[e["name"]] += e.get("dur", 0.0) / 1e3 / args.steps  # us -> ms per step
    cats, layers, top = collections.Counter(), collections.Counter(), []
    for name, ms in ops.items():
        cat, layer = classify_jax(name, index, text)
        cats[cat] += ms
        layers[layer] += ms
        top.append((ms, name, cat, layer))
    top.sort(reverse=True)
    return {"categories": dict(cats), "layers": dict(layers.most_common(args.top)),
            "top": [dict(ms=ms, op=n, category=c, layer=l) for ms, n, c, l in top[:args.top]],
            "params": run.params, "wall_ms": wall_ms, "threads": len(threads_used)}


# --- torch ---------------------------------------------------------------------------


def classify_torch(key: str, in_optimizer: bool) -> str:
    if in_optimizer:
        return "optimizer"
    k = key.lower()
    if "convolution_backward" in k:
        return "conv dgrad+wgrad"
    if "conv" in k:
        return "conv fwd"
    if any(s in k for s in ("addmm", "aten::mm", "bmm", "linear", "matmul", "scaled_dot_product")):
        return "matmul"
    if any(s in k for s in ("copy_", "contiguous", "transpose", "permute", "clone", "im2col", "unfold")):
        return "layout"
    return "elementwise"


def profile_timm(bench, size: str, args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    run = bench.runner("timm", size, args)
    for _ in range(2):
        run.step()
    cats = collections.Counter()
    top = collections.Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run.step()
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
    # Self time per op; ops under an Optimizer.step record count as the update.
    events = prof.events()
    opt_ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step")]
    for e in events:
        if e.name.startswith(("Optimizer.", "ProfilerStep", "autograd::engine")) or not e.name.startswith("aten::"):
            continue
        in_opt = any(a <= e.time_range.start and e.time_range.end <= b for a, b in opt_ranges)
        ms = e.self_cpu_time_total / 1e3 / args.steps
        cats[classify_torch(e.name, in_opt)] += ms
        top[e.name] += ms
    # timm's backward: convolution_backward does dgrad and wgrad in one op
    return {"categories": dict(cats), "top": [dict(ms=v, op=k) for k, v in top.most_common(args.top)],
            "params": run.params, "threads": torch.get_num_threads(), "wall_ms": wall_ms}


# --- driver ---------------------------------------------------------------------------


def worker(args) -> int:
    bench = __import__(BENCHES[args.family])
    fn = profile_jax if args.worker == "jax" else profile_timm
    if args.worker == "timm":
        from _harness import import_timm

        import_timm()
    print(json.dumps(fn(bench, args.size, args)))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("family", choices=list(BENCHES))
    ap.add_argument("size", help="a size name of bench_nfnet.py / bench_vit.py")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="steps profiled (after 2 warm-up steps)")
    ap.add_argument("--top", type=int, default=12, help="rows of the per-op and per-layer tables")
    ap.add_argument("--conv-impl", default="auto", help="NFNet conv kernels (scaling.models.layers)")
    ap.add_argument("--impl", default="auto", help="ViT attention implementation")
    ap.add_argument("--json", help="also write both profiles here")
    ap.add_argument("--worker", choices=("jax", "timm"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    res = {"load_before": os.getloadavg()[0]}
    for fw in ("jax", "timm"):
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", fw]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res[fw] = json.loads(out.strip().splitlines()[-1])
    res["load_after"] = os.getloadavg()[0]
    j, t = res["jax"], res["timm"]
    print(f"{args.family} {args.size}: {j['params'] / 1e6:.2f}M params, batch {args.batch}, "
          f"{args.steps} steps profiled, load {res['load_before']:.1f}->{res['load_after']:.1f}")
    # XLA runs ops on both threads at once (op times sum to more than the wall time);
    # torch's profiler times each op once, on the thread that called it. So each side's
    # categories are shown as shares of its own op time, and as those shares of its
    # wall time per step ("wall ms"), which add up to the step on both sides.
    jc, tc = dict(j["categories"]), dict(t["categories"])
    rows = [("conv fwd", jc.get("conv fwd", 0), tc.get("conv fwd", 0)),
            ("conv dgrad + wgrad", jc.get("conv dgrad", 0) + jc.get("conv wgrad", 0), tc.get("conv dgrad+wgrad", 0)),
            ("  of which wgrad (ours only)", jc.get("conv wgrad", 0), 0.0),
            ("matmul fwd + bwd", jc.get("matmul fwd", 0) + jc.get("matmul bwd", 0), tc.get("matmul", 0)),
            ("layout (copies, transposes)", jc.get("layout", 0), tc.get("layout", 0)),
            ("elementwise", jc.get("elementwise", 0), tc.get("elementwise", 0)),
            ("optimizer", jc.get("optimizer", 0), tc.get("optimizer", 0))]
    jt, tt = sum(jc.values()), sum(tc.values())
    print(f"{'per step':<32}{'ours %':>8}{'timm %':>8}{'ours wall ms':>14}{'timm wall ms':>14}")
    for label, a, b in rows:
        print(f"{label:<32}{a / jt:>8.0%}{b / tt:>8.0%}{a / jt * j['wall_ms']:>14.1f}{b / tt * t['wall_ms']:>14.1f}")
    print(f"{'step (wall)':<32}{'':>16}{j['wall_ms']:>14.1f}{t['wall_ms']:>14.1f}")
    print(f"op time summed over threads: ours {jt:.0f} ms on {j['threads']} threads, timm {tt:.0f} ms (caller thread)")
    print("\nours, top layers (ms):", ", ".join(f"{k} {v:.1f}" for k, v in j["layers"].items()))
    print("ours, top ops:")
    for r in j["top"]:
        print(f"  {r['ms']:8.1f}  {r['category']:<12} {r['layer']:<28} {r['op']}")
    print("timm, top aten ops:")
    for r in t["top"]:
        print(f"  {r['ms']:8.1f}  {r['op']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
