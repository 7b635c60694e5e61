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
