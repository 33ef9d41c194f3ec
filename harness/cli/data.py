"""``moe-harness data``: prepare an imagefolder as shards, and verify them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Datasets: prepare and verify shards.")

@app.command("prepare")
def data_prepare(
    src: Annotated[Path, typer.Argument(help="An imagefolder: SRC/train/CLASS/*, SRC/val/...")],
    out: Annotated[Path, typer.Argument(help="An empty folder for the shards")],
    resolution: Annotated[int, typer.Option(help="Square side in pixels (shorter side, "
                                                 "center crop)", min=1)] = 256,
    shard_size: Annotated[int, typer.Option(help="Images per shard", min=1)] = 1024,
    workers: Annotated[int | None, typer.Option(
        help="Decoding processes (default: the CPUs this process may use)", min=1)] = None,
) -> None:
    """Decode an imagefolder once into fixed-size uint8 shards with a manifest (classes,
    counts, resolution, checksums); train on them with data: {name: prepared, path: OUT}."""
    from harness.data.prepared import prepare

    manifest = prepare(src, out, resolution, shard_size=shard_size, workers=workers)
    splits = manifest["splits"]
    print(f"{out}: {splits['train']['count']} train, {splits['test']['count']} test images, "
          f"{len(manifest['classes'])} classes, {resolution} px; checksum "
          f"{manifest['checksum'][:16]}")


@app.command("verify")
def data_verify(
    path: Annotated[Path, typer.Argument(help="A folder written by data prepare")],
) -> None:
    """Recompute every shard's checksum against the manifest."""
    from harness.data.prepared import verify

    manifest = verify(path)
    print(f"{path}: ok ({sum(len(s['shards']) for s in manifest['splits'].values())} shards, "
          f"checksum {manifest['checksum'][:16]})")

