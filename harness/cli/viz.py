"""``harness viz``: what encoders learned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from harness.cli.common import StoreOpt, out
from harness.cli.common import open_store as _store
from harness.cli.data import open_dataset as _dataset

viz_app = typer.Typer(no_args_is_help=True, help="Visualise what encoders learned.")


@viz_app.command("similarity")
def viz_similarity(
        encoder: Annotated[list[str], typer.Option("--encoder", help="an encoder.pt (with its encoder.json), a stage folder holding one, or a stage key (prefix) in the store; repeatable, one column each")],
        image: Annotated[str, typer.Option("--image", help="sample id in the dataset, e.g. fold1/0003")],
        points: Annotated[str, typer.Option("--points", help='anchor pixels "x,y;x,y" (x = column, y = row); one row each')],
        dataset: Annotated[Optional[str], typer.Option("--dataset", help="labeled dataset plugin that holds the image (or --spec)")] = None,
        spec: Annotated[Optional[Path], typer.Option("--spec", help="take the dataset and its options from this spec (the one the encoders came from)")] = None,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="a dataset option, e.g. --set dataset.image_size=256 (repeatable; the dataset. prefix is optional; on top of --spec's)")] = None,
        size: Annotated[Optional[int], typer.Option("--size", help="encoder input side in px (default 4x the image side, as the thesis's 224 -> 896 px; rounded to a multiple of 32)")] = None,
        output: Annotated[Optional[Path], typer.Option("--output", help="PNG to write (default: similarity-IMAGE.png)")] = None,
        store: StoreOpt = None) -> None:
    """Point-similarity maps (thesis Fig. 4.2/4.3): the cosine similarity of each anchor's
    feature to every position of each encoder's last feature map, beside the ground truth."""
    from harness.plugins import get_registry
    from harness.viz.command import similarity_command
    from harness.viz.inputs import dataset_options, spec_dataset

    if spec is None and dataset is None:
        raise click.UsageError("give --dataset NAME or --spec SPEC (the dataset that holds the image)")
    ds = (spec_dataset(spec, dataset, set_, _store(store), get_registry()) if spec
          else _dataset(dataset, store, dataset_options(set_)))
    path = similarity_command(encoder, ds, image, points, size, output, _store(store).root)
    out.print(str(path), markup=False)
