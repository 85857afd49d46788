"""Point-similarity maps (``harness viz similarity``, thesis Figures 4.2/4.3): the cosine map of
a known feature map, the anchor's own similarity, the figure, and the command's one-line errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from support import run_cli
from harness.errors import DataError, SpecError
from harness.viz import similarity as sim
from harness.viz.inputs import resolve_encoder

DATASET = ["--dataset", "synthetic", "--set", "dataset.image_size=32", "--set", "images_per_fold=3",
           "--set", "unlabeled_images=0"]
HALF = {"mean": [0.5] * 3, "std": [0.5] * 3}


# --- the computation ---------------------------------------------------------------------------
def two_colour_image(side: int = 32) -> torch.Tensor:
    """Left half red, right half blue: (3, side, side)."""
    image = torch.zeros(3, side, side)
    image[0, :, : side // 2] = 1.0
    image[2, :, side // 2:] = 1.0
    return image


@pytest.mark.parametrize("size", [None, (64, 64)])
def test_known_feature_map_gives_the_expected_cosine_map(size):
    # The "encoder" has two features, "redder than blue" and "bluer than red", averaged over 8 x 8
    # blocks (stride 8): every position in the anchor's half has cosine 1 and every position in
    # the other half cosine 0 (also after the input is upsampled, which blends the two colours
    # at the border); between them the map ramps as bilinear upsampling (align_corners=False)
    # of that step.
    def encoder(x):
        diff = torch.stack([x[:, 0] - x[:, 2], x[:, 2] - x[:, 0]], 1)
        return torch.nn.functional.avg_pool2d(torch.relu(diff), 8)

    image = two_colour_image()
    grid = (size[0] if size else 32) // 8
    src = (np.arange(32) + 0.5) * grid / 32 - 0.5  # source coordinate of each output column
    expected = np.broadcast_to(np.clip(grid / 2 - src, 0.0, 1.0), (32, 32))
    red = sim.similarity_map(encoder, image, (3, 20), size)
    blue = sim.similarity_map(encoder, image, (30, 2), size)
    assert red.shape == blue.shape == (32, 32) and red.dtype == np.float32
    np.testing.assert_allclose(red, expected, atol=1e-6)
    np.testing.assert_allclose(blue, 1.0 - expected, atol=1e-6)
    assert red[20, 3] == pytest.approx(1.0) and red.max() == pytest.approx(1.0)


def test_encoder_returning_a_list_contributes_its_last_map():
    features = torch.randn(1, 5, 4, 4)

    def encoder(x):  # smp encoders return every stage's map; the last one is used
        return [x, torch.zeros(1, 2, 16, 16), features]

    got = sim.feature_map(encoder, torch.zeros(3, 32, 32))
    np.testing.assert_allclose(got.numpy(), (features[0] / features[0].norm(dim=0)).numpy(), atol=1e-6)
    cos = sim.cosine_grid(got, (1, 2)).numpy()
    f = features[0].numpy()
    ref = np.einsum("chw,c->hw", f, f[:, 1, 2]) / (np.linalg.norm(f, axis=0) * np.linalg.norm(f[:, 1, 2]))
    np.testing.assert_allclose(cos, ref, atol=1e-5)


def test_anchor_is_the_maximum_and_the_map_has_the_image_shape():
    from harness.engine.model import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("resnet18")
    image = torch.rand(3, 32, 48)
    point = (37, 9)
    shape = sim.input_shape((32, 48), None)
    assert shape == (128, 192)  # 4x, as the thesis's 224 -> 896 px
    features = sim.feature_map(encoder, image, shape)
    assert features.shape[-2:] == (4, 6)
    cell = sim.anchor_cell(point, (32, 48), (4, 6))
    assert cell == (1, 4)
    grid = sim.cosine_grid(features, cell)
    assert grid[cell].item() == pytest.approx(1.0, abs=1e-5)
    assert grid.max().item() == pytest.approx(1.0, abs=1e-5) and grid.min().item() >= -1.0 - 1e-5
    full = sim.similarity_map(encoder, image, point, shape)
    assert full.shape == (32, 48) and full.max() <= 1.0 and np.isfinite(full).all()
    np.testing.assert_allclose(full, sim.cosine_map(features, point, (32, 48)))


def test_anchor_cells_input_shapes_and_points():
    assert sim.anchor_cell((0, 0), (32, 32), (4, 4)) == (0, 0)
    assert sim.anchor_cell((31.9, 31.9), (32, 32), (4, 4)) == (3, 3)
    assert sim.anchor_cell((8, 7.99), (32, 32), (4, 4)) == (0, 1)
    assert sim.input_shape((256, 256), 1000) == (992, 992)
    assert sim.input_shape((20, 20), 10) == (32, 32)
    assert sim.parse_points(" 1,2; 3.5 ,4;") == [(1.0, 2.0), (3.5, 4.0)]
    for bad in ("1;2", "a,b", "1,2,3", "", ";", "nan,1"):
        with pytest.raises(SpecError, match="--points"):
            sim.parse_points(bad)
    sim.check_points([(0, 0), (31, 15)], (16, 32))
    with pytest.raises(SpecError, match=r"32,0 outside the image \(32 x 16 px"):
        sim.check_points([(32, 0)], (16, 32))


def test_figure_is_a_png(tmp_path):
    from harness.viz.plot import plot_similarity

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    classes = np.zeros((32, 32), np.uint8)
    classes[4:10, 4:10] = 2
    maps = [[rng.random((32, 32)).astype(np.float32) for _ in range(2)] for _ in range(3)]
    path = plot_similarity(image, classes, ["a", "b"], [(5, 5), (20, 20), (1, 30)], maps,
                           ["enc 1", "enc 2"], tmp_path / "sub" / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- encoder artifacts and the command -------------------------------------------------------------
def write_encoder(folder: Path, seed: int, name: str = "resnet18", method: str = "m",
                  weights_of: str | None = None) -> Path:
    from harness.engine.model import build_encoder

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_encoder(weights_of or name).state_dict(), folder / "encoder.pt")
    (folder / "encoder.json").write_text(json.dumps(
        {"encoder": name, "normalization": HALF, "method": method}))
    return folder / "encoder.pt"


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {"file": write_encoder(root / "a", 0, method="first"),
            "stage": write_encoder(root / "store" / "stages" / "encoder" / "0123abcd", 1,
                                   method="second"),
            "misfit": write_encoder(root / "misfit", 2, name="resnet34", weights_of="resnet18"),
            "store": root / "store"}


def test_encoder_arguments_resolve_to_files_folders_and_store_keys(encoders, tmp_path):
    store = encoders["store"]
    stage = encoders["stage"]
    assert resolve_encoder(str(encoders["file"]), store) == encoders["file"]
    assert resolve_encoder(str(encoders["file"].parent), store) == encoders["file"]
    assert resolve_encoder("0123", store) == stage
    assert resolve_encoder("encoder/0123abcd", store) == stage
    with pytest.raises(DataError, match="no stage key in the store .*did you mean '0123ab'"):
        resolve_encoder("0132ab", store)
    with pytest.raises(DataError, match="no such file"):
        resolve_encoder(str(tmp_path / "nothing" / "encoder.pt"), store)
    with pytest.raises(DataError, match="holds no encoder.pt"):
        resolve_encoder(str(tmp_path), store)
    other = tmp_path / "store"
    for kind, key in (("encoder", "0123abcd"), ("pretrain", "0123ffff")):
        folder = other / "stages" / kind / key
        folder.mkdir(parents=True)
        for name in ("encoder.pt", "encoder.json"):
            (folder / name).write_bytes((stage.parent / name).read_bytes())
    with pytest.raises(DataError, match="2 stages in the store match"):
        resolve_encoder("0123", other)
    assert resolve_encoder("pretrain/0123", other).parent.name == "0123ffff"


def test_cli_draws_two_encoders(encoders, store, tmp_path):
    out = tmp_path / "figs" / "sim.png"
    res = run_cli("viz", "similarity", "--encoder", str(encoders["file"]), "--encoder", "0123",
                  "--store", str(encoders["store"]), "--image", "fold2/0001", "--points",
                  "4,5;20,28", *DATASET, "--output", str(out), "--size", "64",
                  env={"HARNESS_STORE": str(store)}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def harness_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from harness.cli.app import main

    monkeypatch.setattr(sys, "argv", ["harness", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case, code, message", [
    ("missing", 3, r"--encoder .*encoder.pt: no such file"),
    ("no_meta", 3, r"no encoder.json beside it"),
    ("misfit", 3, r"do not fit encoder 'resnet34' \(named in its encoder.json\): .*missing keys"),
    ("unknown_id", 2, r"--image 'fold1/0009': no such sample in dataset 'synthetic' \(9 samples; did you mean 'fold1/000"),
    ("far_id", 2, r"--image 'xyz': no such sample .*ids look like 'fold1/0000' .. 'fold3/0002'"),
    ("outside", 2, r"--points: 40,3 outside the image \(32 x 32 px"),
    ("malformed", 2, r"--points '4;5': '4' is not 'x,y'"),
])
def test_cli_errors_are_one_line(case, code, message, encoders, store, tmp_path, monkeypatch, capsys):
    enc, image, points = str(encoders["file"]), "fold1/0001", "4,5"
    if case == "missing":
        enc = str(tmp_path / "gone" / "encoder.pt")
    elif case == "no_meta":
        bare = tmp_path / "bare.pt"
        bare.write_bytes(encoders["file"].read_bytes())
        enc = str(bare)
    elif case == "misfit":
        enc = str(encoders["misfit"])
    elif case in ("unknown_id", "far_id"):
        image = "fold1/0009" if case == "unknown_id" else "xyz"
    elif case == "outside":
        points = "4,5;40,3"
    elif case == "malformed":
        points = "4;5"
    got, err = harness_main(monkeypatch, capsys, "viz", "similarity", "--encoder", enc,
                            "--image", image, "--points", points, *DATASET,
                            "--output", str(tmp_path / "x.png"))
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "x.png").exists()


VIZ_SPEC = """
name: viz_spec
dataset: {name: synthetic, image_size: 32, images_per_fold: 3, unlabeled_images: 0}
methods: [scratch]
protocols: [frozen]
finetune: {batch_size: 4}
"""


def test_spec_gives_the_dataset_and_its_options(encoders, store, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(VIZ_SPEC)
    out = tmp_path / "sim.png"
    args = ["viz", "similarity", "--encoder", str(encoders["file"]), "--spec", str(spec),
            "--points", "4,5", "--output", str(out)]
    got, err = harness_main(monkeypatch, capsys, *args, "--image", "fold3/0002")
    assert got == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the spec's options were used (3 images per fold, 32 px), and --set goes on top of them
    got, err = harness_main(monkeypatch, capsys, *args, "--image", "fold3/0003")
    assert got == 2 and "no such sample in dataset 'synthetic' (9 samples" in err, err
    got, err = harness_main(monkeypatch, capsys, *args, "--image", "fold3/0003", "--set",
                            "images_per_fold=4")
    assert got == 0, err
    got, err = harness_main(monkeypatch, capsys, *args, "--image", "fold1/0001", "--points", "40,3")
    assert got == 2 and "outside the image (32 x 32 px" in err, err
    got, err = harness_main(monkeypatch, capsys, *args, "--image", "fold1/0001", "--dataset", "tnbc")
    assert got == 2 and "--dataset tnbc: " in err and "fine-tunes on 'synthetic'" in err, err
    no_spec = [a for a in args if a not in ("--spec", str(spec))]
    got, err = harness_main(monkeypatch, capsys, *no_spec, "--image", "fold1/0001")
    assert got == 2 and "give --dataset NAME or --spec SPEC" in err, err
