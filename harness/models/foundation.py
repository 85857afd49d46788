"""The registry of pathology foundation models: data entries that plugins register through
``harness_register_foundation_models`` (the built-in ones: ``plugins/methods/
foundation_models.yaml``; a third party adds its own the same way). Nothing here imports
torch: validation and ``harness show`` read it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import PluginError, SpecError


class Normalization(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)


class FoundationModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    timm: str = Field(description="timm architecture (timm.create_model name)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="timm.create_model kwargs")
    patch_size: int = Field(ge=1)
    embed_dim: int = Field(ge=1)
    normalization: Normalization
    repo: str = Field(description="where a user obtains the weights (Hugging Face repo or URL)")
    weights_file: str = Field("pytorch_model.bin", description="the state-dict file in it")
    access: str = Field(description="access and licence terms")
    source: str = Field(description="where the architecture and normalisation were read")

    def where(self) -> str:
        url = self.repo if "://" in self.repo else f"https://huggingface.co/{self.repo}"
        return f"download {self.weights_file} from {url} ({self.access})"


def read_entries(path: Path) -> list[dict[str, Any]]:
    """A plugin's YAML data file: a mapping name -> entry (the name filled in)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return [{"name": name, **entry} for name, entry in data.items()]


@lru_cache(maxsize=1)
def foundation_models() -> dict[str, FoundationModel]:
    """Every registered entry by name (a later plugin may not redefine a name)."""
    from harness.plugins import get_registry

    out: dict[str, FoundationModel] = {}
    for entries in get_registry().pm.hook.harness_register_foundation_models():
        for raw in entries or []:
            try:
                entry = FoundationModel.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise PluginError(f"foundation model {raw.get('name', '?')!r}: "
                                  f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
            if entry.name in out and out[entry.name] != entry:
                raise PluginError(f"two plugins register foundation model {entry.name!r}")
            out[entry.name] = entry
    return out


def foundation_model(name: str) -> FoundationModel:
    from harness.errors import did_you_mean

    known = foundation_models()
    if name not in known:
        raise SpecError(f"unknown foundation model {name!r}{did_you_mean(name, known)}; "
                        f"registered: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def table() -> str:
    """The registry as text (``harness show method foundation``)."""
    lines = ["Foundation models (fm:NAME, or the foundation method's model: NAME):"]
    for e in sorted(foundation_models().values(), key=lambda e: e.name.lower()):
        lines.append(f"  {e.name}: {e.timm} patch {e.patch_size}, width {e.embed_dim}; "
                     f"{e.where()}")
    return "\n".join(lines)
