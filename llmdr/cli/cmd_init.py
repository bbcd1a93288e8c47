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
    """Write a commented llmdr.yaml for BUNDLE_DIR with two local regions."""
    from llmdr.repo.scaffold import render_config

    if config.exists() and not force:
        raise LlmdrError(f"{config} already exists; pass --force to overwrite it")
    if not bundle_dir.is_dir():
        raise LlmdrError(f"{bundle_dir} is not a folder; give the model bundle's folder")
    text = render_config(bundle_dir, name=name, config_path=config, primary_port=primary_port,
                         secondary_port=secondary_port, router_port=router_port)
    from llmdr.config import parse_config

    parse_config(text, source=config)  # never write a config llmdr itself would refuse
    from llmdr.common.files import atomic_write

    atomic_write(config, text, mode=0o644)  # temp file O_EXCL|O_NOFOLLOW: never written through a planted link
    typer.echo(f"wrote {config}; next: `llmdr stack up` then `llmdr snapshot`")


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
    shard_mb: Annotated[int, typer.Option(min=1, help="Size of each shard in MiB.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for the tensor bytes.")] = 0,
) -> None:
    """Write a synthetic model bundle (safetensors shards, tokenizer, configs, templates) for trying llmdr."""
    from llmdr.devstack.samples import MiB, write_sample_bundle

    files = write_sample_bundle(target, shards=shards, shard_size=shard_mb * MiB, seed=seed)
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
