"""A test-only plugin registering a tiny foundation model (a random ViT-Tiny at 64 px), as a
third party's plugin registers entries (harness_register_foundation_models)."""

from harness.hookspecs import hookimpl

TINY = {"name": "Tiny-FM", "timm": "vit_tiny_patch16_224", "kwargs": {"img_size": 64},
        "patch_size": 16, "embed_dim": 192,
        "normalization": {"mean": [0.6, 0.5, 0.6], "std": [0.2, 0.2, 0.2]},
        "repo": "example/tiny-fm", "weights_file": "pytorch_model.bin",
        "access": "gated: accept the example terms", "source": "tests/fm_fixture_plugin.py"}


@hookimpl
def harness_register_foundation_models():
    return [TINY]
