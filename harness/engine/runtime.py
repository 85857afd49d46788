"""Device selection, mixed precision, seeding, checkpoints and progress reporting."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from harness.console import console
from harness.store import atomic_torch_save


def resolve_device(name: str = "auto") -> torch.device:
    """The spec's ``finetune.device`` as this process sees it: ``cuda:N`` is GPU N of the
    visible ones, except in a pool worker, pinned to that GPU, which sees it as ``cuda:0``; a
    one-line SpecError where it does not exist."""
    from harness.errors import SpecError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"finetune.device is '{name}' but CUDA is not available; "
                        f"use device: auto or cpu")
    if name.startswith("cuda:"):
        if os.environ.get("HARNESS_POOL_GPUS"):
            return torch.device("cuda", 0)
        count = torch.cuda.device_count()
        if int(name[5:]) >= count:
            raise SpecError(f"finetune.device is '{name}' but this process sees {count} GPU(s) "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                            f"use device: auto or cuda:0..cuda:{count - 1}")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@dataclass
class Precision:
    """Mixed precision on CUDA: bf16 where the GPU has it natively (Ampere and later), else fp16
    with a grad scaler (V100, T4: ``is_bf16_supported()`` alone is True there, by emulation,
    slower than fp32)."""

    device: torch.device
    enabled: bool

    @property
    def dtype(self) -> torch.dtype | None:
        if not self.enabled or self.device.type != "cuda":
            return None
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)


@contextmanager
def no_tf32() -> Iterator[None]:
    """Inside: fp32 convolutions and matmuls in full fp32 (no TF32 on Ampere and later), as
    predictions for evaluation and pseudo-labels were computed by the reference."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """Seed python/numpy in data-loader workers from the torch seed torch gave the worker. Stop
    signals sent to the whole process group (a scheduler's SIGTERM, Ctrl-C) are left to the
    main process, which checkpoints at the next step and then shuts the workers down."""
    import signal

    for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    base = torch.initial_seed() % (2**32)
    random.seed(base + worker_id)
    np.random.seed((base + worker_id) % (2**32))


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and the training device's CUDA RNG states as tensors, ints and
    lists only, so that a checkpoint loads with torch's ``weights_only=True`` unpickler. Only
    the current CUDA device's state is kept (the one this process trains on; none where CUDA was
    never used), so the checkpoint resumes wherever fewer or more GPUs are visible."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": list(mt), "gauss": gauss},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; the CUDA state goes to the current device (and is
    ignored without CUDA: nothing on the host draws from it). A list of per-GPU states (written
    by earlier versions) gives the current device's; ValueError where it has none."""
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        index = torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):
            if index >= len(cuda):
                raise ValueError(f"its CUDA RNG states are of {len(cuda)} GPU(s), none of "
                                 f"cuda:{index}")
            cuda = cuda[index]
        if not isinstance(cuda, torch.Tensor):
            raise ValueError("its CUDA RNG state is not a tensor")
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


class Checkpoint:
    """One resumable training state file in a stage's work folder, written atomically (when
    to write is the training loop's policy: :class:`harness.engine.loop.TrainLoop`)."""

    def __init__(self, work_dir: Path, name: str = "checkpoint.pt"):
        self.path = Path(work_dir) / name

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: dict[str, Any]) -> None:
        atomic_torch_save({**state, "rng": rng_state()}, self.path)

    def load(self, required: tuple[str, ...] = (),
             apply: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """The saved state (RNG states restored, then ``apply(state)`` called), or None when
        there is no usable checkpoint.

        Loaded with ``weights_only=True``, so a planted or old-format file runs no code. A file
        that does not load, lacks ``required`` entries or cannot be applied (RNG states of
        another machine, parts of another shape: ``apply`` must leave its parts as they were
        when it raises) is set aside with one warning, the RNG states are put back and the
        stage starts over: resuming is bit-identical to an uninterrupted run, so starting over
        costs time only, never a different result (and nobody has to delete it by hand)."""
        from harness.errors import DataError
        from harness.safeload import load_tensors

        if not self.exists():
            return None
        try:
            state = load_tensors(self.path, fix="set aside; the stage starts over")
            missing = [k for k in (*required, "rng") if not isinstance(state, dict) or k not in state]
            if missing:
                raise DataError(f"{self.path}: not a checkpoint of this stage (no "
                                f"{', '.join(missing)}); set aside; the stage starts over")
            before = rng_state()
            try:
                set_rng_state(state.pop("rng"))
                if apply is not None:
                    apply(state)
            except Exception:
                set_rng_state(before)
                raise
        except (DataError, KeyError, TypeError, ValueError, AttributeError, RuntimeError,
                IndexError) as exc:
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            console.log(f"warning: {exc if isinstance(exc, DataError) else f'{self.path}: {exc}'}"
                        f" (moved to {aside.name})")
            return None
        return state


def resolve_num_workers(setting: int | str, device: torch.device) -> int:
    """``auto``: on CUDA, the CPUs this process may run on (``os.sched_getaffinity``) shared by
    the local ranks (``LOCAL_WORLD_SIZE``) and the pool's workers, one left to the training process, at most 8 (with
    views made on the device a worker only copies tiles); on CPU 0, since training already uses
    every core and worker start-up dominates small runs."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if not os.environ.get("HARNESS_POOL_CPUS"):  # a pinned pool worker's affinity is its share
        local *= max(1, int(os.environ.get("HARNESS_POOL_WORKERS", "1")))  # else they share them
    return max(1, min(8, cpus // local - 1))
