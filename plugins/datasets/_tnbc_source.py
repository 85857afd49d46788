"""Reading a TNBC download (see :mod:`.tnbc`): the folder or the zip of the official release,
its ``Slide_<patient>/<patient>_<k>.png`` images and ``GT_<patient>/<patient>_<k>.png`` masks."""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError

_SLIDE = re.compile(r"^Slide_(\d+)$")
_GT = re.compile(r"^GT_(\d+)$")
_STEM = re.compile(r"^(\d+)_(\d+)$")


def patient_key(p: str) -> tuple[int, str]:
    return (int(p), p) if p.isdigit() else (1 << 30, p)


def _sample_key(patient: str, stem: str) -> tuple:
    m = _STEM.match(stem)
    k = (int(m.group(2)), "") if m else (1 << 30, stem)
    return (patient_key(patient), k)


@dataclass
class Entry:
    stem: str
    patient: str
    image: str  # path or zip member
    mask: str


class Source:
    """A TNBC download as a folder or the zip: lists Slide_*/GT_* PNGs and reads them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.path}: not a readable zip ({exc})") from None
            self.files = [m for m in self.zip.namelist() if not m.endswith("/")]
        elif self.path.is_dir():
            base = self.path
            if not any(_SLIDE.match(p.name) for p in base.iterdir() if p.is_dir()):
                if (base / "TNBC_NucleiSegmentation").is_dir():
                    base = base / "TNBC_NucleiSegmentation"
                elif (base / "TNBC_NucleiSegmentation.zip").is_file():
                    self.__init__(base / "TNBC_NucleiSegmentation.zip")
                    return
            self.path = base
            self.files = [str(p.relative_to(base)) for p in base.rglob("*.png") if p.is_file()]
        else:
            raise DataError(f"{self.path}: missing (expected the TNBC_NucleiSegmentation folder "
                            f"or TNBC_NucleiSegmentation.zip)")

    def where(self, name: str) -> str:
        return f"{self.path}!{name}" if self.zip else str(self.path / name)

    def entries(self) -> list[Entry]:
        images: dict[tuple[str, str], str] = {}
        masks: dict[tuple[str, str], str] = {}
        for name in self.files:
            parts = name.replace("\\", "/").split("/")
            if "__MACOSX" in parts or parts[-1].startswith("._") or not parts[-1].lower().endswith(".png"):
                continue
            if len(parts) < 2:
                continue
            folder, stem = parts[-2], parts[-1][:-4]
            if m := _SLIDE.match(folder):
                images[(m.group(1), stem)] = name
            elif m := _GT.match(folder):
                masks[(m.group(1), stem)] = name
        if not images and not masks:
            raise DataError(f"{self.path}: no Slide_XX/*.png images (expected the "
                            f"TNBC_NucleiSegmentation layout: Slide_XX/ and GT_XX/)")
        for key in sorted(set(masks) - set(images)):
            raise DataError(f"{self.where(masks[key])}: mask without its image "
                            f"(no Slide_{key[0]}/{key[1]}.png)")
        for key in sorted(set(images) - set(masks)):
            raise DataError(f"{self.where(images[key])}: image without its mask "
                            f"(no GT_{key[0]}/{key[1]}.png)")
        entries = [Entry(stem, patient, images[(patient, stem)], masks[(patient, stem)])
                   for patient, stem in images]
        seen: dict[str, Entry] = {}
        for e in entries:
            if e.stem in seen:
                raise DataError(f"{self.where(e.image)}: file name '{e.stem}.png' also in "
                                f"Slide_{seen[e.stem].patient}; sample ids must be unique")
            seen[e.stem] = e
        return sorted(entries, key=lambda e: _sample_key(e.patient, e.stem))

    def read(self, name: str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            if self.zip is not None:
                data = self.zip.read(name)
                im = Image.open(io.BytesIO(data))
            else:
                im = Image.open(self.path / name)
            im.load()
            return im
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.where(name)}: unreadable PNG ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def image_array(src: Source, name: str) -> tuple[np.ndarray, str]:
    """``(H, W, 3)`` uint8 RGB (alpha dropped) and the PNG's mode."""
    im = src.read(name)
    mode = im.mode
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode not in ("RGB", "RGBA"):
        raise DataError(f"{src.where(name)}: image mode {im.mode}; expected RGB or RGBA")
    return np.ascontiguousarray(np.asarray(im)[..., :3]), mode


def mask_array(src: Source, name: str) -> np.ndarray:
    """``(H, W)`` mask values (nucleus = value > 0)."""
    im = src.read(name)
    if im.mode == "P":
        im = im.convert("RGB")
    arr = np.asarray(im)
    if im.mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{src.where(name)}: colour mask with differing channels; expected a "
                            f"single-channel binary mask (nucleus > 0)")
        arr = rgb[..., 0]
    elif im.mode == "LA":
        arr = arr[..., 0]
    elif arr.ndim != 2:
        raise DataError(f"{src.where(name)}: mask mode {im.mode}; expected a single-channel mask")
    return arr


# --- the dataset --------------------------------------------------------------------------------------
