"""`plan_patch` (issue 19): a one-batch probe's predicted peak memory within 25% of the measured peak of the whole
sweep, on two sizes (tiny model, each size in a fresh process); a plan that does not fit is refused, naming the flag."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from interp.errors import InterpError
from interp.plan import Plan

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys, torch
torch.set_num_threads(1)
from interp.models import load_model
from interp.patching import PatchingTask, patch_sites
from interp.patching.sweeps import head_sites
from interp.plan import measure, plan_patch
from tests.conftest import TINY_GQA
n_prompts, budget_mb = int(sys.argv[1]), int(sys.argv[2])
model = load_model({**TINY_GQA, "n_ctx": 64}, seed=0)
tokens = torch.randint(0, model.cfg.d_vocab, (2, n_prompts, 64), generator=torch.Generator().manual_seed(0))
task = PatchingTask(model, tokens[0], tokens[1], answers=torch.arange(n_prompts) % 101, wrong_answers=(torch.arange(n_prompts) + 1) % 101)
sites = head_sites(task)
with torch.no_grad():
    patch_sites(task, sites[:1])  # warm-up: library code paths, not the measurement
plan = plan_patch(task, sites, budget_mb << 20)
_, seconds, peak = measure(lambda: patch_sites(task, sites, memory_budget=budget_mb << 20))
print(json.dumps(dict(predicted=plan.predicted_peak_bytes, measured=peak, predicted_s=plan.predicted_seconds, seconds=seconds, text=plan.render())))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from Linux's /proc")
@pytest.mark.parametrize("n_prompts, budget_mb", [(128, 24), (256, 96)])
def test_predicted_peak_within_25_percent(n_prompts, budget_mb):
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(n_prompts), str(budget_mb)], cwd=ROOT, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout.strip().splitlines()[-1])
    assert row["measured"] > 8 << 20, row  # tens of MB: a size where 25% means something
    assert abs(row["predicted"] - row["measured"]) <= 0.25 * row["measured"], row


def test_a_plan_that_does_not_fit_names_the_flag():
    plan = Plan("interp patch", ["x"], predicted_peak_bytes=10 << 30, predicted_seconds=1.0,
                budget_flag="--memory-budget-mb", available_bytes=1 << 30)  # fmt: skip
    with pytest.raises(InterpError, match="--memory-budget-mb"):
        plan.check()
    Plan("interp patch", [], 1 << 20, 1.0, "--memory-budget-mb", available_bytes=1 << 30).check()
