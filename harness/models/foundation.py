"""The registry of pathology foundation models: data entries that plugins register through
``harness_register_foundation_models`` (the built-in ones: ``plugins/methods/
foundation_models.yaml``; a third party adds its own the same way). Nothing here imports
torch: validation and ``harness show`` read it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import PluginError, SpecError

if TYPE_CHECKING:
    from harness.plugins import Registry


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


_READ: dict[int, tuple[Registry, dict[str, FoundationModel]]] = {}


def foundation_models(registry: Registry | None = None) -> dict[str, FoundationModel]:
    """Every entry ``registry``'s plugins register, by name (a later plugin may not redefine a
    name); read once per registry. Without one (a stage process building an ``fm:`` encoder
    from its stage's config): the installed plugins'."""
    if registry is None:
        from harness.plugins import get_registry

        registry = get_registry()
    if id(registry) not in _READ or _READ[id(registry)][0] is not registry:
        _READ[id(registry)] = (registry, _read(registry))
    return _READ[id(registry)][1]


def _read(registry: Registry) -> dict[str, FoundationModel]:
    out: dict[str, FoundationModel] = {}
    for entries in registry.pm.hook.harness_register_foundation_models():
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


def foundation_model(name: str, registry: Registry | None = None) -> FoundationModel:
    from harness.errors import did_you_mean

    known = foundation_models(registry)
    if name not in known:
        raise SpecError(f"unknown foundation model {name!r}{did_you_mean(name, known)}; "
                        f"registered: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def table(registry: Registry | None = None) -> str:
    """The registry as text (``harness show method foundation``)."""
    lines = ["Foundation models (fm:NAME, or the foundation method's model: NAME):"]
    for e in sorted(foundation_models(registry).values(), key=lambda e: e.name.lower()):
        lines.append(f"  {e.name}: {e.timm} patch {e.patch_size}, width {e.embed_dim}; "
                     f"{e.where()}")
    return "\n".join(lines)
