"""``supervised``: ImageNet-supervised torchvision weights (thesis §A.2; torchvision's
``ResNet18_Weights.IMAGENET1K_V1``).

Nothing is downloaded: the file is read from ``methods.supervised.weights`` or from torch's hub
cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), under
either of torchvision's file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from harness.errors import DataError
from harness.hookspecs import hookimpl
from harness.inputs import InputFile
from harness.methods import InitMethod, MethodConfig
from harness.safeload import load_state_dict_file

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    from torch import nn

#: torchvision IMAGENET1K_V1 files per encoder: current name first, then the legacy name that
#: smp <= 0.4 (the thesis's pinned 0.2.1) used; both hold the same weights.
TORCHVISION_FILES = {
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"),
    "resnet152": ("resnet152-394f9c45.pth", "resnet152-b121ed2d.pth"),
}
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DOWNLOAD_BASE = "https://download.pytorch.org/models/"


class SupervisedConfig(MethodConfig):
    weights: InputFile | None = Field(
        None, description="path to a torchvision ImageNet state dict (keyed by its content); "
        "default: torch's hub cache")


class Supervised(InitMethod):
    name: ClassVar[str] = "supervised"
    description: ClassVar[str] = "ImageNet-supervised torchvision weights"
    seed_dependent: ClassVar[bool] = False
    Config: ClassVar[type[MethodConfig]] = SupervisedConfig

    def weights_path(self, encoder_name: str) -> Path:
        if self.config.weights is not None:
            path = Path(self.config.weights).expanduser()
            if path.is_dir():
                raise DataError(f"methods.supervised.weights: {path} is a folder, not a weights "
                                f"file; point it at the state-dict file (.pth) inside it")
            if not path.is_file():
                raise DataError(f"methods.supervised.weights: file not found: {path}")
            return path
        names = TORCHVISION_FILES.get(encoder_name)
        if names is None:
            raise DataError(f"supervised: no known torchvision ImageNet file for encoder "
                            f"'{encoder_name}'; set methods.supervised.weights: PATH")
        import torch  # the hub folder (TORCH_HOME, torch.hub.set_dir) is torch's to say

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        for name in names:
            if (hub / name).is_file():
                return hub / name
        raise DataError(
            f"supervised: ImageNet weights for {encoder_name} not found; download "
            f"{DOWNLOAD_BASE}{names[0]} into {hub}/ (or set TORCH_HOME, or "
            f"methods.supervised.weights: PATH)")

    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict[str, Any]:
        """For `harness plugin check`: a random resnet18 in torchvision's layout (with its
        ImageNet head), as the weights file; nothing is downloaded."""
        import torch
        import torchvision

        path = folder / "resnet18.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
        return {"config": {"weights": str(path)}}

    def preflight(self, spec: Any) -> None:
        self.weights_path(spec.finetune.encoder)

    def init_encoder(self, encoder: nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        path = self.weights_path(encoder_name)
        state = load_state_dict_file(path)  # one line naming the file and how to re-export it
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            from harness.engine.model import key_diff

            diff = key_diff(encoder, state) or str(exc).strip().splitlines()[0][:160]
            raise DataError(f"supervised: {path} does not fit encoder '{encoder_name}': {diff}; "
                            f"use torchvision's ImageNet weights for {encoder_name} or set "
                            f"finetune.encoder to the weights' architecture") from None
        return IMAGENET_NORMALIZATION


@hookimpl
def harness_register_methods():
    return [Supervised]
