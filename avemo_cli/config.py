"""The model's settings (``ModelConfig``): architecture, feature settings and targets, as a
checkpoint's header stores them. No torch here: the extraction of a file's features begins from
a checkpoint's header before torch is imported (``checkpoint.open_checkpoint``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

MODALITIES = ("av", "audio", "video")
AUDIO_NORMS = ("global", "recording")
FUSIONS = ("learned", "weighted")


@dataclass
class ModelConfig:
    modality: str = "av"  # av | audio | video
    targets: list[str] = field(default_factory=lambda: ["valence", "arousal"])
    clip_steps: int = 16  # T
    rate: float = 4.0  # analysis steps per second
    # audio branch
    audio_features: int = 88
    audio_window: float = 6.0  # seconds of audio summarised at each step
    audio_hidden: int = 64
    audio_layers: int = 4
    audio_attention: bool = True
    audio_attention_hidden: int = 32
    # feature normalisation: "global" z-scores with the training statistics (the paper);
    # "recording" also removes each recording's own level and range (see AudioBranch.adapt)
    audio_norm: str = "global"
    audio_norm_prior: float = 30.0  # seconds of evidence the training statistics count for
    # annotation looks ahead (a file is not a live stream): inside an utterance a step's audio
    # clip ends this many steps later, not past the utterance's end, so that every step of a
    # short utterance has heard all of it (0: the clip ends at the step, the paper's reading)
    audio_lookahead: int = 0
    # visual branch
    channels: int = 1  # 1 greyscale or 3 RGB
    input_size: int = 64
    encoder_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    convlstm_hidden: int = 32
    c3d_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    fc_hidden: int = 256
    visual_z: int = 128
    visual_attention: bool = True
    visual_backbone: str = "3d"  # 3d | 2d (per-frame 2D convolutions, the paper's ablation)
    batch_norm: bool = False  # BatchNorm3d after each 3D convolution (not in the paper)
    dropout: float = 0.5
    # fusion of an av model: "learned" (the paper: FC over cat(Z^S, Z^I)) or "weighted": per
    # target, fusion_weights[target] = [audio, visual] weights of the two branch heads
    fusion: str = "learned"
    fusion_weights: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        _check_fields(self)
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, not {self.modality!r}")
        if self.visual_backbone not in ("3d", "2d"):
            raise ValueError("visual_backbone must be '3d' or '2d'")
        if self.audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm must be one of {AUDIO_NORMS}, not {self.audio_norm!r}")
        if self.audio_norm_prior < 0:
            raise ValueError("audio_norm_prior must be >= 0 seconds")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.fusion == "weighted":
            if self.modality != "av":
                raise ValueError("weighted fusion needs an av model")
            bad = [t for t in self.targets if len(self.fusion_weights.get(t, [])) != 2
                   or min(self.fusion_weights[t]) < 0 or sum(self.fusion_weights[t]) <= 0]
            if bad:
                raise ValueError(f"weighted fusion needs [audio, visual] weights >= 0 with a "
                                 f"positive sum for every target (missing or invalid: "
                                 f"{', '.join(bad)})")
        if self.has_visual:
            if len(self.c3d_channels) != 4:
                raise ValueError("c3d_channels must list four widths")
            if self.input_size % 8:
                raise ValueError("input_size must be a multiple of 8")
            if not 2 <= len(self.encoder_channels) <= 3:
                raise ValueError("the encoder needs 2 or 3 blocks (input_size / 4 or / 8)")
            if self.visual_backbone == "3d" and self.clip_steps < 12:
                raise ValueError("the 3D backbone needs clips of at least 12 steps")

    @property
    def has_audio(self) -> bool:
        return self.modality in ("av", "audio")

    @property
    def has_visual(self) -> bool:
        return self.modality in ("av", "video")

    @property
    def temporal_kernel(self) -> int:
        return 3 if self.visual_backbone == "3d" else 1

    @property
    def shared_context(self) -> int:
        """Frames consumed by the valid temporal convolutions before pooling (6 for 3D)."""
        return 3 * (self.temporal_kernel - 1)

    @property
    def attention_size(self) -> int:
        return self.input_size // 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**d)


# What each architecture field may hold: (kind, lowest, highest). A checkpoint's header or a
# ``train --config`` file is checked against these before anything is built, so that a field
# asking for a 160 GB layer (or a negative one, or a word) is a one-line error, not a traceback.
_INT, _FLOAT, _INTS = "a whole number", "a number", "a list of whole numbers"
LIMITS: dict[str, tuple[str, float, float]] = {
    "clip_steps": (_INT, 1, 256), "rate": (_FLOAT, 0.1, 100.0),
    "audio_features": (_INT, 88, 88), "audio_window": (_FLOAT, 0.5, 60.0),
    "audio_hidden": (_INT, 1, 4096), "audio_layers": (_INT, 1, 16),
    "audio_attention_hidden": (_INT, 1, 4096), "audio_norm_prior": (_FLOAT, 0.0, 3600.0),
    "audio_lookahead": (_INT, 0, 256),
    "channels": (_INT, 1, 3), "input_size": (_INT, 8, 512),
    "encoder_channels": (_INTS, 1, 1024), "convlstm_hidden": (_INT, 1, 1024),
    "c3d_channels": (_INTS, 1, 2048), "fc_hidden": (_INT, 1, 16384),
    "visual_z": (_INT, 1, 16384), "dropout": (_FLOAT, 0.0, 0.99),
}
_FLAGS = ("audio_attention", "visual_attention", "batch_norm")


def _check_fields(cfg: ModelConfig) -> None:
    """Every architecture field of the type and within the range it may take (``LIMITS``)."""
    for name, (kind, low, high) in LIMITS.items():
        value = getattr(cfg, name)
        items = value if kind == _INTS and isinstance(value, list) else [value]
        whole = kind != _FLOAT
        ok = (kind != _INTS or (isinstance(value, list) and 0 < len(value) <= 8)) and all(
            isinstance(v, int if whole else (int, float)) and not isinstance(v, bool)
            and low <= v <= high for v in items)
        if not ok:
            span = f"{low:g}" if low == high else f"from {low:g} to {high:g}"
            raise ValueError(f"{name} must be {kind} {span}, not {value!r}")
    for name in _FLAGS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false, not {getattr(cfg, name)!r}")
    if not isinstance(cfg.targets, list) or not cfg.targets or \
            not all(isinstance(t, str) and t for t in cfg.targets):
        raise ValueError(f"targets must be a list of names, not {cfg.targets!r}")
    if not isinstance(cfg.fusion_weights, dict):
        raise ValueError(f"fusion_weights must be an object, not {cfg.fusion_weights!r}")
    for name in ("modality", "audio_norm", "visual_backbone", "fusion"):
        if not isinstance(getattr(cfg, name), str):
            raise ValueError(f"{name} must be a name, not {getattr(cfg, name)!r}")
