"""benchmarks/mutation.py's bookkeeping: mutmut's exit codes read back into counts and kill rates."""

import json
import sys
from pathlib import Path

import pytest
from statsmodels.stats.proportion import proportion_confint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mutation  # noqa: E402


@pytest.mark.parametrize(("k", "n"), [(90, 100), (1, 7), (530, 530), (0, 12)])
def test_wilson_interval_against_statsmodels(k, n):
    assert mutation.wilson(k, n) == pytest.approx(list(proportion_confint(k, n, method="wilson")), abs=1e-4)


def test_results_of_counts_each_status_and_leaves_equivalents_and_unrun_out(tmp_path, monkeypatch):
    meta = tmp_path / "mutants" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 0, "m.x_f__mutmut_3": 0, "m.x_f__mutmut_4": 36}
    codes |= {"m.x_f__mutmut_5": 33, "m.x_f__mutmut_6": None, "m.x_f__mutmut_7": 3, "m.x_f__mutmut_8": 1}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    monkeypatch.setitem(mutation.EQUIVALENT, "m.x_f__mutmut_3", "a test reason")
    got = mutation.results_of(tmp_path)
    assert (got["killed"], got["survived"], got["timeout"], got["equivalent"]) == (3, 1, 1, 1)
    assert (got["no_tests"], got["not_run"], got["total"]) == (1, 1, 8)
    assert got["kill_rate_judged"] == 0.8 and got["kill_rate"] == pytest.approx(4 / 6, abs=1e-4)  # rounded to 4 places
    assert got["kill_rate_strict"] == pytest.approx(4 / 7, abs=1e-4)
    assert got["kill_rate_judged_ci95"] == mutation.wilson(4, 5)
    assert got["survivors"] == ["m.x_f__mutmut_2"] and got["no_tests_mutants"] == ["m.x_f__mutmut_5"]
    assert got["equivalent_mutants"] == {"m.x_f__mutmut_3": "a test reason"}
