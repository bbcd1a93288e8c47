"""`llmdr init`, `check`, `demo-bundle`, `sample-bundle`: start a project (its config, a bundle to try it on) and
check a bundle is complete before it is protected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg
from llmdr.errors import LlmdrError, UsageError


@app.command()
def init(
    bundle_dir: Annotated[Path, typer.Argument(help="The model bundle folder to protect.")],
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the folder name).")] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="Where to write the config.")] = Path("llmdr.yaml"),
    primary_port: Annotated[int, typer.Option(help="S3 port of the local primary region.")] = 18333,
    secondary_port: Annotated[int, typer.Option(help="S3 port of the local secondary region.")] = 18433,
    router_port: Annotated[int, typer.Option(help="Port of the local router (its admin API: the next one).")] = 18300,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config file.")] = False,
) -> None:
    """Write a commented llmdr.yaml for BUNDLE_DIR with two local regions and a retention policy; in a git
    repository also add the state folder (.llmdr/) to the .gitignore next to it."""
    from llmdr.repo.scaffold import render_config

    if config.exists() and not force:
        raise LlmdrError(f"{config} already exists; pass --force to overwrite it")
    if not bundle_dir.is_dir():
        raise LlmdrError(f"{bundle_dir} is not a folder; give the model bundle's folder")
    text = render_config(bundle_dir, name=name, config_path=config, primary_port=primary_port,
                         secondary_port=secondary_port, router_port=router_port)
    from llmdr.config import parse_config

    cfg = parse_config(text, source=config)  # never write a config llmdr itself would refuse
    from llmdr.common.files import atomic_write

    atomic_write(config, text, mode=0o644)  # temp file O_EXCL|O_NOFOLLOW: never written through a planted link
    typer.echo(f"wrote {config}")
    ignored = ignore_state_dir(config.absolute().parent, cfg.state_dir)
    if ignored:
        typer.echo(ignored)
    typer.echo("next: `llmdr stack up` then `llmdr snapshot`")


def ignore_state_dir(folder: Path, state_dir: str) -> str | None:
    """In a git repository (FOLDER or a folder above it has ``.git``), make sure FOLDER/.gitignore ignores the state
    folder (keys, caches, the local stack's data): created if missing, the line added once. git itself is not run
    (a repository's config can make git run its hooks). Returns what was done, or None outside git; a .gitignore
    that is not a regular file is left alone, with a warning on stderr."""
    import os
    import stat

    from llmdr.common.files import atomic_write

    here = folder.resolve()
    if not any((d / ".git").exists() for d in (here, *here.parents)):
        return None
    name = state_dir.strip("/")
    if os.path.isabs(state_dir) or not name or ".." in Path(name).parts:
        return None  # outside this folder: nothing here to ignore
    path = folder / ".gitignore"
    entry = f"{name}/"
    yourself = (f"; add the line {entry} to your .gitignore yourself, so git never records the keys and state "
                "kept there")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # never read through a link or hang on a FIFO
    except FileNotFoundError:
        old, mode = b"", 0o644
    except OSError as exc:
        why = "is a symbolic link, left as it is" if path.is_symlink() else f"cannot be read ({exc.strerror})"
        typer.echo(f"WARNING: {path} {why}{yourself}", err=True)
        return None
    else:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                typer.echo(f"WARNING: {path} is not a regular file{yourself}", err=True)
                return None
            old, mode = f.read(), st.st_mode & 0o777
    wanted = {name, f"{name}/", f"/{name}", f"/{name}/", f"{name}/*", f"/{name}/*", f"**/{name}", f"**/{name}/"}
    if any(line.strip().decode(errors="replace") in wanted for line in old.splitlines()):
        return f"{path} already ignores {entry}"
    sep = b"" if not old or old.endswith(b"\n") else b"\n"
    atomic_write(path, old + sep + f"# llmdr state: keys, caches, the local stack's data\n{entry}\n".encode(),
                 mode=mode)
    return f"{'added' if old else 'wrote'} {entry} to {path}"


@app.command("demo-bundle")
def demo_bundle(
    target: Annotated[Path, typer.Argument(help="Folder to write the tiny model bundle into.")],
    prompt: Annotated[Optional[str], typer.Option(help="Also load the model and answer this chat message.")] = None,
) -> None:
    """Write a tiny real model (2-layer numpy transformer, ~1.5 MB): safetensors shards, tokenizer, configs,
    chat template, serving config. Its answers are gibberish but depend on every one of those files."""
    from llmdr.serving.tinymodel import TinyModel, write_demo_bundle

    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} is not empty; choose a new folder")
    files = write_demo_bundle(target)
    typer.echo(f"wrote {len(files)} files into {target}")
    if prompt is not None:
        text, n_in, n_out, finish = TinyModel(target).chat([{"role": "user", "content": prompt}])
        typer.echo(f"> {prompt}\n{text}\n({n_in} prompt tokens, {n_out} completion tokens, finish: {finish})")


@app.command("sample-bundle")
def sample_bundle(
    target: Annotated[Path, typer.Argument(help="Folder to write the sample bundle into.")],
    shards: Annotated[int, typer.Option(min=1, help="Number of safetensors shards.")] = 2,
    shard_mb: Annotated[int, typer.Option(min=1, help="Size of each shard in MB (10^6 bytes).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for the tensor bytes.")] = 0,
) -> None:
    """Write a synthetic model bundle (safetensors shards, tokenizer, configs, templates) for trying llmdr."""
    from llmdr.devstack.samples import write_sample_bundle

    files = write_sample_bundle(target, shards=shards, shard_size=shard_mb * 1_000_000, seed=seed)
    typer.echo(f"wrote {len(files)} files into {target}")


@app.command()
def check(
    folder: Annotated[Optional[Path], typer.Argument(help="Bundle folder (default: bundle.path).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the bundle is complete: every required component present, non-empty and parsable."""
    from llmdr.repo.ops import check as do_check

    cfg = load_cfg()
    report = do_check(cfg, folder)
    lines = [f"{'component':<18} {'req':<4} {'files':>5}  status"]
    for c in report.components:
        status = "ok" if c.ok else "; ".join(p.message if p.file is None else f"{p.file}: {p.message}"
                                            for p in c.problems)
        lines.append(f"{c.kind.value:<18} {'yes' if c.required else 'no':<4} {len(c.files):>5}  {status}")
    lines.append(f"bundle at {report.root}: {'complete' if report.complete else 'INCOMPLETE'}")
    emit(as_json, report.to_json(), "\n".join(lines))
    if not report.complete:
        raise typer.Exit(4)
