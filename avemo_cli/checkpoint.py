"""Stage 4b — checkpoints: one ``.safetensors`` file per model.

Tensors are the model's state dict; the file's metadata holds one JSON document (key ``avemo``)
with the architecture, feature settings, targets, post-processing parameters and provenance.
Loading never unpickles anything. ``resolve_weights`` turns ``--weights NAME|PATH`` into a file:
a path, or a name shipped in the package's ``weights/`` folder (``default`` when none is given).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig
from .errors import CheckpointError

if TYPE_CHECKING:  # torch is imported by the functions that need it: resolving a name and
    import torch  # reading settings (extractors.py, before the model loads) stay light

    from .model import AVModel

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
    source: CheckpointFile | None = field(default=None, repr=False)  # what it was loaded from

    @property
    def sha256(self) -> str:
        """The file's SHA-256 ("" for a model built in memory)."""
        return self.source.sha256 if self.source is not None else ""


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


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file read once (``open_checkpoint``): its bytes, its avemo settings and the
    model settings they hold. No torch: the extraction of a file's features can begin from it
    before torch is imported; the model is then built from the same bytes (``load_checkpoint``),
    and a ``--jobs`` worker receives it whole, so one run opens the file once."""

    path: Path
    data: bytes = field(repr=False)
    meta: dict = field(repr=False)
    config: ModelConfig = field(repr=False)

    @cached_property
    def sha256(self) -> str:
        """The file's digest, computed once (every manifest record names it)."""
        return hashlib.sha256(self.data).hexdigest()


def open_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Read a checkpoint file (once) and check its settings, without building the model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint file (a folder, a device or a pipe)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.strerror or exc})") \
            from None
    meta = _settings(path, data)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model settings ({exc})") from None
    from .postprocess import check_postprocess

    why = check_postprocess(meta.get("postprocess", {}))
    if why:
        raise CheckpointError(f"{path}: invalid post-processing settings ({why})")
    return CheckpointFile(path, data, meta, cfg)


def _header(path: Path, data: bytes) -> dict:
    """A safetensors file's JSON header (8 bytes of its length, then the JSON)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        if size > len(data) - 8:
            raise ValueError("the header runs past the end of the file")
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        return header
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint "
                              f"(expected a .safetensors file: {exc})") from None


def _settings(path: Path, data: bytes) -> dict:
    """The avemo settings stored in a checkpoint's header, checked."""
    raw = (_header(path, data).get("__metadata__") or {}).get("avemo")
    if raw is None:
        raise CheckpointError(f"{path}: a safetensors file, but not an avemo checkpoint")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        raise CheckpointError(f"{path}: corrupt avemo settings in the checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an avemo checkpoint")
    version = meta.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: not an avemo checkpoint (format version {version!r})")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['version']} is newer than this "
                              f"avemo understands ({VERSION}); upgrade avemo")
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's JSON settings, without loading tensors."""
    return open_checkpoint(path).meta


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


def load_checkpoint(source: str | os.PathLike | CheckpointFile,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Build the model of a checkpoint (a file's path, or one already read by
    ``open_checkpoint``) in eval mode on ``device``."""
    import torch
    from safetensors.torch import load as load_tensors

    from .model import AVModel

    file = source if isinstance(source, CheckpointFile) else open_checkpoint(source)
    path, cfg = file.path, file.config
    model = AVModel(cfg)
    try:
        state = load_tensors(file.data)
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
    return Checkpoint(model, cfg, file.meta.get("postprocess", {}),
                      file.meta.get("provenance", {}), path, file)


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
