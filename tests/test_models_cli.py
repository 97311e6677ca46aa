"""`scaling model-info` through the real entry point (python -m study.cli)."""
import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "study.cli", "model-info", *args], capture_output=True, text=True)


def test_model_info_f0_json_matches_table3():
    out = run("F0", "--resolution", "256", "--classes", "1000", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert set(row) == {"name", "family", "resolution", "num_classes", "params", "macs", "flops", "train_flops",
                        "depth_mult", "width_mult"}
    assert row["family"] == "nfnet"
    assert (row["name"], row["resolution"], row["num_classes"]) == ("F0", 256, 1000)
    assert f"{row['params'] / 1e6:.1f}M / {row['macs'] / 1e9:.2f}B" == "71.5M / 12.38B"  # [B21] Table 3
    assert row["flops"] == 2 * row["macs"] and row["train_flops"] == 3 * row["flops"]


def test_model_info_family_defaults_to_test_resolution():
    out = run("--depth-mult", "0.5", "--width-mult", "0.125", "--classes", "10", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["name"], row["resolution"], row["depth_mult"], row["width_mult"]) == ("nfnet-d0.5-w0.125", 256, 0.5, 0.125)


def test_model_info_bad_name_exits_2_with_one_line():
    out = run("F9", "--json")
    assert out.returncode == 2
    assert out.stderr.startswith("error: model:") and out.stderr.count("\n") == 1
    assert out.stdout == ""
