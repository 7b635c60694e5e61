"""Stage 4b — checkpoints: one ``.safetensors`` file per model.

Tensors are the model's state dict; the file's metadata holds one JSON document (key ``avemo``)
with the architecture, feature settings, targets, post-processing parameters and provenance.
Loading never unpickles anything. ``resolve_weights`` turns ``--weights NAME|PATH`` into a file:
a path, or a name shipped in the package's ``weights/`` folder (``default`` when none is given).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError

if TYPE_CHECKING:  # torch is imported by the functions that need it: resolving a name and
    import torch  # reading settings (extractors.py, before the model loads) stay light

    from .model import AVModel, ModelConfig

FORMAT = "avemo-checkpoint"
VERSION = 1
DEFAULT_NAME = "default"


@dataclass
class Checkpoint:
    model: AVModel
    config: ModelConfig
    postprocess: dict = field(default_factory=dict)  # target -> parameters (postprocess.py)
    provenance: dict = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(path: str | os.PathLike, model: AVModel, postprocess: dict | None = None,
                    provenance: dict | None = None) -> Path:
    """Write ``model`` and its settings to ``path`` (atomically)."""
    from safetensors.torch import save_file

    from .files import atomic_path

    path = Path(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.cfg.to_dict(),
        "postprocess": postprocess or {},
        "provenance": provenance or {},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"avemo": json.dumps(meta)})
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's JSON settings, without loading tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("avemo")
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint "
                              f"(expected a .safetensors file: {exc})") from None
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file, but not an avemo checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt avemo settings in the checkpoint") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an avemo checkpoint")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['version']} is newer than this "
                              f"avemo understands ({VERSION}); upgrade avemo")
    return meta


def state_mismatch(expected: dict, state: dict) -> str:
    """The first way ``state`` fails to fit a model whose state dict is ``expected``, naming
    the tensor ("" when it fits)."""
    for name, ref in expected.items():
        if name not in state:
            return f"{name} is missing"
        if tuple(state[name].shape) != tuple(ref.shape):
            return (f"{name} has shape {tuple(state[name].shape)}, the model's is "
                    f"{tuple(ref.shape)}")
    extra = sorted(set(state) - set(expected))
    return f"{extra[0]} is not a tensor of this model" if extra else ""


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file into an ``AVModel`` in eval mode on ``device``."""
    import torch
    from safetensors.torch import load_file

    from .model import AVModel, ModelConfig

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    meta = read_metadata(path)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model settings ({exc})") from None
    model = AVModel(cfg)
    try:
        state = load_file(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable tensors ({first})") from None
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path}: tensors do not match the model settings ({mismatch})")
    model.load_state_dict(state, strict=True)
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} tensor(s) hold NaN or infinite values "
                              f"(e.g. {broken[0]}): a damaged or diverged model")
    model.eval().to(device)
    return Checkpoint(model, cfg, meta.get("postprocess", {}), meta.get("provenance", {}), path)


def shipped_weights() -> dict[str, Path]:
    """Checkpoints shipped in the package's weights folder, by name (file stem)."""
    try:
        folder = resources.files("avemo_cli.weights")
    except ModuleNotFoundError:  # running from a source checkout without installing
        folder = Path(__file__).resolve().parent.parent / "weights"
        if not folder.is_dir():
            return {}
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir()
            if p.name.endswith(".safetensors")}


def resolve_weights(name_or_path: str | None) -> Path:
    """A checkpoint path from ``--weights`` (a path, or a shipped name; None = default)."""
    if name_or_path is None:
        name_or_path = os.environ.get("AVEMO_WEIGHTS") or DEFAULT_NAME
    p = Path(name_or_path).expanduser()
    if p.suffix == ".safetensors" or os.sep in name_or_path or p.exists():
        if not p.exists():
            raise CheckpointError(f"{p}: no such checkpoint file")
        if p.is_dir():
            raise CheckpointError(f"{p}: is a folder; pass the checkpoint file inside it")
        return p
    shipped = shipped_weights()
    if name_or_path in shipped:
        return shipped[name_or_path]
    if name_or_path == DEFAULT_NAME:
        raise CheckpointError("no default model is installed in this avemo; "
                              "pass --weights PATH (a checkpoint file)")
    known = ", ".join(sorted(shipped)) or "none"
    raise CheckpointError(f"{name_or_path}: no such checkpoint file or shipped model "
                          f"(shipped: {known})")
