"""Issue 20: every ordinary mistake is one short error line naming the input (exit code 2), found before long work;
a folder holds one run; failed runs are marked and skipped by the dashboards; stores and SAEs refuse bad data."""

import json
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from experiments.patching_sweep import PatchingSweepConfig, check_task, read_pairs
from experiments.cli import app
from interp.errors import CorruptFileError, InterpError, NonFiniteError, OutOfRangeError, UnknownSiteError
from interp.patching import PatchingTask
from interp.results import FAILED_FILE, ResultsDir, scan_runs
from interp.sites import Site, as_site
from interp.store import ActivationStore, build_store
from interp.store import store_lock
from sae.models import TopKConfig, build_sae
from sae.train import TrainConfig, train_sae
from tests.conftest import TINY_GQA

runner = CliRunner()
PAIR = {
    "clean": "The capital of France is",
    "corrupted": "The capital of Spain is",
    "answer": " Paris",
    "wrong": " Madrid",
}


def one_line_error(result, *needles: str) -> str:
    """Exit code 2, one 'error:' line, no traceback, naming each needle."""
    text = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and text.startswith("error: ") and "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


# ---------------------------------------------------------------- the pairs reader


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.mark.parametrize(
    "name, data, needle",
    [
        (
            "p.jsonl",
            json.dumps(PAIR) + "\n\n\n{not json\n",
            "p.jsonl:4: not valid JSON",
        ),  # the real line, blank lines counted
        ("p.jsonl", json.dumps(PAIR).encode() + b"\n" + b'{"clean": "caf\xe9"}\n', "p.jsonl:2: byte"),
        ("p.csv", 'clean,corrupted,answer,wrong\n"a,b, c, d\n', "not valid CSV"),
        ("p.csv", "", "is empty"),
        ("p.csv", "clean,corrupted\na,b\n", "lacks ['answer', 'wrong']"),
        ("p.csv", "clean,corrupted,answer,wrong\na,b, c, d,e\n", "p.csv:2: 1 more fields"),
        ("p.jsonl", json.dumps({**PAIR, "wrong": None}), "'wrong' is null"),
        ("p.jsonl", json.dumps({**PAIR, "clean": ["The", "capital"]}), "'clean' is list"),
        ("p.jsonl", json.dumps({**PAIR, "clean": ""}), "'clean' is empty"),
        ("p.jsonl", "[1, 2]\n", "is a JSON list"),
        ("p.jsonl", "\n \n", "holds no pairs"),
        ("p.txt", "x", "neither .jsonl nor .csv"),
    ],
)
def test_bad_pairs_files_are_one_line_errors(tmp_path, name, data, needle):
    path = _write(tmp_path, name, data)
    with pytest.raises(InterpError, match=None) as info:
        read_pairs(path)
    assert needle in str(info.value), str(info.value)
    result = runner.invoke(app, ["patch", str(path), "--out", str(tmp_path / "run")])
    one_line_error(result, needle)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_good_pairs_files_read_the_same_from_csv_and_jsonl(tmp_path):
    rows = [
        PAIR,
        {"clean": 'He said "hi", then', "corrupted": "She said no, then", "answer": " left", "wrong": " stayed"},
    ]
    jsonl = _write(tmp_path, "p.jsonl", "\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n")
    csv_text = (
        "clean,corrupted,answer,wrong\n"
        + "\n".join(
            ",".join('"' + r[k].replace('"', '""') + '"' for k in ("clean", "corrupted", "answer", "wrong"))
            for r in rows
        )
        + "\n"
    )
    assert read_pairs(jsonl) == read_pairs(_write(tmp_path, "p.csv", csv_text)) == tuple(rows)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_pairs_reader_on_random_bytes_returns_pairs_or_an_interp_error(tmp_path, data, suffix):
    path = tmp_path / f"pairs{suffix}"
    path.write_bytes(data)
    try:
        rows = read_pairs(path)
    except InterpError:
        return
    assert rows and all(set(r) >= {"clean", "corrupted", "answer", "wrong"} for r in rows)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
PAIRISH = st.fixed_dictionaries(
    {},
    optional={
        k: JSON | st.text(alphabet=string.printable, max_size=6) for k in ("clean", "corrupted", "answer", "wrong")
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(JSON | PAIRISH, max_size=4))
def test_pairs_reader_on_random_json_returns_valid_pairs_or_an_interp_error(tmp_path, lines):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    try:
        rows = read_pairs(path)
    except InterpError:
        return
    for row in rows:
        assert isinstance(row["clean"], str) and row["clean"] and isinstance(row["corrupted"], str) and row["corrupted"]
    assert len(rows) == len(lines)


def test_pairs_that_cannot_measure_anything_are_refused(tiny_model):
    with pytest.raises(InterpError, match="same clean and corrupted prompt"):
        PatchingSweepConfig(pairs=({**PAIR, "corrupted": PAIR["clean"]},))
    # Different prompts, but answer == wrong: logit_diff is 0 for both, so every restoration would be 0/0.
    task = PatchingTask(tiny_model, torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]]), [7], [7], metric="logit_diff")
    assert task.clean_metric == task.corrupted_metric == 0
    with pytest.raises(InterpError, match=r"give the same logit_diff \(0\).*0/0"):
        check_task(task, "logit_diff")
    check_task(PatchingTask(tiny_model, torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]]), [7], [8]), "logit_diff")


def test_metric_kl_is_an_alias_and_help_lists_kl_div():
    assert PatchingSweepConfig(pairs=(PAIR,), metric="kl").metric == "kl_div"
    with pytest.raises(InterpError, match="Did you mean: 'logit_diff'"):
        PatchingSweepConfig(pairs=(PAIR,), metric="logit_dif")
    assert "kl_div" in runner.invoke(app, ["patch", "--help"]).output


# ---------------------------------------------------------------- CLI arguments, before any long work


def test_bad_cli_arguments_are_one_line_errors_before_loading_a_model(tmp_path):
    a_file = _write(tmp_path, "a_file", "x")
    pairs = _write(tmp_path, "p.jsonl", json.dumps(PAIR))
    site = ["--site", "blocks.0.hook_resid_post"]
    one_line_error(
        runner.invoke(app, ["cache", "--out", str(tmp_path / "s"), *site, "--n-tokens", "-5"]), "--n-tokens -5"
    )
    one_line_error(runner.invoke(app, ["cache", "--out", str(a_file), *site]), "is an existing file")
    one_line_error(runner.invoke(app, ["cache", "--out", str(a_file / "sub"), *site]), "is a file, so no folder")
    one_line_error(runner.invoke(app, ["patch", str(pairs), "--out", str(a_file)]), "is an existing file")
    one_line_error(runner.invoke(app, ["sae", "train", "--out", str(a_file)]), "is an existing file")
    one_line_error(
        runner.invoke(app, ["sae", "train", "--out", str(tmp_path / "sae"), "--batch-size", "0"]), "--batch-size 0"
    )
    one_line_error(
        runner.invoke(app, ["sae", "train", "--out", str(tmp_path / "sae"), "--n-tokens", "-5"]), "--n-tokens -5"
    )
    one_line_error(
        runner.invoke(app, ["sae", "train", "--out", str(tmp_path / "sae"), "--checkpoint-every", "0"]),
        "--checkpoint-every 0",
    )
    one_line_error(runner.invoke(app, ["run", "scan-snap", "--out", str(a_file)]), "is an existing file")
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{not json")
    one_line_error(
        runner.invoke(app, ["cache", "--out", str(store), *site]), "manifest.json is not a readable JSON manifest"
    )
    (store / "manifest.json").write_bytes(b"\xff\xfe")
    one_line_error(
        runner.invoke(app, ["cache", "--out", str(store), *site]), "manifest.json is not a readable JSON manifest"
    )


def test_sites_that_are_not_hooks_fail_at_check(tiny_model):
    with pytest.raises(UnknownSiteError, match="layers are integers counting from 0"):
        Site(-1, "resid_pre")
    with pytest.raises(UnknownSiteError, match="set_use_attn_result"):
        as_site(tiny_model, Site(1, "result", head=0))
    with pytest.raises(UnknownSiteError, match="set_use_attn_result"):
        Site(1, "result").check(tiny_model)


def test_train_config_refuses_bad_numbers():
    for field, value in (
        ("lr", -1),
        ("lr", float("nan")),
        ("steps", 0),
        ("batch_size", -3),
        ("decay_fraction", 2.0),
        ("warmup_steps", -1),
    ):
        with pytest.raises(OutOfRangeError, match=f"TrainConfig\\({field}="):
            TrainConfig(**{field: value})


# ---------------------------------------------------------------- one run per folder, failure markers, dashboards


@dataclass(frozen=True)
class Cfg:
    sweep: str = "resid_pre"
    seed: int = 0


def test_a_folder_holds_one_run(tmp_path):
    run = ResultsDir.create(tmp_path / "run", Cfg(), exist_ok=True)
    run.write_metrics({"x": 1})
    again = ResultsDir.create(tmp_path / "run", Cfg(), exist_ok=True)  # the same config resumes
    assert again.metrics() == {"x": 1}
    with pytest.raises(InterpError, match=r"another config \(differs in sweep\).*--overwrite"):
        ResultsDir.create(tmp_path / "run", Cfg(sweep="attn_out"), exist_ok=True)
    with pytest.raises(InterpError, match="differs in sweep"):
        ResultsDir.check_create(tmp_path / "run", Cfg(sweep="attn_out"), exist_ok=True)
    replaced = ResultsDir.create(tmp_path / "run", Cfg(sweep="attn_out"), exist_ok=True, overwrite=True)
    assert replaced.metrics() == {} and replaced.config() == Cfg(sweep="attn_out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InterpError, match="not a results directory"):
        ResultsDir.create(tmp_path / "other", Cfg(), overwrite=True)
    assert (tmp_path / "other" / "notes.txt").exists()


def test_corrupt_metrics_of_an_earlier_attempt_do_not_survive_a_resume(tmp_path):
    run = ResultsDir.create(tmp_path / "run", Cfg())
    run.metrics_path.write_text("{broken")
    with pytest.raises(CorruptFileError):
        run.metrics()
    assert ResultsDir.create(tmp_path / "run", Cfg(), exist_ok=True).metrics() == {}


def test_failed_and_corrupt_runs_are_reported_and_skipped_by_the_dashboard(tmp_path):
    good = ResultsDir.create(tmp_path / "good", Cfg())
    good.write_metrics({"x": 1})
    failed = ResultsDir.create(tmp_path / "failed", Cfg(seed=1))
    with pytest.raises(ZeroDivisionError):
        with failed.failure_marker():
            1 / 0
    assert failed.failure()["error"] == "ZeroDivisionError"
    latin = ResultsDir.create(tmp_path / "latin", Cfg(seed=2))
    latin.metrics_path.write_bytes(b'{"caf\xe9": 1}')
    listy = ResultsDir.create(tmp_path / "listy", Cfg(seed=3))
    listy.metrics_path.write_text("[1, 2]")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{nope")
    runs, skipped = scan_runs(tmp_path)
    assert runs == [good]
    reasons = {p.name: r for p, r in skipped}
    assert set(reasons) == {"failed", "latin", "listy", "broken"}
    assert (
        "ZeroDivisionError" in reasons["failed"]
        and "not UTF-8" in reasons["latin"]
        and "not an object" in reasons["listy"]
    )
    result = runner.invoke(app, ["dashboard", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "good" / "dashboard.html").exists() and not (tmp_path / "failed" / "dashboard.html").exists()
    for name in reasons:
        assert f"skipped {tmp_path / name}" in result.output
    one_line_error(runner.invoke(app, ["dashboard", str(tmp_path / "failed")]), "no results directory to build")
    ResultsDir.create(tmp_path / "failed", Cfg(seed=1), exist_ok=True)  # a rerun clears the marker
    assert not (tmp_path / "failed" / FAILED_FILE).exists()


# ---------------------------------------------------------------- stores

SEQ = 8


@pytest.fixture
def store(tiny_model, tmp_path):
    tokens = torch.randint(0, TINY_GQA["d_vocab"], (16, SEQ), generator=torch.Generator().manual_seed(1))
    return build_store(
        tiny_model,
        ["blocks.0.hook_resid_post"],
        tokens,
        tmp_path / "store",
        n_tokens=16 * SEQ,
        seq_len=SEQ,
        batch_size=4,
        shard_tokens=4 * SEQ,
        progress=False,
    )


def _edit_manifest(store, change) -> None:
    path = store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_store_manifest_is_cross_checked_against_the_shards(store):
    assert len(store.shards) == 4
    original = (store.path / "manifest.json").read_text()
    _edit_manifest(store, lambda m: m["shards"].pop(1))
    with pytest.raises(CorruptFileError, match="shard_00001.safetensors' belongs"):
        ActivationStore(store.path)
    (store.path / "manifest.json").write_text(original)
    _edit_manifest(store, lambda m: m["shards"].pop())  # the last entry deleted: the names still run in order
    with pytest.raises(CorruptFileError, match="does not list"):
        ActivationStore(store.path)
    (store.path / "shard_00003.safetensors").unlink()  # and without the file: fewer tokens than the store was built for
    with pytest.raises(CorruptFileError, match="shards hold 96 tokens but it was built for 128"):
        ActivationStore(store.path)


def test_an_edited_shard_token_count_is_caught(store, tiny_model, tmp_path):
    def edit(m):
        m["shards"][2]["n_tokens"] += SEQ
        m["shards"][2]["n_seq"] += 1

    _edit_manifest(store, edit)
    with pytest.raises(CorruptFileError, match=r"tensor 'tokens' has shape \[32\], the manifest says \[40\]"):
        ActivationStore(store.path)


def test_token_ids_out_of_range_are_refused(tiny_model, tmp_path):
    tokens = torch.zeros((4, SEQ), dtype=torch.long)
    tokens[1, 2] = -3
    with pytest.raises(InterpError, match=r"token ids must lie in 0..100"):
        build_store(
            tiny_model,
            ["blocks.0.hook_resid_post"],
            tokens,
            tmp_path / "s",
            n_tokens=4 * SEQ,
            seq_len=SEQ,
            progress=False,
        )
    assert not (tmp_path / "s").exists()


def test_a_second_writer_is_refused_naming_the_first(tiny_model, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    tokens = torch.zeros((4, SEQ), dtype=torch.long)
    with store_lock(out):
        with pytest.raises(InterpError, match=r"another process is writing this store \(pid \d+\)"):
            build_store(
                tiny_model, ["blocks.0.hook_resid_post"], tokens, out, n_tokens=4 * SEQ, seq_len=SEQ, progress=False
            )
        one_line_error(
            runner.invoke(app, ["cache", "--out", str(out), "--site", "blocks.0.hook_resid_post"]),
            "another process is writing this store (pid",
        )
    sae_out = tmp_path / "sae"
    (sae_out / "checkpoints").mkdir(parents=True)
    with store_lock(sae_out):
        one_line_error(
            runner.invoke(app, ["sae", "train", "--out", str(sae_out)]), "another process is writing this run (pid"
        )
    assert (
        build_store(
            tiny_model, ["blocks.0.hook_resid_post"], tokens, out, n_tokens=4 * SEQ, seq_len=SEQ, progress=False
        ).n_tokens
        == 4 * SEQ
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=200), JSON.map(lambda x: json.dumps(x).encode())))
def test_manifest_reader_on_random_bytes_and_json_raises_an_interp_error(tmp_path, payload):
    folder = tmp_path / "s"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(payload)
    with pytest.raises(InterpError):
        ActivationStore(folder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["complete", "shards", "sites", "seq_len", "n_tokens_target", "model", "format"]), value=JSON
)
def test_manifest_reader_on_a_randomly_edited_field_opens_or_raises_an_interp_error(store, key, value):
    path = store.path / "manifest.json"
    original = path.read_text()
    try:
        _edit_manifest(store, lambda m: m.__setitem__(key, value))
        try:
            opened = ActivationStore(store.path)
        except InterpError:
            return
        assert opened.n_tokens == 16 * SEQ  # an edit that opens must not change what is read
    finally:
        path.write_text(original)


def test_corpora_decode_strictly_with_an_encoding_override(tiny_model, tmp_path):
    from interp.corpus import load_corpus

    text = tmp_path / "latin.txt"
    text.write_bytes("abc caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(InterpError, match=r"latin.txt: byte 7 is not valid utf-8.*--encoding"):
        list(load_corpus(text))
    assert list(load_corpus(text, encoding="latin-1")) == ["abc caf\u00e9 au lait"]
    lines = tmp_path / "docs.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InterpError, match=rf"docs.jsonl: byte {lines.read_bytes().index(0xE9)} is not valid utf-8"):
        list(load_corpus(lines))
    one_line_error(
        runner.invoke(
            app, ["cache", "--out", str(tmp_path / "s"), "--site", "blocks.0.hook_resid_post", "--corpus", str(text)]
        ),
        "byte 7",
    )


# ---------------------------------------------------------------- SAEs


def test_sae_refuses_non_finite_input_unless_told_not_to():
    sae = build_sae(TopKConfig(d_in=8, d_sae=16, k=2))
    x = torch.randn(5, 8)
    x[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"1 of 5 rows hold NaN or Inf \(first: row 3"):
        sae(x)
    with pytest.raises(NonFiniteError):
        sae.encode(x.masked_fill(torch.isnan(x), float("inf")))
    sae.check_finite = False
    assert torch.isnan(sae(x)[3]).all() and torch.isfinite(sae(x)[[0, 1, 2, 4]]).all()


def test_sae_resume_refuses_other_settings_naming_them(tmp_path):
    data = torch.randn(64 * 8, 8, generator=torch.Generator().manual_seed(0))
    batches = list(data.split(64))
    cfg = TrainConfig(steps=4, batch_size=64, checkpoint_every=2, warmup_steps=1)
    sae_cfg = TopKConfig(d_in=8, d_sae=16, k=2)
    train_sae(sae_cfg, batches, cfg, tmp_path / "run", progress=False)
    with pytest.raises(InterpError, match=r"train.steps \(saved 4, asked 6\)"):
        train_sae(
            sae_cfg,
            batches,
            TrainConfig(steps=6, batch_size=64, checkpoint_every=2, warmup_steps=1),
            tmp_path / "run",
            progress=False,
        )
    with pytest.raises(
        InterpError,
        match=r"sae.seed \(saved 0, asked 3\).*sae.k \(saved 2, asked 3\)|sae.k \(saved 2, asked 3\).*sae.seed",
    ):
        train_sae(TopKConfig(d_in=8, d_sae=16, k=3, seed=3), batches, cfg, tmp_path / "run", progress=False)
    # bookkeeping fields may change: the finished run is found complete
    again = train_sae(
        sae_cfg,
        batches,
        TrainConfig(steps=4, batch_size=64, checkpoint_every=3, warmup_steps=1),
        tmp_path / "run",
        progress=False,
    )
    assert len(again.curve) and not list((tmp_path / "run").glob(".sae.*"))


def test_sae_train_cli_refuses_a_resume_with_other_settings_before_loading_the_model(tmp_path):
    out = tmp_path / "sae"
    data = torch.randn(128, 576, generator=torch.Generator().manual_seed(0))
    train_sae(
        TopKConfig(d_in=576, d_sae=64, k=4),
        list(data.split(64)),
        TrainConfig(steps=2, batch_size=64, checkpoint_every=1),
        out,
        progress=False,
        hook_name="blocks.6.hook_resid_post",
    )
    common = ["sae", "train", "--out", str(out), "--d-sae", "64", "--k", "4", "--batch-size", "64"]
    one_line_error(runner.invoke(app, [*common, "--n-tokens", "192"]), "train.steps (saved 2, asked 3)")
    one_line_error(runner.invoke(app, [*common, "--n-tokens", "128", "--seed", "5"]), "sae.seed (saved 0, asked 5)")
    one_line_error(
        runner.invoke(app, [*common, "--n-tokens", "128", "--site", "blocks.2.hook_resid_post"]),
        "site (saved 'blocks.6.hook_resid_post'",
    )


def test_run_commands_refuse_another_config_without_marking_the_existing_run(tmp_path):
    from experiments.scan_snap import ScanSnapConfig

    out = tmp_path / "run"
    ResultsDir.create(out, ScanSnapConfig.quick(), analysis=ScanSnapConfig.quick().analysis)
    before = (out / "config.json").read_text()
    result = runner.invoke(app, ["run", "scan-snap", "--out", str(out)])  # the full config differs from the quick one
    one_line_error(result, "holds a run with another config", "--overwrite")
    assert not (out / FAILED_FILE).exists() and (out / "config.json").read_text() == before
