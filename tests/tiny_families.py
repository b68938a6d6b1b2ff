"""Tiny random-weight Hugging Face models of each family TransformerLens converts, written locally (no hub).

`write_family(name, folder)` saves config.json, safetensors weights and a small byte-level BPE tokenizer
trained here on a fixed text, so `load_model(folder)` and `AutoModelForCausalLM.from_pretrained(folder)`
read the same model. Weights use a larger init range than the defaults so that logits vary.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320
TEXT = [
    "The capital of France is Paris. The capital of Spain is Madrid. " * 4,
    "A quick brown fox jumps over the lazy dog 0123456789.",
]
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.15,
    tie_word_embeddings=False,
)


def _configs():
    import transformers as t

    gqa = dict(COMMON, num_key_value_heads=2)
    return {
        "llama": (t.LlamaConfig, gqa),
        "mistral": (t.MistralConfig, dict(gqa, sliding_window=None)),
        "qwen2": (t.Qwen2Config, gqa),
        "qwen3": (t.Qwen3Config, dict(gqa, head_dim=16)),
        "gemma": (t.GemmaConfig, dict(gqa, head_dim=16, hidden_act="gelu_pytorch_tanh")),
        "gemma2": (
            t.Gemma2Config,
            dict(
                gqa,
                tie_word_embeddings=True,
                head_dim=16,
                query_pre_attn_scalar=16,
                sliding_window=8,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
            ),
        ),
        "gemma3": (
            t.Gemma3TextConfig,
            dict(
                gqa,
                num_hidden_layers=3,
                head_dim=16,
                query_pre_attn_scalar=16,
                sliding_window=8,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            ),
        ),
        "phi3": (t.Phi3Config, dict(COMMON, num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        "gpt2": (
            t.GPT2Config,
            dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.15),
        ),
        "gpt_neox": (t.GPTNeoXConfig, dict(COMMON, rotary_pct=0.25, use_parallel_residual=True)),
        "gpt_neo": (
            t.GPTNeoConfig,
            dict(
                vocab_size=VOCAB,
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                max_position_embeddings=128,
                attention_types=[[["global", "local"], 1]],
                window_size=8,
                initializer_range=0.15,
            ),
        ),
        "opt": (
            t.OPTConfig,
            dict(
                vocab_size=VOCAB,
                hidden_size=64,
                num_hidden_layers=2,
                ffn_dim=128,
                num_attention_heads=4,
                max_position_embeddings=128,
                word_embed_proj_dim=64,
                init_std=0.15,
            ),
        ),
        "gptj": (
            t.GPTJConfig,
            dict(
                vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, rotary_dim=8, initializer_range=0.15
            ),
        ),
        "bloom": (t.BloomConfig, dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, initializer_range=0.15)),
        "phi": (t.PhiConfig, dict(COMMON, partial_rotary_factor=0.5)),
        "mixtral": (t.MixtralConfig, dict(gqa, num_local_experts=4, num_experts_per_tok=2)),
        "olmo": (t.OlmoConfig, dict(COMMON)),
        "olmo2": (t.Olmo2Config, dict(COMMON)),
        "olmo3": (t.Olmo3Config, dict(gqa, sliding_window=8, layer_types=["sliding_attention", "full_attention"])),
        # Not converted by TransformerLens 3.9 (Llama layout with scaling multipliers): load_model takes the nnsight route.
        "granite": (
            t.GraniteConfig,
            dict(gqa, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0),
        ),
    }


FAMILIES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi",
    "phi3",
    "gpt2",
    "gpt_neox",
    "gpt_neo",
    "gptj",
    "opt",
    "bloom",
    "olmo",
    "olmo2",
    "olmo3",
)


def write_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token=None, pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return fast


def write_family(name: str, folder: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_class, fields = _configs()[name]
    config = config_class(**fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms away from their init (1 or 0) so folding them is tested too
        gen = torch.Generator().manual_seed(seed + 1)
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln" in pname:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


GGUF_FAMILIES = ("llama", "qwen2", "gemma2", "gemma3")


def _permute_qk(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary row order for Q/K (transformers undoes it when it reads a llama GGUF)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(name: str, hf_folder: Path, path: Path) -> Path:
    """Write the tiny HF model of `name` (from write_family) as an f32 GGUF file with the gguf package's writer.

    Tensor names from gguf's own name map; metadata and the byte-level BPE tokenizer ("gpt2" model) as
    llama.cpp's converter writes them for these architectures.
    """
    import json

    import gguf
    from safetensors.torch import load_file

    config = json.loads((Path(hf_folder) / "config.json").read_text())
    tokenizer = json.loads((Path(hf_folder) / "tokenizer.json").read_text())
    arch = {
        "llama": gguf.MODEL_ARCH.LLAMA,
        "qwen2": gguf.MODEL_ARCH.QWEN2,
        "gemma2": gguf.MODEL_ARCH.GEMMA2,
        "gemma3": gguf.MODEL_ARCH.GEMMA3,
    }[name]
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    n_layers, n_head, n_kv = config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(f"tiny-{name}")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    if name in ("llama", "qwen2"):
        writer.add_rope_dimension_count(config["hidden_size"] // n_head)
        writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    else:
        writer.add_rope_freq_base(rope.get("full_attention", rope).get("rope_theta", 1e6))
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
        writer.add_sliding_window(config["sliding_window"])
    vocab = tokenizer["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(vocab["<bos>"])
    writer.add_eos_token_id(vocab["<eos>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    names = gguf.get_tensor_name_map(arch, n_layers)
    for hf_name, tensor in load_file(str(Path(hf_folder) / "model.safetensors")).items():
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = tensor.float()
        if name == "llama" and stem.endswith("q_proj"):
            data = _permute_qk(data, n_head)
        elif name == "llama" and stem.endswith("k_proj"):
            data = _permute_qk(data, n_kv)
        if name.startswith("gemma") and "norm" in stem:
            data = data + 1  # llama.cpp stores Gemma norms as 1 + w
        writer.add_tensor(f"{gguf_name}.{suffix}", data.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
