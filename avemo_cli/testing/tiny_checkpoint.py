"""Build a tiny, randomly initialised checkpoint: the whole pipeline and CLI run with it in CI
and tests without trained weights. Its predictions mean nothing.

    python -m avemo_cli.testing.tiny_checkpoint PATH [--modality av|audio|video] [--seed N]
"""
from __future__ import annotations

import argparse

import torch

from ..checkpoint import save_checkpoint
from ..model import AVModel, ModelConfig


def tiny_config(modality: str = "av", **overrides) -> ModelConfig:
    """The paper's architecture with very small layer widths."""
    settings: dict = dict(
        modality=modality, audio_hidden=8, audio_layers=4, audio_attention_hidden=8,
        encoder_channels=[4, 8, 8], convlstm_hidden=8, c3d_channels=[4, 8, 8, 8],
        fc_hidden=16, visual_z=8,
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def tiny_model(modality: str = "av", seed: int = 0, **overrides) -> AVModel:
    torch.manual_seed(seed)
    model = AVModel(tiny_config(modality, **overrides))
    if model.audio is not None:
        # rough eGeMAPS scales, so z-scored inputs are of order one (not trained statistics)
        model.audio.std.fill_(10.0)
    return model.eval()


def make_tiny_checkpoint(path, modality: str = "av", seed: int = 0, **overrides):
    model = tiny_model(modality, seed, **overrides)
    return save_checkpoint(path, model, provenance={
        "note": "tiny randomly initialised model for tests; its predictions mean nothing",
        "seed": seed})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--modality", default="av", choices=["av", "audio", "video"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(make_tiny_checkpoint(args.path, args.modality, args.seed))


if __name__ == "__main__":
    main()
