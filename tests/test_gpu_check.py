"""benchmarks/gpu.sh at tiny sizes on CPU, the Triton kernels through TRITON_INTERPRET=1: so that it runs first time on a
GPU machine (issue 19). Every section must run without error and every kernel must equal its torch twin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_at_tiny_sizes(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "gpu.json"
    env = {
        **os.environ, "TRITON_INTERPRET": "1", "INTERP_FORCE_TRITON": "1", "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["triton_runs"] and report["tiny"]
    kernels = {row["kernel"]: row for row in report["kernels"]}
    assert set(kernels) == {"row_topk", "rows_sum", "rows_dot", "rows_grad", "patched_batch", "attribution_scores"}
    assert kernels["row_topk"]["same_indices"]
    assert all(row["max_abs_diff"] < 1e-4 for row in kernels.values()), kernels
    assert report["sae"]["ours_tokens_per_s"] > 0 and report["sae"]["saelens_tokens_per_s"] > 0
    assert report["sae"]["ours_bf16select_tokens_per_s"] > 0 and report["sae"]["saelens_autocast_tokens_per_s"] > 0
    # the bf16 selection re-ranks exactly: its SAE trains as the exact one does (same data, seed and steps)
    assert abs(report["sae"]["ours_bf16select_fvu"] - report["sae"]["ours_fvu"]) < 0.02
    assert report["patching"]["variants"] == 4 and report["patching"]["max_abs_diff"] < 1e-4
