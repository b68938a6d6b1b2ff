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
from sae.models import JumpReluConfig, ReluConfig, Sae, TopKConfig, build_sae, config_from_dict

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
OUR_KEY = "interp_toolkit"
SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}


def _saelens_version() -> str:
    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "6.0.0"


def saelens_state_dict(sae: Sae) -> dict[str, Tensor]:
    weights = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    threshold = sae.saelens_threshold()
    if threshold is not None:
        weights["threshold"] = threshold
    return {k: v.detach().float().contiguous().cpu() for k, v in weights.items()}


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
    arch = SAELENS_ARCHITECTURE[sae.cfg.architecture]
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
    _check_shapes(weights, sae_cfg.d_in, sae_cfg.d_sae, weights_path, cfg)
    sae = build_sae(sae_cfg)
    with torch.no_grad():
        sae.encoder.copy_(weights["W_enc"].T)
        sae.W_dec.copy_(weights["W_dec"])
        sae.b_dec.copy_(weights["b_dec"])
        b_enc = weights["b_enc"]
        if not cfg.get("apply_b_dec_to_input", True):
            b_enc = b_enc + weights["b_dec"] @ weights["W_enc"]  # x W + b == (x - b_dec) W + (b + b_dec W)
        sae.b_enc.copy_(b_enc)
        if sae_cfg.architecture == "jumprelu":
            sae.log_threshold.copy_(weights["threshold"].log())
        elif sae_cfg.architecture == "batchtopk":
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
    raise InterpError(
        f"{directory}: SAELens architecture {arch!r} is not supported here; supported: standard, topk, jumprelu."
    )


def _check_shapes(weights: dict[str, Tensor], d_in: int, d_sae: int, path: Path, cfg: dict) -> None:
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if (
        SAELENS_ARCHITECTURE.get(
            cfg.get(OUR_KEY, {}).get("sae_config", {}).get("architecture"), cfg.get("architecture")
        )
        == "jumprelu"
    ):
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
