"""The bundle bench/scale.py measures: thousands of small files around the sample bundle's shards, changed step by
step, with a {relative path: SHA-256} map of what it holds at each step (restores are checked against it)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
from pathlib import Path

from harness import CommandFailed, MiB, sha256_file

SHARDS, SHARD_MIB = 4, 32
# Small files by kind: (share of the small files, folder, suffix, min size, max size).
KINDS = {
    "prompt": (0.20, "prompts", ".jinja", 1 << 10, 16 << 10),
    "security": (0.01, "security/rules", ".txt", 1 << 10, 4 << 10),
    "example": (0.30, "examples", ".json", 1 << 10, 64 << 10),
    "knowledge": (0.49, "knowledge", ".md", 1 << 10, 64 << 10),
}
PER_FOLDER = 100


# the bundle and its expected state -------------------------------------------------------------------------------------
def _content(kind: str, rng: random.Random) -> bytes:
    _, _, _, lo, hi = KINDS[kind]
    size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    text = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
    if kind == "prompt":  # a valid Jinja template: the completeness check parses every one
        return f"You are {{{{ persona }}}}. Context: {text}\n{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}\n".encode()
    if kind == "example":
        return json.dumps({"input": text[: len(text) // 2], "output": text[len(text) // 2:]}).encode()
    return (text + "\n").encode()


class Tree:
    """The bundle on disk and a {relative path: SHA-256 hex} map of what it holds, kept up to date as it changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.digests: dict[str, str] = {}
        self.small: dict[str, str] = {}  # mutable small files: path -> kind
        self.folders: dict[str, list[str]] = {k: [] for k in KINDS}

    def write(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def generate(self, files: int, seed: int, shard_mib: int = SHARD_MIB) -> None:
        from llmdr.devstack.samples import write_sample_bundle

        for p in write_sample_bundle(self.root, shards=SHARDS, shard_size=shard_mib * MiB, seed=seed):
            self.digests[p.relative_to(self.root).as_posix()] = sha256_file(p)
        rng = random.Random(seed)
        n_small = files - len(self.digests)
        counts = {k: int(n_small * share) for k, (share, *_r) in KINDS.items()}
        counts["knowledge"] += n_small - sum(counts.values())
        for kind, n in counts.items():
            _, folder, suffix, _, _ = KINDS[kind]
            for i in range(n):
                sub = f"{folder}/{kind}-{i // PER_FOLDER:03d}"
                if i % PER_FOLDER == 0:
                    self.folders[kind].append(sub)
                rel = f"{sub}/{kind}-{i:05d}{suffix}"
                self.write(rel, _content(kind, rng))
                self.small[rel] = kind

    def mutate(self, step: int, pct: float, seed: int, shard_every: int = 10) -> dict:
        """Change ``pct`` % of the small files (40 % modified, 20 % added, 20 % deleted, 20 % renamed); every 10th
        (``shard_every``) step also overwrite 8 MiB (at most a quarter shard) in the middle of one shard (a
        fine-tune touching one tensor region)."""
        rng = random.Random(seed * 100_003 + step)
        n = max(5, round(len(self.digests) * pct / 100))
        ops = {"modified": int(n * 0.4), "added": int(n * 0.2), "deleted": int(n * 0.2)}
        ops["renamed"] = n - sum(ops.values())
        picked = rng.sample(sorted(self.small), ops["modified"] + ops["deleted"] + ops["renamed"])
        modify, delete = picked[: ops["modified"]], picked[ops["modified"]: ops["modified"] + ops["deleted"]]
        rename = picked[ops["modified"] + ops["deleted"]:]
        for rel in modify:
            self.write(rel, _content(self.small[rel], rng))
        for rel in delete:
            (self.root / rel).unlink()
            del self.digests[rel], self.small[rel]
        for i, rel in enumerate(rename):
            kind = self.small.pop(rel)
            new = f"{rel.rsplit('/', 1)[0]}/{kind}-s{step:03d}r{i:04d}{KINDS[kind][2]}"
            os.rename(self.root / rel, self.root / new)
            self.digests[new] = self.digests.pop(rel)
            self.small[new] = kind
        kinds = list(KINDS)
        weights = [KINDS[k][0] for k in kinds]
        for i in range(ops["added"]):
            kind = rng.choices(kinds, weights)[0]
            rel = f"{rng.choice(self.folders[kind])}/{kind}-s{step:03d}a{i:04d}{KINDS[kind][2]}"
            self.write(rel, _content(kind, rng))
            self.small[rel] = kind
        if step % shard_every == 0:
            shards = sorted(r for r in self.digests if r.endswith(".safetensors"))
            rel = shards[(step // shard_every) % len(shards)]
            path = self.root / rel
            with open(path, "r+b") as fh:
                fh.seek(path.stat().st_size // 2)
                fh.write(rng.randbytes(min(8 * MiB, path.stat().st_size // 4)))
            self.digests[rel] = sha256_file(path)
            ops["shard_region_rewritten"] = rel
        return ops

    def total_bytes(self) -> int:
        return sum((self.root / r).stat().st_size for r in self.digests)



def tree_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in sorted(digests.items())).encode()).hexdigest()


def check_identical(restored: Path, expected: dict[str, str]) -> dict:
    """SHA-256 of every restored file against the expected map; raises unless the trees are identical."""
    got = {}
    for dirpath, _, names in os.walk(restored):
        for name in names:
            p = Path(dirpath) / name
            got[p.relative_to(restored).as_posix()] = sha256_file(p)
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        differ = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise CommandFailed(f"{restored} is not the expected tree: missing {missing[:5]} ({len(missing)}), extra "
                            f"{extra[:5]} ({len(extra)}), different {differ[:5]} ({len(differ)})")
    return {"files": len(got), "identical": True, "tree_digest": tree_digest(got)}

