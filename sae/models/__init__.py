"""SAE architectures, registered by name: relu, topk, batchtopk, jumprelu, gated, matryoshka, transcoder, skip_transcoder."""

from __future__ import annotations

from interp.errors import InterpError, did_you_mean
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput
from sae.models.batchtopk import BatchTopKConfig, BatchTopKSae
from sae.models.gated import GatedConfig, GatedSae
from sae.models.jumprelu import JumpReluConfig, JumpReluSae
from sae.models.matryoshka import MatryoshkaConfig, MatryoshkaSae
from sae.models.relu import ReluConfig, ReluSae
from sae.models.topk import TopKConfig, TopKSae
from sae.models.transcoder import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig

ARCHITECTURES: dict[str, tuple[type[SaeConfig], type[Sae]]] = {}


def register(config_class: type[SaeConfig], sae_class: type[Sae]) -> None:
    name = config_class.architecture
    if name in ARCHITECTURES:
        raise InterpError(f"SAE architecture {name!r} is already registered (by {ARCHITECTURES[name][1].__name__}).")
    ARCHITECTURES[name] = (config_class, sae_class)


for _pair in (
    (ReluConfig, ReluSae),
    (TopKConfig, TopKSae),
    (BatchTopKConfig, BatchTopKSae),
    (JumpReluConfig, JumpReluSae),
    (GatedConfig, GatedSae),
    (MatryoshkaConfig, MatryoshkaSae),
    (TranscoderConfig, Transcoder),
    (SkipTranscoderConfig, SkipTranscoder),
):
    register(*_pair)


def config_class(architecture: str) -> type[SaeConfig]:
    if architecture not in ARCHITECTURES:
        raise InterpError(
            f"Unknown SAE architecture {architecture!r}.{did_you_mean(architecture, ARCHITECTURES)} Known: {', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[architecture][0]


def make_config(architecture: str, **fields) -> SaeConfig:
    """The typed config of `architecture` from keyword fields (unknown fields are an error naming the valid ones)."""
    cls = config_class(architecture)
    valid = set(cls.__dataclass_fields__)
    unknown = [f for f in fields if f not in valid]
    if unknown:
        raise InterpError(
            f"{cls.__name__} has no field(s) {unknown}.{did_you_mean(unknown[0], valid)} Fields: {', '.join(sorted(valid))}."
        )
    return cls(**fields)


def config_from_dict(d: dict) -> SaeConfig:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "architecture"}
    return make_config(d.get("architecture", ""), **fields)


def build_sae(cfg: SaeConfig) -> Sae:
    return ARCHITECTURES[cfg.architecture][1](cfg)


__all__ = [
    "ARCHITECTURES",
    "BatchTopKConfig",
    "BatchTopKSae",
    "GatedConfig",
    "GatedSae",
    "JumpReluConfig",
    "JumpReluSae",
    "LossScale",
    "MatryoshkaConfig",
    "MatryoshkaSae",
    "ReluConfig",
    "ReluSae",
    "Sae",
    "SaeConfig",
    "SkipTranscoder",
    "SkipTranscoderConfig",
    "StepOutput",
    "TopKConfig",
    "TopKSae",
    "Transcoder",
    "TranscoderConfig",
    "build_sae",
    "config_from_dict",
    "make_config",
    "register",
]
