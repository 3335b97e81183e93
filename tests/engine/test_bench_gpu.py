"""scripts/bench_gpu.py: the --tiny CPU run prints the full table (every model x setting, our loop and pipe(...)),
and the peak table / formatting helpers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--peak-tflops", "1", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=580, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_run_has_every_row_and_column(bench, tiny_run):
    stdout, _ = tiny_run
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[0] == "| " + " | ".join(bench.COLUMNS) + " |"
    assert "overhead ours vs pipe" in lines[0] and "% of peak" in lines[0]
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    expected = [(model, setting.name) for model, _, _ in bench.TINY_SCENARIOS for setting in bench.SETTINGS.values()]
    assert [(cells[0], cells[3]) for cells in body] == expected  # no row is an error row
    assert all(len(cells) == len(bench.COLUMNS) for cells in body)
    assert all(cells[8].endswith("%") and cells[8][0] in "+-" for cells in body)
    assert "Random weights" in stdout and "FLOPs per UNet call" in stdout


@pytest.mark.slow
def test_tiny_run_times_the_same_work_on_both_paths(tiny_run):
    _, report = tiny_run
    assert report["peak_tflops"] == 1.0 and report["device"].startswith("CPU")
    for row in report["rows"]:
        assert "error" not in row, row
        ours, theirs = row["ours"], row["pipe"]
        assert ours["steps"] == theirs["steps"] >= 2  # one stamp per UNet step, on both paths
        assert ours["its"] > 0 and theirs["its"] > 0 and ours["seconds"] > 0 and theirs["seconds"] > 0
        assert ours["peak_bytes"] > 0
        assert row["overhead"] == pytest.approx((ours["seconds"] - theirs["seconds"]) / theirs["seconds"])
        assert row["peak_share"] == pytest.approx(row["tflops"])  # over a 1 TFLOP/s peak
    levers = {row["setting"]: row["levers"] for row in report["rows"]}
    assert levers["baseline"] == {"name": "baseline", "dtype": "float32", "sdpa": False, "channels_last": False,
                                  "compile": False, "fused_qkv": False, "vae_tiling": False}
    assert all(v is True or k in ("name", "dtype") for k, v in levers["all (fp16)"].items())


def test_peak_table_and_overrides(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert bench.peak_tflops("NVIDIA L40S", None) == 362.0 and bench.peak_tflops("NVIDIA L4", None) == 121.0
    assert bench.peak_tflops("CPU (x86_64, 2 threads)", None) is None
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == 500.0


def test_a_failed_setting_is_a_row_not_a_crash(bench):
    row = {"model": "sdxl-base", "size": 1024, "steps": 30, "setting": "compile", "error": "OutOfMemoryError: boom"}
    table = bench.markdown_table([row])
    assert "| sdxl-base | 1024² | 30 | compile — OutOfMemoryError: boom |" in table
    assert table.splitlines()[-1].count("|") == len(bench.COLUMNS) + 1


def test_full_size_without_a_gpu_is_refused(bench):
    if bench.torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit):
        bench.parse_args([])
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--settings", "baseline,warp-drive"])
