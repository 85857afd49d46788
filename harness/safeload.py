"""Loading torch files that a user or a shared store supplies, without running code from them.

Every ``torch.load`` in the harness goes through :func:`load_tensors`, which uses
``weights_only=True``: a pickle that names anything but tensors and plain containers is refused
instead of executed (a ``checkpoint.pt`` planted in a shared store would otherwise run in every
job that resumes from it). A file that does not load becomes one :class:`DataError` line (exit 3)
naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import DataError

#: How to turn a model (or a full pickled checkpoint) into a file the harness loads.
REEXPORT = ("re-export it as a plain state dict: "
            "torch.save(model.state_dict(), PATH) (or torch.save(ckpt['state_dict'], PATH))")

#: The fix for a stage artifact of the store that does not load.
STAGE_FIX = "delete the stage folder that holds it; the next run computes it again"


def load_tensors(path: Path | str, fix: str = REEXPORT) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a DataError naming ``path`` and ``fix``
    if the file is missing, unreadable, not a torch file, or holds Python objects."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {fix}") from None
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # a pickled class or function: what a payload needs
            raise DataError(f"{path}: holds Python objects besides tensors, which the harness "
                            f"does not unpickle (they could run code); {fix}") from None
        raise DataError(f"{path}: not a torch file (random bytes, or a plain pickle rather than "
                        f"torch.save output); {fix}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); "
                        f"{fix}") from None
    except Exception as exc:  # noqa: BLE001 - random bytes, truncation: zip/pickle errors of all kinds
        raise DataError(f"{path}: not a readable torch file ({type(exc).__name__}: "
                        f"{_first_line(exc)}); {fix}") from None


def load_state_dict_file(path: Path | str, fix: str = REEXPORT) -> dict[str, Any]:
    """A file holding a state dict (name -> tensor)."""
    import torch

    state = load_tensors(path, fix)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = type(state).__name__ if not isinstance(state, dict) else "mapping with non-tensors"
        raise DataError(f"{path}: holds a {what}, not a state dict (name -> tensor); {fix}")
    return state


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message, at most 120 characters."""
    text = str(exc).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), type(exc).__name__).split(". ")[0]
    return line if len(line) <= 120 else line[:117] + "..."
