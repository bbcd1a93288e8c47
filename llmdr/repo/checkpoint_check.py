"""Is a training checkpoint folder complete? The trainer's files must be there and parse, so that a checkpoint still
being written (or cut short by a crash) is never taken as a restore point.

Layouts (``checkpoints.layout`` in llmdr.yaml):

- ``hf`` (Hugging Face ``Trainer``): weights (``*.safetensors`` whose header parses and fits the file, or a non-empty
  ``*.bin`` / ``*.pt``; a ``*.index.json`` whose shards exist), ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``
  (non-empty) and ``trainer_state.json`` (parses, has an integer ``global_step``). The Trainer writes
  ``trainer_state.json`` after the weights, optimizer, scheduler and RNG state, so its presence is the trainer's own
  "done" signal and the other checks catch a truncated file.
- ``lightning``: at least one ``*.ckpt`` file, each a complete zip archive (``torch.save``'s format: its central
  directory is written last, so a truncated file does not open).
- ``files``: only the ``require`` patterns (below).
- ``auto`` (default): ``lightning`` when the folder holds a ``*.ckpt``; otherwise what the folder shows of the
  ``hf`` layout: ``trainer_state.json`` and at least one weights file are required and every weights, optimizer,
  scheduler and RNG file present is checked (a trainer run with ``save_only_model`` writes no optimizer).

In every layout each ``require`` pattern (fnmatch, relative to the checkpoint folder) must match a non-empty file.
The check reads headers and JSON only, never a whole weights file, and needs neither torch nor transformers.

:func:`fingerprint` is a cheap digest of the folder's names, sizes and modification times: protect-checkpoints records
it on each snapshot, snapshots a folder again when it changed, and compares two looks ``settle`` apart to see that
nothing is still growing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from llmdr.repo.bundle import safetensors_problem

LAYOUTS = ("auto", "hf", "lightning", "files")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Files of the HF layout that are not model weights (checked on their own)
_HF_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|training_args\.bin)$")


@dataclass(frozen=True)
class CheckpointCheck:
    """The completeness of one checkpoint folder: ``problems`` name the file and why; empty means complete."""

    name: str
    step: int
    layout: str
    problems: list[str] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def complete(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"checkpoint": self.name, "step": self.step, "layout": self.layout, "complete": self.complete,
                "problems": list(self.problems), "fingerprint": self.fingerprint}


def step_of(name: str) -> int:
    """The training step in a checkpoint folder's name: its last number (-1 when it has none)."""
    nums = re.findall(r"\d+", name)
    return int(nums[-1]) if nums else -1


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder``, sorted."""
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out.append(p.relative_to(folder).as_posix())
    return sorted(out)


def fingerprint(folder: Path) -> str:
    """A digest of every file's name, size and modification time (ns) under ``folder``: it changes when the trainer
    writes, grows or rewrites a file. Reads no file content."""
    h = hashlib.sha256()
    for rel in list_files(folder):
        try:
            st = (folder / rel).stat()
        except FileNotFoundError:  # deleted while we looked: the folder is changing
            h.update(f"{rel}\0gone\n".encode())
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def check_checkpoint(folder: Path, layout: str = "auto", require: tuple[str, ...] | list[str] = ()) -> CheckpointCheck:
    """Check ``folder`` against ``layout`` (see the module docstring) and the ``require`` patterns."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    files = list_files(folder)
    used = layout
    if layout == "auto":
        used = "lightning" if any(f.endswith(".ckpt") for f in files) else "hf"
    problems: list[str] = []
    if used == "hf":
        problems += _hf_problems(folder, files, strict=layout == "hf")
    elif used == "lightning":
        problems += _lightning_problems(folder, files)
    for pattern in require:
        hits = [f for f in files if fnmatch.fnmatchcase(f, pattern)]
        if not hits:
            problems.append(f"{pattern}: no file matches this required pattern (checkpoints.require)")
        problems += [f"{f}: is empty" for f in hits if _size(folder / f) == 0]
    if not files:
        problems = ["(folder): holds no files yet"]
    return CheckpointCheck(folder.name, step_of(folder.name), used, problems, fingerprint(folder))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _hf_problems(folder: Path, files: list[str], *, strict: bool) -> list[str]:
    problems: list[str] = []
    state = folder / "trainer_state.json"
    if "trainer_state.json" not in files:
        problems.append("trainer_state.json: missing (the Trainer writes it last: the checkpoint is still being "
                        "written, or the save was cut short)")
    else:
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"trainer_state.json: does not parse as JSON ({exc})")
        else:
            if not isinstance(data, dict) or not isinstance(data.get("global_step"), int):
                problems.append("trainer_state.json: has no integer global_step")
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES) and not _HF_STATE.match(Path(f).name)]
    index = [f for f in files if f.endswith(".index.json")]
    if not weights and not index:
        problems.append("weights: no *.safetensors, *.bin or *.pt model file")
    for f in weights:
        if f.endswith(".safetensors"):
            why = safetensors_problem(folder / f)
            if why:
                problems.append(f"{f}: {why}")
        elif _size(folder / f) == 0:
            problems.append(f"{f}: is empty")
    for f in index:
        try:
            shards = set(json.loads((folder / f).read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            problems.append(f"{f}: is not a weights index ({exc})")
            continue
        base = Path(f).parent
        problems += [f"{f}: points at shard {s}, which is missing" for s in sorted(shards)
                     if (base / s).as_posix().removeprefix("./") not in files]
    state_files = [f for f in files if _HF_STATE.match(Path(f).name)]
    problems += [f"{f}: is empty" for f in state_files if _size(folder / f) == 0]
    if strict:
        for name in ("optimizer.pt", "scheduler.pt"):
            if name not in files:
                problems.append(f"{name}: missing (layout hf; use layout auto for a trainer that saves only the "
                                "model)")
        if not any(re.fullmatch(r"rng_state.*\.pth", Path(f).name) for f in files):
            problems.append("rng_state*.pth: missing (layout hf)")
    return problems


def _lightning_problems(folder: Path, files: list[str]) -> list[str]:
    ckpts = [f for f in files if f.endswith(".ckpt")]
    if not ckpts:
        return ["*.ckpt: no Lightning checkpoint file (layout lightning)"]
    problems = []
    for f in ckpts:
        try:
            with zipfile.ZipFile(folder / f) as zf:
                if not zf.namelist():
                    problems.append(f"{f}: is an empty archive")
        except (zipfile.BadZipFile, OSError) as exc:
            problems.append(f"{f}: is not a complete torch.save archive ({exc}); still being written or truncated")
    return problems
