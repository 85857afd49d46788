"""A third party adds a foundation model by a data entry in its own plugin (the example package's
``example_fm``): the installed package's entry shows in ``harness show method foundation`` and a
spec row can name it."""

from __future__ import annotations

from test_plugins import EXAMPLE, example_site, harness  # noqa: F401 - the session fixture


def test_example_package_adds_a_foundation_model(example_site, tmp_path):  # noqa: F811
    result = harness("show", "method", "foundation", site=example_site, store=tmp_path / "store")
    assert result.returncode == 0, result.stderr
    assert "Example-PathViT-S16: vit_small_patch16_224 patch 16, width 384; download " \
           "model.safetensors from https://huggingface.co/example-lab/pathvit-s16" in result.stdout
    assert "UNI: vit_large_patch16_224" in result.stdout  # beside the built-in entries

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: example_fm
dataset: {{name: synthetic, image_size: 32, images_per_fold: 4, unlabeled_images: 0}}
methods:
  pathvit: {{method: foundation, model: Example-PathViT-S16, weights: {tmp_path}/w.safetensors,
             architecture: unetr}}
protocols: [frozen]
finetune: {{batch_size: 4}}
""")
    result = harness("validate", spec, site=example_site, store=tmp_path / "store")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EXAMPLE" not in result.stdout and EXAMPLE.is_dir()
