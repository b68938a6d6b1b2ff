"""Save and load SAEs in SAELens's on-disk format (cfg.json + sae_weights.safetensors), both ways.

Our own SAEs are saved in that format too, with our typed config under the "interp_toolkit" key
(SAELens ignores it), so one directory loads in both libraries. BatchTopK is saved as SAELens saves
it: a "jumprelu" SAE whose every latent has the learned threshold.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from interp.errors import CorruptFileError, InterpError, ModelLoadError
from sae.models import (
    GatedConfig,
    JumpReluConfig,
    ReluConfig,
    Sae,
    SkipTranscoderConfig,
    TopKConfig,
    TranscoderConfig,
    build_sae,
    config_from_dict,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
OUR_KEY = "interp_toolkit"
SAELENS_ARCHITECTURE = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "matryoshka": "jumprelu",  # as SAELens saves its matryoshka_batchtopk: one threshold on every latent
    "transcoder": "transcoder",  # ReLU transcoders only (k=None); SAELens has no TopK transcoder, see _saelens_architecture
    "skip_transcoder": "skip_transcoder",
}
ONE_THRESHOLD = ("batchtopk", "matryoshka")  # saved as JumpReLU with the same threshold on every latent


def _saelens_version() -> str:
    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "6.0.0"


def saelens_state_dict(sae: Sae) -> dict[str, Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in sae.saelens_weights().items()}


def _saelens_architecture(sae: Sae) -> str:
    """SAELens's name for this SAE; a TopK transcoder has none, so it is saved as "topk_transcoder", which only we load."""
    if sae.cfg.architecture in ("transcoder", "skip_transcoder") and sae.cfg.k is not None:
        return f"topk_{sae.cfg.architecture}"
    return SAELENS_ARCHITECTURE[sae.cfg.architecture]


def save_sae(
    sae: Sae,
    directory: str | os.PathLike,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `directory`/cfg.json and sae_weights.safetensors; `sae_lens.SAE.load_from_disk(directory)` reads them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = _saelens_architecture(sae)
    cfg = {
        "architecture": arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": _saelens_version(), "hook_name": hook_name, "model_name": model_name},
        OUR_KEY: {"sae_config": sae.cfg.to_dict(), **(extra or {})},
    }
    if arch == "topk":
        cfg.update(k=sae.cfg.k, rescale_acts_by_decoder_norm=False)
    if "transcoder" in arch:
        cfg.update(d_out=sae.cfg.d_out, apply_b_dec_to_input=False)
        cfg["metadata"]["hook_name_out"] = (extra or {}).get("hook_name_out")
    save_file(saelens_state_dict(sae), str(directory / WEIGHTS_FILE))
    (directory / CFG_FILE).write_text(json.dumps(cfg, indent=1))
    return directory


def read_sae_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CFG_FILE
    if not path.exists():
        raise ModelLoadError(
            f"load_sae({str(directory)!r}): no {CFG_FILE} there. Pass a directory written by save_sae or SAELens's save_model."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}).") from exc


def load_sae(directory: str | os.PathLike) -> Sae:
    """Load an SAE saved by `save_sae` or by SAELens (architectures standard, topk, jumprelu)."""
    directory = Path(directory)
    cfg = read_sae_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.exists():
        raise ModelLoadError(f"load_sae({str(directory)!r}): {WEIGHTS_FILE} is missing beside {CFG_FILE}.")
    try:
        weights = load_file(str(weights_path))
    except Exception as exc:
        raise CorruptFileError(f"{weights_path} cannot be read as safetensors ({exc}). Is the file complete?") from exc
    sae_cfg = config_from_dict(cfg[OUR_KEY]["sae_config"]) if OUR_KEY in cfg else _config_from_saelens(cfg, directory)
    sae = build_sae(sae_cfg)
    _check_shapes(weights, sae, weights_path, cfg)
    with torch.no_grad():
        sae.encoder.copy_(weights["W_enc"].T)
        sae.W_dec.copy_(weights["W_dec"])
        sae.b_dec.copy_(weights["b_dec"])
        b_enc = weights["b_gate"] if sae_cfg.architecture == "gated" else weights["b_enc"]
        if not cfg.get("apply_b_dec_to_input", True) and sae_cfg.architecture == "gated":
            raise InterpError(
                f"{directory}: a gated SAE with apply_b_dec_to_input=False is not supported; re-save it from SAELens with apply_b_dec_to_input=True."
            )
        if not cfg.get("apply_b_dec_to_input", True) and "transcoder" not in sae_cfg.architecture:
            b_enc = b_enc + weights["b_dec"] @ weights["W_enc"]  # x W + b == (x - b_dec) W + (b + b_dec W)
        sae.b_enc.copy_(b_enc)
        sae.load_saelens_extra_(weights)
        if sae_cfg.architecture == "jumprelu":
            sae.log_threshold.copy_(weights["threshold"].log())
        elif sae_cfg.architecture in ONE_THRESHOLD:
            values = weights["threshold"]
            if not torch.all(values == values[0]):
                raise CorruptFileError(
                    f"{weights_path}: a BatchTopK SAE has one threshold, but the saved thresholds differ across latents."
                )
            sae.threshold.fill_(float(values[0]))
    return sae.eval()


def _config_from_saelens(cfg: dict, directory: Path):
    arch, d_in, d_sae = cfg.get("architecture", "standard"), cfg["d_in"], cfg["d_sae"]
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise InterpError(
            f"{directory}: SAELens normalize_activations={cfg['normalize_activations']!r} is not supported; fold it into the weights first (SAELens: fold_activation_norm_scaling_factor)."
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise InterpError(
            f"{directory}: reshape_activations={cfg['reshape_activations']!r} is not supported; SAEs here take flat [..., d_in] activations."
        )
    if arch == "standard":
        return ReluConfig(d_in=d_in, d_sae=d_sae)
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm"):
            raise InterpError(
                f"{directory}: TopK with rescale_acts_by_decoder_norm=True is not supported; load it in SAELens and call fold_W_dec_norm() first."
            )
        return TopKConfig(d_in=d_in, d_sae=d_sae, k=int(cfg["k"]))
    if arch == "jumprelu":
        return JumpReluConfig(d_in=d_in, d_sae=d_sae)
    if arch == "gated":
        return GatedConfig(d_in=d_in, d_sae=d_sae)
    if arch in ("transcoder", "skip_transcoder"):
        cls = TranscoderConfig if arch == "transcoder" else SkipTranscoderConfig
        return cls(d_in=d_in, d_sae=d_sae, d_out=int(cfg["d_out"]), k=None)
    raise InterpError(
        f"{directory}: SAELens architecture {arch!r} is not supported here; supported: standard, topk, jumprelu, gated, transcoder, skip_transcoder."
    )


def _check_shapes(weights: dict[str, Tensor], sae: Sae, path: Path, cfg: dict) -> None:
    d_in, d_sae, d_out = sae.cfg.d_in, sae.cfg.d_sae, getattr(sae.cfg, "d_out", sae.cfg.d_in)
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if sae.cfg.architecture != "gated":  # a gated SAE's b_enc is saved as b_gate, one of its extra weights
        expected["b_enc"] = (d_sae,)
    expected |= sae.saelens_extra_shapes()
    if SAELENS_ARCHITECTURE.get(sae.cfg.architecture) == "jumprelu":
        expected["threshold"] = (d_sae,)
    missing = [k for k in expected if k not in weights]
    if missing:
        raise CorruptFileError(
            f"{path} lacks weights {missing}; its {CFG_FILE} (architecture {cfg.get('architecture')!r}) needs {sorted(expected)}."
        )
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise CorruptFileError(
                f"{path}: {key} has shape {tuple(weights[key].shape)} but {CFG_FILE} says d_in={d_in}, d_sae={d_sae}, so {key} must be {shape}. "
                "The config does not match the weights: re-save the SAE, or fix d_in / d_sae in cfg.json."
            )
        if not torch.isfinite(weights[key]).all():
            raise CorruptFileError(f"{path}: {key} contains NaN or Inf; the file is damaged or training diverged.")
