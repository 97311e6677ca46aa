"""Compute units: table, chip vs core hours, round trips, the [S23] anchor, bad input."""
import subprocess
import sys

import pytest

from scaling import units
from scaling.errors import BadInput


def test_every_profile_has_core_hours_and_accelerators_chip_hours():
    for name, prof in units.HARDWARE.items():
        assert f"{name}-core-hours" in units.UNITS
        assert (f"{name}-chip-hours" in units.UNITS) == (name != "cpu")
        assert prof.source and prof.peak_flops_per_chip > 0
    assert set(units.HARDWARE) == {
        "tpu-v3", "tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e", "a100", "h100", "h200", "cpu"
    }


def test_table_values_match_reference_s4():
    peaks = {"tpu-v3": 123e12, "tpu-v4": 275e12, "tpu-v5e": 197e12, "tpu-v5p": 459e12,
             "tpu-v6e": 918e12, "a100": 312e12, "h100": 989e12, "h200": 989e12}
    for name, peak in peaks.items():
        assert units.HARDWARE[name].peak_flops_per_chip == peak
    cores = {"tpu-v3": 2, "tpu-v4": 2, "tpu-v5p": 2, "tpu-v5e": 1, "tpu-v6e": 1,
             "a100": 1, "h100": 1, "h200": 1}
    for name, n in cores.items():
        assert units.HARDWARE[name].cores_per_chip == n


def test_v4_chip_hour_is_two_core_hours():
    flops = units.to_flops(1.0, "tpu-v4-chip-hours")
    assert units.from_flops(flops, "tpu-v4-core-hours") == pytest.approx(2.0)
    # Measured time: 4 JAX devices on v4 = 4 chips (megacore) = 8 cores.
    assert units.device_seconds_to_hours(3600, "tpu-v4", 4, "tpu-v4-chip-hours") == 4.0
    assert units.device_seconds_to_hours(3600, "tpu-v4", 4, "tpu-v4-core-hours") == 8.0
    # v3 exposes each core as a device: 8 devices = 8 cores = 4 chips.
    assert units.device_seconds_to_hours(3600, "tpu-v3", 8, "tpu-v3-chip-hours") == 4.0
    # GPUs: chip-hours = core-hours = "h100-hours".
    assert units.device_seconds_to_hours(7200, "h100", 8, "h100-hours") == 16.0
    assert units.from_flops(units.to_flops(3.0, "h100-hours"), "h100-core-hours") == (
        pytest.approx(3.0))


def test_round_trips_in_every_unit():
    flops = 1.234e20
    table = units.all_units(flops, dataset_size=1_000_000, train_flops_per_example=3e9)
    assert set(table) == set(units.UNITS)
    for name, value in table.items():
        back = units.to_flops(value, name, dataset_size=1_000_000, train_flops_per_example=3e9)
        assert back == pytest.approx(flops, rel=1e-12), name
    assert table["epochs"] == pytest.approx(flops / 3e15)
    # A utilisation override changes hours inversely and round-trips too.
    hours = units.from_flops(flops, "tpu-v4-core-hours", utilization=0.5)
    assert hours == pytest.approx(table["tpu-v4-core-hours"] * 0.36 / 0.5)
    assert units.to_flops(hours, "tpu-v4-core-hours", utilization=0.5) == pytest.approx(flops)


def test_s23_f7plus_example():
    """docs/references.md#implied-utilisation-of-the-largest-run:
    ~1.9e22 FLOPs ~ 39k v4 core-hours at peak; 110k -> ~36%."""
    flops = 1.9e22
    at_peak = units.from_flops(flops, "tpu-v4-core-hours", utilization=1.0)
    assert at_peak == pytest.approx(39e3, rel=0.03)
    # 110k core-hours = 55k chip-hours = 55k hours of one JAX device (v4 megacore).
    implied = units.achieved_utilization(flops, 110e3 / 2 * 3600, "tpu-v4", num_devices=1)
    assert implied == pytest.approx(0.36, abs=0.015)
    # The default utilisation turns 110k core-hours back into ~1.9e22 FLOPs.
    assert units.to_flops(110e3, "tpu-v4-core-hours") == pytest.approx(flops, rel=0.05)


def test_cpu_hours_use_host_cores_not_device_count():
    # 4 forced CPU devices on a 2-core host still used 2 cores.
    h = units.device_seconds_to_hours(1800, "cpu", 4, "cpu-core-hours", host_cores=2)
    assert h == 1.0
    u = units.achieved_utilization(44e9 * 10, 10, "cpu", 4, host_cores=1)
    assert u == pytest.approx(1.0)
    calibrated = units.with_peak("cpu", 22e9, "measured")
    assert units.from_flops(22e9 * 3600, "cpu-core-hours", utilization=1.0,
                            profile=calibrated) == pytest.approx(1.0)


def test_budget_to_steps():
    # 0.25 epochs of 10_000 examples at batch 100 = 25 steps.
    assert units.budget_to_steps(0.25, "epochs", train_flops_per_example=1e9,
                                 batch_size=100, dataset_size=10_000) == 25
    # FLOPs: 1e15 / (1e9 * 100) = 10000 steps; rounding to nearest, at least 1.
    assert units.budget_to_steps(1e15, "flops", train_flops_per_example=1e9,
                                 batch_size=100) == 10_000
    assert units.budget_to_steps(1e9, "flops", train_flops_per_example=1e9,
                                 batch_size=100) == 1
    steps = units.budget_to_steps(400, "tpu-v4-core-hours", train_flops_per_example=1e12,
                                  batch_size=4096)
    assert steps == round(400 * 3600 * 137.5e12 * 0.36 / 1e12 / 4096)


def test_unit_parsing_and_messages():
    assert units.parse_unit("H100-Hours").name == "h100-chip-hours"
    assert units.parse_unit("tpu_v4_core_hours").name == "tpu-v4-core-hours"
    did_you_mean = r"unit: unknown unit 'tpu-v4-core-hour'; did you mean 'tpu-v4-core-hours'\?"
    with pytest.raises(BadInput, match=did_you_mean):
        units.parse_unit("tpu-v4-core-hour")
    with pytest.raises(BadInput, match="use 'cpu-core-hours'"):
        units.parse_unit("cpu-chip-hours")
    with pytest.raises(BadInput, match="dataset_size"):
        units.to_flops(1.0, "epochs")
    with pytest.raises(BadInput, match="utilization"):
        units.to_flops(1.0, "h100-hours", utilization=1.5)
    with pytest.raises(BadInput, match="budget"):
        units.to_flops(-1.0, "flops")
    with pytest.raises(BadInput, match="not an hours unit of 'tpu-v4'"):
        units.device_seconds_to_hours(1.0, "tpu-v4", 1, "h100-hours")
    with pytest.raises(BadInput, match="did you mean 'tpu-v4'"):
        units.hardware("tpu-v9")


def test_device_kinds():
    assert units.hardware_for_device_kind("TPU v4") == "tpu-v4"
    assert units.hardware_for_device_kind("TPU v5 lite") == "tpu-v5e"
    assert units.hardware_for_device_kind("TPU v5") == "tpu-v5p"
    assert units.hardware_for_device_kind("TPU v6 lite") == "tpu-v6e"
    assert units.hardware_for_device_kind("NVIDIA H100 80GB HBM3") == "h100"
    assert units.hardware_for_device_kind("NVIDIA H200") == "h200"
    assert units.hardware_for_device_kind("NVIDIA A100-SXM4-40GB") == "a100"
    assert units.hardware_for_device_kind("cpu") == "cpu"
    with pytest.raises(BadInput, match="no profile"):
        units.hardware_for_device_kind("Tesla V100")
    with pytest.raises(BadInput, match="no profile"):
        units.hardware_for_device_kind("NVIDIA H100 PCIe")


def test_units_module_does_not_import_jax():
    code = "import sys, scaling.units; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_calibration_measures_a_plausible_rate():
    peak = units.measure_cpu_peak_per_core(size=256, repeats=2)
    assert 1e8 < peak < 1e13  # 0.1 GFLOP/s .. 10 TFLOP/s per core
    prof = units.with_peak("cpu", peak, "measured in test")
    assert prof.peak_flops_per_core == peak and prof.name == "cpu"
