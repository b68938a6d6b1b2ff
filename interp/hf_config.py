"""TransformerLens config fields from a Hugging Face model config, for load_model (interp.models).

TransformerLens converts the Gemma, OLMo and Phi families' sizes only from official model names; for any other model
of those families (a local directory, a GGUF file) the fields are read from the model's own config here. Every other
architecture goes through TransformerLens's own converter, and one it cannot convert is an UnsupportedArchitectureError.
"""

from __future__ import annotations

from pathlib import Path

from interp.errors import ModelLoadError


class UnsupportedArchitectureError(ModelLoadError):
    """TransformerLens cannot convert this architecture (load_model then takes the nnsight route)."""


GEMMA_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")


def tl_config_from_hf(hf_config, config_dir: str, source: Path) -> dict:
    """TransformerLens config fields for a Hugging Face config.

    TransformerLens 3.9 converts the Gemma families only from official model names (fixed tables of
    sizes); for any other Gemma, Gemma 2 or Gemma 3 (a local directory, a GGUF file) the fields are
    read from the model's own config here, and TransformerLens's Gemma weight conversion does the rest.
    Every other architecture goes through TransformerLens's own converter.
    """
    import transformer_lens.loading_from_pretrained as tl_loading

    architecture = hf_config.architectures[0]
    if architecture in GEMMA_ARCHITECTURES:
        return _gemma_config(hf_config, architecture)
    if architecture == "PhiForCausalLM":
        return _phi_config(hf_config)
    if architecture in ("OlmoForCausalLM", "Olmo2ForCausalLM"):
        return _olmo_config(hf_config, architecture)
    try:
        return tl_loading.convert_hf_model_config(config_dir)
    except Exception as exc:
        error = UnsupportedArchitectureError(
            f"TransformerLens cannot convert architecture {architecture!r} from {source}. "
            "Use interp.nnsight_model.NNsightModel for architectures TransformerLens does not support."
        )
        error.architecture = architecture
        raise error from exc


def _rope_theta(hf_config, kind: str | None = None, default: float = 10000.0) -> float:
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict):
        if kind is not None and isinstance(params.get(kind), dict):
            return params[kind].get("rope_theta", default)
        if "rope_theta" in params:
            return params["rope_theta"]
    legacy = {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"}.get(kind or "full_attention")
    return getattr(hf_config, legacy, None) or getattr(hf_config, "rope_theta", None) or default


def _sizes(c, d_head: int) -> dict:
    """The size fields every reader takes the same way from a Hugging Face config."""
    return {
        "d_model": c.hidden_size,
        "d_head": d_head,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "d_vocab": c.vocab_size,
    }


def _gemma_config(c, architecture: str) -> dict:
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    cfg = {
        **_sizes(c, d_head),
        "eps": c.rms_norm_eps,
        "act_fn": getattr(c, "hidden_activation", None) or c.hidden_act,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_base": _rope_theta(c, "full_attention"),
        "use_attn_scale": True,
        "n_key_value_heads": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        "gated_mlp": True,
        "final_rms": True,
        "initializer_range": getattr(c, "initializer_range", 0.02),
        "original_architecture": architecture,
    }
    if architecture == "GemmaForCausalLM":
        return cfg
    if getattr(c, "query_pre_attn_scalar", None):
        cfg["attn_scale"] = float(c.query_pre_attn_scalar) ** 0.5  # HF scales scores by query_pre_attn_scalar ** -0.5
    cfg["use_normalization_before_and_after"] = True
    layer_types = getattr(c, "layer_types", None)
    if getattr(c, "sliding_window", None) and layer_types:
        cfg.update(
            use_local_attn=True,
            window_size=c.sliding_window,
            attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types],
        )
    for ours, theirs in (
        ("attn_scores_soft_cap", "attn_logit_softcapping"),
        ("output_logits_soft_cap", "final_logit_softcapping"),
    ):
        if getattr(c, theirs, None):
            cfg[ours] = float(getattr(c, theirs))
    if architecture == "Gemma3ForCausalLM":
        cfg["use_qk_norm"] = True
        cfg["rotary_base_local"] = _rope_theta(c, "sliding_attention")
    return cfg


def _olmo_config(c, architecture: str) -> dict:
    """OLMo and OLMo 2: TL has their weight conversions but reads their sizes only from official names."""
    d_head = c.hidden_size // c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    cfg = {
        **_sizes(c, d_head),
        "act_fn": c.hidden_act,
        "initializer_range": c.initializer_range,
        "rotary_base": _rope_theta(c),
        "rotary_dim": d_head,
        "attn_types": ["global"] * c.num_hidden_layers,
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "original_architecture": architecture,
    }
    if n_kv != c.num_attention_heads:
        cfg["n_key_value_heads"] = n_kv
    if architecture == "OlmoForCausalLM":
        cfg.update(
            normalization_type="LN", eps=1e-5, clip_qkv=getattr(c, "clip_qkv", None)
        )  # HF's OLMo LayerNorm: no weights, eps 1e-5
    else:
        cfg.update(normalization_type="RMS", eps=c.rms_norm_eps)
    return cfg


def _phi_config(c) -> dict:
    """Phi (1, 1.5, 2): TL's table reads partial_rotary_factor, which transformers 5 keeps inside rope_parameters."""
    d_head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    factor = getattr(c, "partial_rotary_factor", None) or rope.get("partial_rotary_factor", 0.5)
    return {
        **_sizes(c, d_head),
        "eps": c.layer_norm_eps,
        "act_fn": c.hidden_act,
        "initializer_range": c.initializer_range,
        "normalization_type": "LN",
        "positional_embedding_type": "rotary",
        "rotary_base": _rope_theta(c),
        "rotary_dim": round(factor * d_head),
        "use_attn_scale": True,
        "parallel_attn_mlp": True,
        "original_architecture": "PhiForCausalLM",
    }
