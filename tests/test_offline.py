"""No hub traffic: load_model, `interp cache` and `interp patch` with a hub model name open no non-local socket.

The commands run in a fresh interpreter under tests/net_guard.py, which records (and refuses) every
name lookup or connection to a non-local address from the first import on, with the offline
variables unset in its environment, as a user's shell would have them.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """
import json, sys
from typer.testing import CliRunner
from experiments.cli import app
from interp.errors import ModelLoadError
from interp.models import load_model

out = {}
try:
    load_model("gpt2-small")
except ModelLoadError as exc:
    out["load_model"] = str(exc)
runner = CliRunner()
r = runner.invoke(app, ["cache", "--out", sys.argv[1] + "/store", "--site", "blocks.0.hook_resid_post", "--n-tokens", "128", "--model", "gpt2-small"])
out["cache"] = [r.exit_code, r.output]
r = runner.invoke(app, ["patch", sys.argv[1] + "/pairs.jsonl", "--out", sys.argv[1] + "/run", "--model", "gpt2-small"])
out["patch"] = [r.exit_code, r.output]
print("RESULT " + json.dumps(out))
"""


def test_hub_names_make_no_network_requests(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps(
            {
                "clean": "The capital of France is",
                "corrupted": "The capital of Spain is",
                "answer": " Paris",
                "wrong": " Madrid",
            }
        )
        + "\n"
    )
    log = tmp_path / "net.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "net_guard.py"),
            str(log),
            "-c",
            SNIPPET.replace("sys.argv[1]", repr(str(tmp_path))),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    attempts = log.read_text().splitlines() if log.exists() else []
    assert attempts == [], f"network requests: {attempts}"
    assert "never downloads from a hub" in result["load_model"]
    for command in ("cache", "patch"):
        code, output = result[command]
        assert code == 2 and "never downloads from a hub" in output, (command, code, output)
        assert "Traceback" not in output
    assert seconds < 120  # retried hub requests took ~30 s per load before the fix
