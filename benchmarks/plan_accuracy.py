"""The plans' predictions against the runs (issue 19, point 4): predicted peak memory and time of `plan_patch`,
`plan_cache` and `plan_sae_train` against the measured peak and time of the whole run, each size in a fresh process
(the same probes as tests/test_plan.py, which asserts the peak within 25%). Writes benchmarks/results/plan.json.

    python benchmarks/plan_accuracy.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_plan import CACHE_PROBE, MLP_SITES, PROBE, SAE_PROBE, _probe  # noqa: E402

RESID = "blocks.1.hook_resid_post,blocks.2.hook_mlp_out"

CASES = [
    ("patch", "heads sweep, 128 prompts x 64 tokens, budget 24 MiB", PROBE, (128, 24)),
    ("patch", "heads sweep, 256 prompts x 64 tokens, budget 96 MiB", PROBE, (256, 96)),
    ("cache", "2 resid sites, shards of 2^15 tokens (16 MiB)", CACHE_PROBE, (2**15, RESID)),
    ("cache", "2 resid sites, shards of 2^17 tokens (64 MiB)", CACHE_PROBE, (2**17, RESID)),
    ("cache", "2 resid sites, shards of 2^18 tokens (128 MiB)", CACHE_PROBE, (2**18, RESID)),
    ("cache", "2 mlp_post sites, shards of 2^17 tokens (128 MiB)", CACHE_PROBE, (2**17, MLP_SITES)),
    ("cache", "2 mlp_post sites, shards of 2^18 tokens (256 MiB)", CACHE_PROBE, (2**18, MLP_SITES)),
    ("sae train", "TopK 64 -> 8192, k 16, batch 1024, 24 steps", SAE_PROBE, (8192, 1024)),
    ("sae train", "TopK 64 -> 32768, k 16, batch 2048, 24 steps", SAE_PROBE, (32768, 2048)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=None, help="run only the cases of this command (patch, cache, sae train)")
    parser.add_argument("--case", default=None, help="and only the cases whose description contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan.json")
    args = parser.parse_args()
    rows = []
    cases = [c for c in CASES if args.only in (None, c[0]) and (args.case or "") in c[1]]
    for command, what, script, argv in cases:
        for repeat in range(args.repeats):
            row = _probe(script, *argv)
            row.pop("text", None)
            row.update(command=command, case=what, repeat=repeat)
            row["peak_error"] = (row["predicted"] - row["measured"]) / row["measured"]
            row["time_ratio"] = row["predicted_s"] / row["seconds"]
            rows.append(row)
            print(f"{command:9} {what:48} predicted {row['predicted'] / 2**20:7.1f} MiB measured "
                  f"{row['measured'] / 2**20:7.1f} MiB ({row['peak_error']:+.0%}); time {row['predicted_s']:.1f} s "
                  f"vs {row['seconds']:.1f} s", flush=True)  # fmt: skip
    meta = dict(load=os.getloadavg(), python=platform.python_version(), threads=1)
    if args.only and args.out.exists():  # the other commands' rows kept from the last run
        old = json.loads(args.out.read_text())
        rows = [r for r in old["rows"] if not (r["command"] == args.only and (args.case or "") in r["case"])] + rows
        meta = {**old.get("meta", {}), f"{args.only}_run": meta}
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
