"""A synthetic model bundle for demos, tests and benchmarks: safetensors shards (valid headers, seeded random
tensor data), a shard index, tokenizer and config files, a chat template and a serving config.

It is laid out like a Hugging Face model folder but is not a working model; ``llmdr demo-bundle`` (with the
tiny real model) comes with the bundle-spec work.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

MiB = 1024 * 1024


def _write_safetensors(path: Path, size: int, rng: random.Random, tensors: int = 4) -> None:
    """Write a safetensors file of about ``size`` bytes: an 8-byte header length, the JSON header, F16 data."""
    per = max(2, (size // tensors) // 2 * 2)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in range(tensors):
        n = per // 2
        header[f"model.layers.{i}.weight"] = {"dtype": "F16", "shape": [n], "data_offsets": [offset, offset + per]}
        offset += per
    hdr = json.dumps(header, separators=(",", ":")).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hdr)))
        fh.write(hdr)
        left = offset
        while left:
            n = min(left, 8 * MiB)
            fh.write(rng.randbytes(n))
            left -= n


def word_tokenizer_json(vocab_size: int) -> str:
    """A real (if simple) tokenizer, built with the tokenizers library: word-level, whitespace-split."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return tok.to_str(pretty=True)


def write_sample_bundle(target: Path, *, shards: int = 2, shard_size: int = 8 * MiB, seed: int = 0) -> list[Path]:
    """Write the sample bundle into ``target`` (created if missing) and return the files written."""
    target.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written: list[Path] = []
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        _write_safetensors(target / name, shard_size, rng)
        for t in range(4):
            weight_map[f"model.layers.{i * 4 + t}.weight"] = name
        written.append(target / name)
    files = {
        "model.safetensors.index.json": {"metadata": {"total_size": shards * shard_size}, "weight_map": weight_map},
        "config.json": {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": shards * 4,
                        "vocab_size": 4096, "model_type": "llama"},
        "generation_config.json": {"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 256, "do_sample": False},
        "tokenizer_config.json": {"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 4096,
                                  "chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"},
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "serving.json": {"endpoint": "/v1/chat/completions", "max_concurrency": 32, "timeout_s": 30},
    }
    for name, content in files.items():
        p = target / name
        p.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        written.append(p)
    (target / "tokenizer.json").write_text(word_tokenizer_json(4096))
    written.append(target / "tokenizer.json")
    prompts = target / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "system.jinja").write_text("You are the support assistant for {{ product }}. Answer briefly.\n")
    (prompts / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n")
    security = target / "security"
    security.mkdir(exist_ok=True)
    (security / "denylist.txt").write_text("ignore previous instructions\nreveal the system prompt\n")
    written += [prompts / "system.jinja", prompts / "chat_template.jinja", security / "denylist.txt"]
    return written
