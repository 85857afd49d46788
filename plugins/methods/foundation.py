"""``foundation``: a pathology foundation model's published weights, from a local file.

``model: NAME`` picks an entry of the foundation-model registry (``foundation_models.yaml``
beside this file, plus the entries of other plugins): its timm architecture becomes the row's
encoder (``fm:NAME``) and its normalisation the encoder's. The weights come from ``weights: PATH``
(the checkpoint's state dict, ``.bin``/``.pth``/``.safetensors``) or ``snapshot: DIR`` (a
downloaded Hugging Face snapshot folder: its ``model.safetensors`` or ``pytorch_model.bin``);
either is keyed by content. Nothing is ever downloaded: a missing file is reported before any
work with the repository to get it from and its terms. Loading is strict: a file of another
architecture is one line naming the missing and unexpected keys (exit 3). A classification head
in the file (``head.*``) is dropped: the harness uses the encoder only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from harness.errors import DataError
from harness.hookspecs import hookimpl
from harness.inputs import InputFile
from harness.methods import InitMethod, MethodConfig

if TYPE_CHECKING:  # no torch at import: `harness validate` and `list` import this module
    from torch import nn

REGISTRY_FILE = Path(__file__).with_name("foundation_models.yaml")
#: Weights files of a Hugging Face snapshot, in the order they are looked for.
SNAPSHOT_FILES = ("model.safetensors", "pytorch_model.bin")


class FoundationConfig(MethodConfig):
    model: str = Field(..., description="a registered foundation model (`harness show method "
                       "foundation` lists them), e.g. UNI, H-optimus-0")
    weights: InputFile | None = Field(None, description="the model's state-dict file (keyed by "
                                      "its content)")
    snapshot: InputFile | None = Field(None, description="a local Hugging Face snapshot folder "
                                       "of the model (keyed by the content of its files)")

    @model_validator(mode="after")
    def _one_source(self) -> "FoundationConfig":
        if (self.weights is None) == (self.snapshot is None):
            raise ValueError("give exactly one of weights: PATH or snapshot: DIR")
        return self


class Foundation(InitMethod):
    name: ClassVar[str] = "foundation"
    description: ClassVar[str] = "a pathology foundation model's weights from a local file"
    seed_dependent: ClassVar[bool] = False
    encoder_families: ClassVar[tuple[str, ...]] = ("vit",)
    Config: ClassVar[type[MethodConfig]] = FoundationConfig

    @classmethod
    def row_encoder(cls, config: dict[str, Any], spec_encoder: str) -> str:
        model = config.get("model")
        return f"fm:{model}" if isinstance(model, str) else spec_encoder

    @classmethod
    def extra_help(cls) -> str:
        from harness.models.foundation import table

        return table()

    def entry(self) -> Any:
        from harness.models.foundation import foundation_model

        return foundation_model(self.config.model)

    def weights_path(self) -> Path:
        entry = self.entry()
        if self.config.weights is not None:
            path = Path(self.config.weights).expanduser()
            if not path.is_file():
                raise DataError(f"methods.foundation.weights: {entry.name} weights not found at "
                                f"{path}; {entry.where()}")
            return path
        folder = Path(self.config.snapshot).expanduser()
        for name in SNAPSHOT_FILES:
            if (folder / name).is_file():
                return folder / name
        raise DataError(f"methods.foundation.snapshot: no {' or '.join(SNAPSHOT_FILES)} in {folder}; "
                        f"{entry.name}: {entry.where()}")

    def preflight(self, spec: Any) -> None:
        self.weights_path()

    @classmethod
    def conformance_fixture(cls, folder: Path) -> dict[str, Any]:
        """For `harness plugin check`: a random kaiko-ViT-S16-shaped state dict (no head)."""
        import timm
        import torch

        path = folder / "vit_s16.pth"
        torch.save(timm.create_model("vit_small_patch16_224", num_classes=0).state_dict(), path)
        return {"config": {"model": "kaiko-ViT-S16", "weights": str(path)}}

    def init_encoder(self, encoder: nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        from harness.engine.model import key_diff

        path = self.weights_path()
        state = _read_state(path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        try:
            encoder.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            diff = key_diff(encoder.model, state) or str(exc).strip().splitlines()[0][:160]
            raise DataError(f"foundation: {path} does not fit {self.config.model} "
                            f"({self.entry().timm}): {diff}; use that model's weights or the "
                            f"registry entry of the file's model") from None
        return self.entry().normalization.model_dump()


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
            raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    from harness.safeload import load_state_dict_file

    return load_state_dict_file(path)


@hookimpl
def harness_register_methods():
    return [Foundation]


@hookimpl
def harness_register_foundation_models():
    from harness.models.foundation import read_entries

    return read_entries(REGISTRY_FILE)
