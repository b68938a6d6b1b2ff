"""experiments/circuit.py: the config's checks, the planted ground truth end to end, and (slow) the quick run."""

import dataclasses
import json

import pytest

from experiments.circuit import CircuitConfig, planted_results, run
from interp.errors import InterpError


def test_config_refuses_bad_input():
    with pytest.raises(InterpError, match="methods: 'eapig'.*Did you mean"):
        CircuitConfig(methods=("eapig",))
    with pytest.raises(InterpError, match="metric: 'accuracy'"):
        CircuitConfig(metric="accuracy")
    with pytest.raises(InterpError, match="steps=0"):
        CircuitConfig(steps=0)
    with pytest.raises(InterpError, match="planted_leaks"):
        CircuitConfig(planted_leaks=(1.5,))
    with pytest.raises(InterpError, match="pairs is empty"):
        CircuitConfig(pairs=())
    with pytest.raises(InterpError, match="copy_length=1"):
        CircuitConfig(copy_length=1)
    with pytest.raises(InterpError, match="bound_subsets=0"):
        CircuitConfig(bound_subsets=0)
    with pytest.raises(InterpError, match="acdc_tau=-0.1"):
        CircuitConfig(acdc_tau=-0.1)
    quick = CircuitConfig.quick()
    assert dataclasses.replace(quick) == quick  # frozen and rebuildable


def test_planted_results_recover_the_circuit():
    config = dataclasses.replace(
        CircuitConfig.quick(), planted_leaks=(0.0,), shuffles=50, planted_curve_sizes=(0, 6, 190)
    )
    results, table, curves = planted_results(config)
    leak0 = results["leak=0"]
    assert leak0["auc"]["exact"] >= 0.95 and leak0["n_planted"] == 6
    assert set(leak0["auc"]) == {"exact", "eap", "eap-ig"}
    assert 0.35 < leak0["shuffled_auc_mean"] < 0.65
    # the 6 planted edges alone carry the whole behaviour, for the exact ranking
    assert leak0["faithfulness"]["exact"]["6"] == pytest.approx(1.0, abs=1e-3)
    assert len(table) == 3 * 190 and set(curves["method"]) == {"exact", "eap", "eap-ig"}


@pytest.mark.slow
def test_quick_run_writes_agreement_and_planted_auc(tmp_path):
    out = run(CircuitConfig.quick(), tmp_path / "circuit")
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("eap", "eap-ig"):
        assert set(metrics["agreement"][method]) >= {"spearman", "recall_at_20"}
    assert metrics["planted_auc"]["exact"] >= 0.95
    assert (out / "edges.parquet").exists() and (out / "faithfulness.parquet").exists()
    assert set(metrics["heldout_faithfulness"]["heldout"]) == {"eap", "eap-ig"}
    assert set(metrics["copy"]["agreement"]) == {"eap", "eap-ig"} and metrics["copy"]["clean_metric"] > 0
    assert metrics["acdc"]["leak=0"]["n_extra"] == 0
