"""Compute units: one hardware table and conversions between budgets.

Pure Python (no jax): `analysis` and the planner use it. See docs/units.md.

Budgets may be given as
  "flops"                      real FLOPs (2 per multiply-accumulate), training = 3x forward
  "epochs"                     passes over the training set (needs its size and FLOPs/example)
  "<hw>-core-hours"            e.g. "tpu-v4-core-hours" (core = TensorCore on TPUs)
  "<hw>-chip-hours"            e.g. "tpu-v4-chip-hours"; one v4 chip-hour = 2 v4 core-hours
  "<gpu>-hours"                e.g. "h100-hours" = h100 chip-hours (one "core" per GPU)
  "cpu-core-hours"             CPU has no chip unit: its cores per chip depend on the machine

The conversion rule (stated, overridable): hours x peak FLOP/s x utilisation.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Mapping

from scaling.errors import BadInput, closest

SECONDS_PER_HOUR = 3600.0

# Default utilisation (model FLOP/s / peak) for accelerators
# (docs/references.md#implied-utilisation-of-the-largest-run): [S23]'s
# F7+ run (~1.9e22 FLOPs, ~39k v4 core-hours at peak) took 110k v4 core-hours, i.e.
# ~36% of peak. It is the only published anchor, so we ASSUME it for every accelerator
# until a measured value (achieved_utilization of real runs) overrides it.
S23_V4_UTILIZATION = 0.36
# CPU: ASSUMPTION, not measured for NFNets (no model existed when this was written);
# callers should pass the achieved utilisation measured on their machine.
CPU_DEFAULT_UTILIZATION = 0.25
# Per-core CPU "peak": there is no vendor figure for an arbitrary host, so we define
# it as measured fp32 matrix-multiply throughput per core (`measure_cpu_peak_per_core`).
# Default = measured on the dev machine (2-core AMD EPYC KVM guest, AVX2/FMA): numpy
# and XLA 2048^2 fp32 matmul both ran at ~44 GFLOP/s per core (docs/units.md).
CPU_DEFAULT_PEAK_PER_CORE = 44e9


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """One row of the hardware table.

    `cores_per_device` is how many cores one JAX device stands for: v3 exposes each
    TensorCore as a device, v4/v5p one device per chip (megacore;
    docs/references.md#chips-cores-and-jax-devices),
    GPUs one per chip. None for CPU: one JAX CPU device (or several forced ones)
    shares the host's cores, so the run's core count is the host's.
    """

    name: str
    peak_flops_per_chip: float  # dense bf16 FLOP/s (CPU: fp32, per "chip" = 1 core)
    cores_per_chip: int
    cores_per_device: int | None
    default_utilization: float
    source: str
    device_kinds: tuple[str, ...] = ()  # jax `device_kind` strings that map here
    has_chip_unit: bool = True

    @property
    def peak_flops_per_core(self) -> float:
        return self.peak_flops_per_chip / self.cores_per_chip


def _tpu(name, peak, cores, per_device, kinds, core_source):
    return HardwareProfile(
        name=name,
        peak_flops_per_chip=peak,
        cores_per_chip=cores,
        cores_per_device=per_device,
        default_utilization=S23_V4_UTILIZATION,
        source=f"peak: vendor bf16, docs/references.md#peak-throughput-and-cores-per-chip; cores: {core_source}",
        device_kinds=kinds,
    )


_TWO_CORES = "docs/references.md#peak-throughput-and-cores-per-chip (v3, v4, v5p: 2 TensorCores per chip)"
_ONE_CORE = "Google Cloud TPU docs (1 TensorCore per chip)"

HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        _tpu("tpu-v3", 123e12, 2, 1, ("TPU v3",), _TWO_CORES),
        _tpu("tpu-v4", 275e12, 2, 2, ("TPU v4",), _TWO_CORES),
        _tpu("tpu-v5e", 197e12, 1, 1, ("TPU v5 lite", "TPU v5e"), _ONE_CORE),
        _tpu("tpu-v5p", 459e12, 2, 2, ("TPU v5", "TPU v5p"), _TWO_CORES),
        _tpu("tpu-v6e", 918e12, 1, 1, ("TPU v6 lite", "TPU v6e"), _ONE_CORE),
        HardwareProfile(
            "a100", 312e12, 1, 1, S23_V4_UTILIZATION,
            "peak: NVIDIA A100 dense bf16, docs/references.md#peak-throughput-and-cores-per-chip", ("A100",),
        ),
        HardwareProfile(
            "h100", 989e12, 1, 1, S23_V4_UTILIZATION,
            "peak: NVIDIA H100 SXM dense bf16, docs/references.md#peak-throughput-and-cores-per-chip", ("H100",),
        ),
        HardwareProfile(
            "h200", 989e12, 1, 1, S23_V4_UTILIZATION,
            "peak: NVIDIA H200 dense bf16, docs/references.md#peak-throughput-and-cores-per-chip", ("H200",),
        ),
        HardwareProfile(
            "cpu", CPU_DEFAULT_PEAK_PER_CORE, 1, None, CPU_DEFAULT_UTILIZATION,
            "peak: measured fp32 matmul per core (docs/units.md); not a vendor figure",
            ("cpu",), has_chip_unit=False,
        ),
    )
}

_GPUS = ("a100", "h100", "h200")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A parsed budget unit. kind: "flops" | "epochs" | "core-hours" | "chip-hours"."""

    name: str  # canonical spelling, e.g. "tpu-v4-core-hours"
    kind: str
    hardware: str | None = None

    @property
    def is_hours(self) -> bool:
        return self.kind in ("core-hours", "chip-hours")


def _unit_table() -> dict[str, Unit]:
    table = {"flops": Unit("flops", "flops"), "epochs": Unit("epochs", "epochs")}
    for hw, prof in HARDWARE.items():
        table[f"{hw}-core-hours"] = Unit(f"{hw}-core-hours", "core-hours", hw)
        if prof.has_chip_unit:
            table[f"{hw}-chip-hours"] = Unit(f"{hw}-chip-hours", "chip-hours", hw)
    return table


UNITS: dict[str, Unit] = _unit_table()  # canonical names only
_ALIASES: dict[str, str] = {
    "flop": "flops",
    "epoch": "epochs",
    **{f"{g}-hours": f"{g}-chip-hours" for g in _GPUS},
    **{f"{g}-gpu-hours": f"{g}-chip-hours" for g in _GPUS},
}


def parse_unit(text: str | Unit) -> Unit:
    """Canonical `Unit` for a user's spelling (case-insensitive, '_' = '-')."""
    if isinstance(text, Unit):
        return text
    key = str(text).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in UNITS:
        return UNITS[key]
    if key == "cpu-chip-hours":
        raise BadInput(
            "unit: 'cpu-chip-hours' is not defined (a CPU's cores per chip depend on "
            "the machine); use 'cpu-core-hours'"
        )
    raise BadInput(
        f"unit: unknown unit {text!r}; {closest(key, [*UNITS, *_ALIASES])}known units: {', '.join(sorted(UNITS))}"
    )


def hardware(name: str | HardwareProfile) -> HardwareProfile:
    """Profile for a table name (or a profile passed through, e.g. a calibrated CPU)."""
    if isinstance(name, HardwareProfile):
        return name
    key = str(name).strip().lower()
    if key in HARDWARE:
        return HARDWARE[key]
    raise BadInput(f"hardware: unknown {name!r}; {closest(key, HARDWARE)}known: {', '.join(HARDWARE)}")


def hardware_for_device_kind(device_kind: str) -> str:
    """Table name for a jax `Device.device_kind` (e.g. 'TPU v4', 'NVIDIA H100 80GB
    HBM3', 'cpu'). Longest matching kind wins ('TPU v5 lite' before 'TPU v5'). An H100
    PCIe is refused: its peak differs from the SXM figure in the table."""
    kind = device_kind.strip().lower()
    matches = [
        (len(k), p.name)
        for p in HARDWARE.values()
        for k in p.device_kinds
        if (kind.startswith(k.lower()) if k.startswith("TPU") else k.lower() in kind)
    ]
    if "h100" in kind and "pcie" in kind:  # 756 TFLOP/s, not the SXM row's 989
        matches = []
    if not matches:
        raise BadInput(
            f"hardware: no profile for device kind {device_kind!r}; pass --hardware "
            f"with one of {', '.join(HARDWARE)} or add a row to scaling/units.py HARDWARE"
        )
    return max(matches)[1]


def with_peak(profile: str | HardwareProfile, peak_flops_per_chip: float, source: str):
    """A copy of a profile with a measured peak (e.g. a calibrated CPU)."""
    if not peak_flops_per_chip > 0:
        raise BadInput(f"peak_flops_per_chip: {peak_flops_per_chip!r} must be > 0")
    return dataclasses.replace(
        hardware(profile), peak_flops_per_chip=float(peak_flops_per_chip), source=source
    )


def measure_cpu_peak_per_core(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s per core of this host (best of `repeats`, numpy BLAS over
    every core the process may use). Takes ~1 s; noisy on a shared machine."""
    import numpy as np  # local: only the calibration needs it

    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / available_cores()


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _utilization(prof: HardwareProfile, utilization) -> float:
    if isinstance(utilization, Mapping):
        utilization = utilization.get(prof.name)
    u = prof.default_utilization if utilization is None else float(utilization)
    if not 0.0 < u <= 1.0:
        raise BadInput(f"utilization: {u!r} must be in (0, 1]; e.g. 0.36")
    return u


def _flops_per_hour(unit: Unit, prof: HardwareProfile | None, utilization) -> float:
    prof = hardware(prof if prof is not None else unit.hardware)
    if prof.name != unit.hardware:
        raise BadInput(f"hardware: profile {prof.name!r} does not match unit {unit.name!r}")
    peak = prof.peak_flops_per_core if unit.kind == "core-hours" else prof.peak_flops_per_chip
    return SECONDS_PER_HOUR * peak * _utilization(prof, utilization)


def _flops_per_epoch(dataset_size, train_flops_per_example) -> float:
    if dataset_size is None or train_flops_per_example is None:
        raise BadInput(
            "unit: 'epochs' needs the dataset size and training FLOPs per example; "
            "pass dataset_size= and train_flops_per_example="
        )
    if not (dataset_size > 0 and train_flops_per_example > 0):
        raise BadInput("dataset_size/train_flops_per_example: must both be > 0")
    return float(dataset_size) * float(train_flops_per_example)


def _budget_value(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise BadInput(f"budget: {value!r} must be a finite number >= 0")
    return v


def to_flops(
    value: float,
    unit: str | Unit,
    *,
    utilization: float | Mapping[str, float] | None = None,
    dataset_size: int | None = None,
    train_flops_per_example: float | None = None,
    profile: HardwareProfile | None = None,
) -> float:
    """Training FLOPs a budget buys. Hours: hours x peak x utilisation (per core for
    core-hours, per chip for chip-hours); utilisation defaults to the profile's.
    `profile` replaces the table's row (e.g. a calibrated CPU)."""
    u = parse_unit(unit)
    value = _budget_value(value)
    if u.kind == "flops":
        return float(value)
    if u.kind == "epochs":
        return value * _flops_per_epoch(dataset_size, train_flops_per_example)
    return value * _flops_per_hour(u, profile, utilization)


def from_flops(
    flops: float,
    unit: str | Unit,
    *,
    utilization: float | Mapping[str, float] | None = None,
    dataset_size: int | None = None,
    train_flops_per_example: float | None = None,
    profile: HardwareProfile | None = None,
) -> float:
    """Inverse of `to_flops`: the budget, in `unit`, that `flops` training FLOPs cost."""
    u = parse_unit(unit)
    if u.kind == "flops":
        return float(flops)
    if u.kind == "epochs":
        return flops / _flops_per_epoch(dataset_size, train_flops_per_example)
    return flops / _flops_per_hour(u, profile, utilization)


def all_units(
    flops: float,
    utilization: float | Mapping[str, float] | None = None,
    *,
    dataset_size: int | None = None,
    train_flops_per_example: float | None = None,
) -> dict[str, float]:
    """`flops` in every canonical unit (epochs only when its inputs are given)."""
    out = {}
    for name, u in UNITS.items():
        if u.kind == "epochs" and (dataset_size is None or train_flops_per_example is None):
            continue
        out[name] = from_flops(
            flops, u, utilization=utilization, dataset_size=dataset_size,
            train_flops_per_example=train_flops_per_example,
        )
    return out


def budget_to_steps(
    value: float,
    unit: str | Unit,
    *,
    train_flops_per_example: float,
    batch_size: int,
    dataset_size: int | None = None,
    utilization: float | Mapping[str, float] | None = None,
    profile: HardwareProfile | None = None,
) -> int:
    """Number of train steps a budget buys: round(FLOPs / (FLOPs/example x batch)),
    at least 1. Epochs skip the FLOP detour: round(epochs x dataset_size / batch)."""
    if batch_size < 1 or not train_flops_per_example > 0:
        raise BadInput("batch_size/train_flops_per_example: must be >= 1 and > 0")
    u = parse_unit(unit)
    if u.kind == "epochs":
        if dataset_size is None or dataset_size < 1:
            raise BadInput("dataset_size: an 'epochs' budget needs the dataset size (>= 1)")
        examples = _budget_value(value) * dataset_size
    else:
        flops = to_flops(value, u, utilization=utilization, profile=profile)
        examples = flops / train_flops_per_example
    return max(1, math.floor(examples / batch_size + 0.5))


def cores_in_use(
    hw: str | HardwareProfile, num_devices: int, *, host_cores: int | None = None
) -> int:
    """Cores behind `num_devices` JAX devices (CPU: the host's cores, see profile)."""
    prof = hardware(hw)
    if num_devices < 1:
        raise BadInput(f"num_devices: {num_devices} must be >= 1")
    if prof.cores_per_device is None:
        return host_cores if host_cores is not None else available_cores()
    return num_devices * prof.cores_per_device


def device_seconds_to_hours(
    seconds: float,
    hw: str | HardwareProfile,
    num_devices: int,
    unit: str | Unit,
    *,
    host_cores: int | None = None,
) -> float:
    """Hours of `unit` used by `num_devices` JAX devices busy for `seconds` of wall
    time (compile, eval and checkpoint pauses already excluded by the caller).
    `unit` must be a core- or chip-hours unit of the same hardware."""
    prof, u = hardware(hw), parse_unit(unit)
    if not u.is_hours or u.hardware != prof.name:
        fix = f"'{prof.name}-core-hours'"
        if prof.has_chip_unit:
            fix += f" or '{prof.name}-chip-hours'"
        raise BadInput(f"unit: {u.name!r} is not an hours unit of {prof.name!r}; use {fix}")
    cores = cores_in_use(prof, num_devices, host_cores=host_cores)
    per_unit = 1 if u.kind == "core-hours" else prof.cores_per_chip
    return seconds * cores / per_unit / SECONDS_PER_HOUR


def achieved_utilization(
    model_flops: float,
    seconds: float,
    hw: str | HardwareProfile,
    num_devices: int,
    *,
    host_cores: int | None = None,
) -> float:
    """Model FLOP/s over peak FLOP/s of the cores used (MFU)."""
    prof = hardware(hw)
    if seconds <= 0:
        raise BadInput(f"seconds: {seconds!r} must be > 0")
    cores = cores_in_use(prof, num_devices, host_cores=host_cores)
    return model_flops / (seconds * cores * prof.peak_flops_per_core)
