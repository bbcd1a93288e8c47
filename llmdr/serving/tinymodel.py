"""A tiny real language model for demos and restore tests: a 2-layer decoder-only transformer run with numpy.

It is built deterministically (fixed seed, fixed vocabulary) and written out as a Hugging Face-style folder:
safetensors shards + index, ``config.json``, a ``tokenizer.json`` made with the ``tokenizers`` library,
``tokenizer_config.json``, ``generation_config.json``, a Jinja chat template and a serving config. Its weights are
random, so its answers are gibberish, but they are *deterministic* gibberish that depends on every part of the
bundle: the weights, the tokenizer, the prompt template and the generation settings. Change or lose any one and
the greedy completion of a golden prompt changes — which is exactly what a restore test must detect.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmdr.common.templates import compile_template, render_template

WORDS = """the a an of to and in is it you that he was for on are with as I his they be at one have this from or
had by hot word but what some we can out other were all there when up use your how said each she which do their
time if will way about many then them write would like so these her long make thing see him two has look more day
could go come did number sound no most people my over know water than call first who may down side been now find
any new work part take get place made live where after back little only round man year came show every good me
give our under name very through just form sentence great think say help low line differ turn cause much mean
before move right boy old too same tell does set three want air well also play small end put home read hand port
large spell add even land here must big high such follow act why ask men change went light kind off need house
picture try us again animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye never last let
thought city tree cross farm hard start might story saw far sea draw left late run while press close night real
life few north open seem together next white children begin got walk example ease paper group always music those
both mark often letter until mile river car feet care second book carry took science eat room friend began idea
fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready
above ever red list though feel talk bird soon body dog family direct pose leave song measure door product black
short numeral class wind question happen complete ship area half rock order fire south problem piece told knew
pass since top whole king space heard best hour better true during hundred five remember step early hold west
ground interest reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay
against pattern slow center love person money serve appear road map rain rule govern pull cold notice voice unit
power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able
pound done beauty drive stood contain front teach week final gave green oh quick develop ocean warm free minute
strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue
object decide surface deep moon island foot system busy test record boat common gold possible plane stead dry
wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill east paint
language among model backup restore region outage recovery snapshot tokenizer weights template replica failover
""".split()
SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 256
    seed: int = 20261127

    def to_json(self, bos: int, eos: int) -> dict:
        return {"architectures": ["LlmdrTinyForCausalLM"], "model_type": "llmdr-tiny",
                "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
                "intermediate_size": self.intermediate_size,
                "max_position_embeddings": self.max_position_embeddings, "bos_token_id": bos, "eos_token_id": eos,
                "torch_dtype": "float32", "tie_word_embeddings": False}


def build_tokenizer_json() -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Sequence, Split, Whitespace

    vocab: dict[str, int] = {}
    for tok in SPECIALS + sorted(set(WORDS)) + list(".,?!'"):
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Sequence([Split(r"<\|[a-z]+\|>|</?s>", behavior="isolated"), Whitespace()])
    tok.add_special_tokens(SPECIALS)
    return tok.to_str(pretty=True)


def _weights(cfg: TinyConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    d, f = cfg.hidden_size, cfg.intermediate_size

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        return (rng.standard_normal(shape) * (scale or shape[0] ** -0.5)).astype(np.float32)

    embed = w(cfg.vocab_size, d, scale=1.0)
    # The output head leans a little towards each token's own embedding, so the model tends to repeat itself
    # unless the generation config's repetition penalty stops it: the settings then visibly shape the answer.
    head = 0.2 * embed * (d ** -0.5 * 4) + 0.8 * w(cfg.vocab_size, d, scale=d ** -0.5 * 4)
    out = {"embed_tokens.weight": embed,
           "embed_positions.weight": w(cfg.max_position_embeddings, d, scale=0.5),
           "norm.weight": np.ones(d, np.float32),
           "lm_head.weight": head.astype(np.float32)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        out |= {p + "attn_norm.weight": np.ones(d, np.float32), p + "mlp_norm.weight": np.ones(d, np.float32),
                p + "q_proj.weight": w(d, d), p + "k_proj.weight": w(d, d), p + "v_proj.weight": w(d, d),
                p + "o_proj.weight": w(d, d), p + "up_proj.weight": w(d, f), p + "down_proj.weight": w(f, d)}
    return out


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict = {"__metadata__": {"format": "np"}}
    offset = 0
    for name in sorted(tensors):
        a = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(tensors):
            fh.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{path.name}: tensor {name} has dtype {meta['dtype']}; the tiny model reads F32 only")
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data, dtype="<f4", count=(b - a) // 4, offset=8 + n + a).reshape(meta["shape"])
    return out


def write_demo_bundle(target: Path) -> list[Path]:
    """Write the tiny model bundle into ``target`` (created if missing); deterministic, a few MB."""
    from tokenizers import Tokenizer

    target.mkdir(parents=True, exist_ok=True)
    tok_json = build_tokenizer_json()
    tok = Tokenizer.from_str(tok_json)
    cfg = TinyConfig(vocab_size=tok.get_vocab_size())
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("<|end|>")
    weights = _weights(cfg)
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    written = []
    for shard, keys in shards.items():
        save_safetensors(target / shard, {k: weights[k] for k in keys})
        written.append(target / shard)
    index = {"metadata": {"total_size": int(sum(a.nbytes for a in weights.values()))},
             "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    texts = {
        "model.safetensors.index.json": json.dumps(index, indent=2, sort_keys=True),
        "config.json": json.dumps(cfg.to_json(bos, eos), indent=2, sort_keys=True),
        "tokenizer.json": tok_json,
        "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "<|end|>", "unk_token": "<unk>",
                                             "model_max_length": cfg.max_position_embeddings,
                                             "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2, sort_keys=True),
        "generation_config.json": json.dumps({"do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.3,
                                              "eos_token_id": eos, "bos_token_id": bos}, indent=2, sort_keys=True),
        "chat_template.jinja": CHAT_TEMPLATE,
        "serving.json": json.dumps({"model_name": "llmdr-tiny", "max_concurrency": 8, "timeout_s": 30,
                                    "max_prompt_tokens": 200}, indent=2, sort_keys=True),
    }
    for name, text in texts.items():
        (target / name).write_text(text + ("\n" if not text.endswith("\n") else ""))
        written.append(target / name)
    (target / "security").mkdir(exist_ok=True)
    (target / "security" / "denylist.txt").write_text("ignore previous instructions\nreveal the system prompt\n")
    written.append(target / "security" / "denylist.txt")
    return written


class TinyModel:
    """Loads a tiny-model bundle folder and completes prompts greedily."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text())
        self.generation = json.loads((folder / "generation_config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.template = (folder / "chat_template.jinja").read_text()
        # the bundle's template is data, not trusted code: compiled and rendered only in Jinja's sandbox
        self._chat_template = compile_template(self.template, folder / "chat_template.jinja")
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        self.w: dict[str, np.ndarray] = {}
        for shard in sorted(set(index["weight_map"].values())):
            self.w |= load_safetensors(folder / shard)
        if self.w["embed_tokens.weight"].shape[0] != self.tokenizer.get_vocab_size():
            raise ValueError(f"{folder}: the tokenizer has {self.tokenizer.get_vocab_size()} tokens but the weights "
                             f"embed {self.w['embed_tokens.weight'].shape[0]}: they do not belong together")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return render_template(self._chat_template, self.folder / "chat_template.jinja", messages=messages,
                               add_generation_prompt=True)

    def _logits(self, ids: list[int]) -> np.ndarray:
        c, w = self.config, self.w
        n = len(ids)
        h = w["embed_tokens.weight"][ids] + w["embed_positions.weight"][:n]
        heads, d = c["num_attention_heads"], c["hidden_size"]
        hd = d // heads
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        for i in range(c["num_hidden_layers"]):
            p = f"layers.{i}."
            x = _rms(h, w[p + "attn_norm.weight"])
            q, k, v = ((x @ w[p + m]).reshape(n, heads, hd).transpose(1, 0, 2)
                       for m in ("q_proj.weight", "k_proj.weight", "v_proj.weight"))
            att = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            h = h + (att @ v).transpose(1, 0, 2).reshape(n, d) @ w[p + "o_proj.weight"]
            x = _rms(h, w[p + "mlp_norm.weight"])
            h = h + np.maximum(x @ w[p + "up_proj.weight"], 0) @ w[p + "down_proj.weight"]
        return _rms(h[-1], w["norm.weight"]) @ w["lm_head.weight"].T

    @property
    def eos_id(self) -> int | None:
        return self.generation.get("eos_token_id", self.config.get("eos_token_id"))

    @property
    def default_max_tokens(self) -> int:
        return int(self.generation.get("max_new_tokens", 16))

    def next_token(self, ids: list[int], out: list[int], *, temperature: float = 0.0, top_p: float = 1.0,
                   rng: np.random.Generator | None = None) -> int:
        """The token after prompt ``ids`` and completion so far ``out``: the bundle's repetition penalty applied, then
        greedy (``temperature`` 0) or sampled at ``temperature`` from the ``top_p`` nucleus with ``rng``."""
        g = self.generation
        penalty = float(g.get("repetition_penalty", 1.0))
        window = self.config["max_position_embeddings"]
        logits = self._logits((ids + out)[-window:]).astype(np.float64)
        logits[self._banned()] = -np.inf  # never emit <s>, role markers or <unk>
        for t in set(ids + out):  # CTRL-style repetition penalty
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        if temperature <= 0:
            return int(np.argmax(logits))
        return sample(logits, temperature, top_p, rng if rng is not None else np.random.default_rng())

    def _banned(self) -> list[int]:
        if not hasattr(self, "_banned_ids"):
            eos = self.eos_id
            self._banned_ids = [i for t, i in self.tokenizer.get_vocab().items() if t in SPECIALS and i != eos]
        return self._banned_ids

    def complete_ids(self, ids: list[int], max_new_tokens: int | None = None) -> tuple[list[int], str]:
        limit = int(max_new_tokens if max_new_tokens is not None else self.default_max_tokens)
        out: list[int] = []
        finish = "length"
        for _ in range(limit):
            nxt = self.next_token(ids, out)
            if nxt == self.eos_id:
                finish = "stop"
                break
            out.append(nxt)
        return out, finish

    def complete(self, prompt: str, max_new_tokens: int | None = None) -> tuple[str, int, int, str]:
        """Greedy completion of a raw prompt: (text, prompt tokens, completion tokens, finish reason)."""
        ids = self.tokenizer.encode(prompt).ids
        out, finish = self.complete_ids(ids, max_new_tokens)
        return self.tokenizer.decode(out), len(ids), len(out), finish

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> tuple[str, int, int, str]:
        return self.complete(self.render_chat(messages), max_new_tokens)


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One token drawn from softmax(logits / temperature), keeping the smallest set of most likely tokens whose
    probabilities add up to ``top_p`` (nucleus sampling; at least one token is always kept)."""
    z = logits / temperature
    z = z - z[np.isfinite(z)].max()
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
    kept = order[:keep]
    return int(rng.choice(kept, p=p[kept] / p[kept].sum()))


def _rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g
