"""Stage 4a — the networks of Lee et al. (2018): audio temporal attention + LSTM, visual
ConvLSTM spatiotemporal attention over a 3D CNN, and concatenation fusion.

Shapes (defaults): a clip is T = 16 analysis steps (4 per second) and predicts its LAST step.

Audio branch  S (B, T, 88) z-scored eGeMAPS
  scores = MLP(S) (B, T); A = softmax over T (eq. 1); Y = T * A * S (eq. 4, mean weight 1)
  4-layer LSTM over Y; its last hidden state is Z^S.
Visual branch I (B, T, C, 64, 64)
  spatial encoder: shared 2D CNN (3x3 conv + ReLU + 2x2 max pool) x 3 -> (T, 32, 8, 8)
  temporal decoder: peephole ConvLSTM (3x3, eq. 2) over T, x2 deconvolution + tanh -> 16x16,
  1x1 projection, spatial softmax per step (eq. 3) -> A^I (B, T, 16, 16)
  recognition 3D CNN: conv3d 32 -> pool(1,2,2) -> conv3d 64 -> pool(1,2,2) -> conv3d 128 at
  16x16, multiplied by A^I (eq. 5, rescaled by H'W') -> pool(2,2,2) -> conv3d 256 at 8x8 ->
  average over time, flattened -> FC -> FC = Z^I.
Fusion        Z = cat(Z^S, Z^I) (eq. 6) -> FC -> [valence, arousal]. Each branch also has its own
  head, used by single-modality models and when one modality is missing from an input.
  ``fusion="weighted"`` replaces the FC by a per-target weighted mean of the two heads, with
  weights stored in the config (for models whose branches were trained apart, on data with no
  paired voice and face, weighted by how well each head was measured to do).

The 3D convolutions before the temporal pooling are "valid" in time (no temporal padding): a
conv output at time j depends on frames j..j+6 only, whichever clip it is computed in. So they
(and the 2D encoder, and the audio attention's per-step scores) are computed once per frame over
a span of steps and sliced into the 16-step clips that end at every step of it, which is exactly
what a per-clip forward computes: annotation (predict.py) and training (train.py) both do this.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import AUDIO_NORMS, FUSIONS, MODALITIES, ModelConfig

__all__ = ["AUDIO_NORMS", "FUSIONS", "MODALITIES", "ModelConfig", "AudioBranch", "VisualBranch",
           "AVModel"]


class AudioBranch(nn.Module):
    """Temporal attention (eq. 1, 4) over eGeMAPS steps followed by a stacked LSTM."""

    mean: torch.Tensor  # buffers: training statistics of the raw features
    std: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.use_attention = cfg.audio_attention
        self.register_buffer("mean", torch.zeros(cfg.audio_features))
        self.register_buffer("std", torch.ones(cfg.audio_features))
        self.score = nn.Sequential(
            nn.Linear(cfg.audio_features, cfg.audio_attention_hidden), nn.Tanh(),
            nn.Linear(cfg.audio_attention_hidden, 1))
        self.lstm = nn.LSTM(cfg.audio_features, cfg.audio_hidden, cfg.audio_layers,
                            batch_first=True)

        self.norm = cfg.audio_norm
        self.prior_steps = cfg.audio_norm_prior * cfg.rate

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    def adapt(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """One recording's raw per-step features (K, F), as ``normalise`` must see them.

        ``global``: unchanged. ``recording``: the recording's own level and range are removed:
        its per-feature mean and standard deviation over its steps with a voice (``valid``:
        ``AudioFeatures.heard``, speech and not silence) are
        estimated with the training statistics as a prior worth ``audio_norm_prior`` seconds,

            m = (n * mean_rec + n0 * mean_train) / (n + n0)
            s^2 = (n * var_rec + n0 * std_train^2) / (n + n0)     (n steps, n0 prior steps)

        and the features are mapped to mean_train + std_train * (x - m) / s, so that
        ``normalise`` yields (x - m) / s. A 2-second clip (8 steps against a 120-step prior)
        keeps nearly all of its own level, so its emotion survives; in a recording of minutes
        the speaker's and microphone's level and range dominate the estimate and are removed.
        Train, eval and annotate all call this once per recording, before cutting clips."""
        values = np.asarray(values, np.float32)
        if self.norm == "global" or len(values) == 0:
            return values
        rows = values if valid is None or not valid.any() else values[valid]
        n, n0 = float(len(rows)), float(self.prior_steps)
        mean_t = self.mean.detach().cpu().numpy().astype(np.float64)
        std_t = self.std.detach().cpu().numpy().astype(np.float64)
        m = (n * rows.mean(0) + n0 * mean_t) / (n + n0)
        var = (n * rows.var(0) + n0 * std_t ** 2) / (n + n0)
        s = np.sqrt(np.maximum(var, 1e-12))
        # mean_t + std_t * (x - m) / s, as one float32 multiply-add over the recording
        scale = std_t / s
        return values * scale.astype(np.float32) + (mean_t - m * scale).astype(np.float32)

    def step_scores(self, s: torch.Tensor) -> torch.Tensor | None:
        """Per-step work, shareable between overlapping clips: s (..., F) normalised features
        -> attention scores (...) before the softmax (None without attention)."""
        return self.score(s).squeeze(-1) if self.use_attention else None

    def clip_forward(self, s: torch.Tensor, scores: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-clip work: s (B, T, F) and its ``step_scores`` (B, T) -> Z^S (B, H), weights."""
        t = s.shape[1]
        if scores is not None:
            weights = torch.softmax(scores, dim=1)
            s = s * (weights * t).unsqueeze(-1)
        else:
            weights = torch.full(s.shape[:2], 1.0 / t, dtype=s.dtype, device=s.device)
        _, (h, _) = self.lstm(s)
        return h[-1], weights

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s: (B, T, F) normalised features -> Z^S (B, H), attention weights (B, T)."""
        return self.clip_forward(s, self.step_scores(s))


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM with peephole connections (Shi et al. 2015; the paper's eq. 2)."""

    def __init__(self, cin: int, hidden: int, size: int):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(cin + hidden, 4 * hidden, 3, padding=1)
        self.w_ci = nn.Parameter(torch.zeros(1, hidden, size, size))
        self.w_cf = nn.Parameter(torch.zeros(1, hidden, size, size))
        self.w_co = nn.Parameter(torch.zeros(1, hidden, size, size))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden, x.shape[2], x.shape[3])
            state = (z, z)
        h, c = state
        i, f, g, o = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        i = torch.sigmoid(i + self.w_ci * c)
        f = torch.sigmoid(f + self.w_cf * c)
        c = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.w_co * c)
        h = o * torch.tanh(c)
        return h, (h, c)


class VisualBranch(nn.Module):
    """ConvLSTM spatiotemporal attention (eq. 2, 3) applied to a 3D CNN's feature map (eq. 5)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        blocks, cin = [], cfg.channels
        for c in cfg.encoder_channels:
            blocks += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.encoder = nn.Sequential(*blocks)
        enc_size = cfg.input_size // 2 ** len(cfg.encoder_channels)
        self.use_attention = cfg.visual_attention
        self.convlstm = ConvLSTMCell(cin, cfg.convlstm_hidden, enc_size)
        ups, size = [], enc_size
        while size < cfg.attention_size:
            ups += [nn.ConvTranspose2d(cfg.convlstm_hidden, cfg.convlstm_hidden, 2, stride=2),
                    nn.Tanh()]
            size *= 2
        self.decoder = nn.Sequential(*ups)
        self.project = nn.Conv2d(cfg.convlstm_hidden, 1, 1)

        kt = cfg.temporal_kernel
        c1, c2, c3, c4 = cfg.c3d_channels
        k = (kt, 3, 3)
        pad = (0, 1, 1)  # valid in time (see the module docstring), same in space
        self.conv1 = nn.Conv3d(cfg.channels, c1, k, padding=pad)
        self.conv2 = nn.Conv3d(c1, c2, k, padding=pad)
        self.conv3 = nn.Conv3d(c2, c3, k, padding=pad)
        self.pool3 = nn.MaxPool3d((2, 2, 2) if kt > 1 else (1, 2, 2))
        self.conv4 = nn.Conv3d(c3, c4, k, padding=pad)
        # optional batch normalisation; in eval mode a per-channel affine map, so per-frame
        # features stay shareable between clips
        norm = (lambda c: nn.BatchNorm3d(c)) if cfg.batch_norm else (lambda c: nn.Identity())
        self.bn1, self.bn2, self.bn3, self.bn4 = norm(c1), norm(c2), norm(c3), norm(c4)
        # conv4's map, averaged over time, is flattened into FC1: where on the face a feature
        # is matters (a smile sits low), which global spatial pooling would throw away
        self.fc1 = nn.Linear(c4 * (cfg.input_size // 8) ** 2, cfg.fc_hidden)
        self.fc2 = nn.Linear(cfg.fc_hidden, cfg.visual_z)
        self.dropout = nn.Dropout(cfg.dropout)

    @staticmethod
    def prepare(crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops (..., S, S) or (..., S, S, 3) -> float (..., C, S, S) in [-1, 1]."""
        x = crops.float() / 127.5 - 1.0
        return x.unsqueeze(-3) if x.shape[-1] != 3 else x.movedim(-1, -3)

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame work, shareable between overlapping clips.

        frames: (B, N, C, S, S) -> encoder maps (B, N, E, s, s) and the conv3 map
        (B, N - ctx, C3, S/4, S/4), where element j of the latter depends on frames j..j+ctx.
        """
        b, n = frames.shape[:2]
        enc = self.encoder(frames.flatten(0, 1)).unflatten(0, (b, n))
        x = frames.transpose(1, 2)  # (B, C, N, S, S)
        x = F.max_pool3d(F.relu(self.bn1(self.conv1(x))), (1, 2, 2))
        x = F.max_pool3d(F.relu(self.bn2(self.conv2(x))), (1, 2, 2))
        x = F.relu(self.bn3(self.conv3(x)))
        return enc, x.transpose(1, 2)

    def attention(self, enc: torch.Tensor) -> torch.Tensor:
        """enc: (B, T, E, s, s) -> A^I (B, T, S/4, S/4), each step summing to 1 (eq. 3)."""
        state, maps = None, []
        for t in range(enc.shape[1]):
            h, state = self.convlstm(enc[:, t], state)
            maps.append(self.project(self.decoder(h)))
        logits = torch.cat(maps, 1)  # (B, T, h, w)
        b, t, hh, ww = logits.shape
        return torch.softmax(logits.flatten(2), -1).view(b, t, hh, ww)

    def clip_forward(self, enc: torch.Tensor, feat: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-clip work: enc (B, T, ...), feat (B, T - ctx, C3, h, w) -> Z^I (B, z), A^I."""
        b, t = enc.shape[:2]
        hh, ww = feat.shape[-2:]
        if self.use_attention:
            att = self.attention(enc)
            # a conv3 output spans ctx + 1 frames: weight it by their mean attention map
            span = t - feat.shape[1] + 1
            a = F.avg_pool1d(att.flatten(2).transpose(1, 2), span, stride=1)  # (B, hw, T')
            a = a.transpose(1, 2).reshape(b, -1, 1, hh, ww) * (hh * ww)
            feat = feat * a
        else:
            att = torch.full((b, t, hh, ww), 1.0 / (hh * ww), device=feat.device,
                             dtype=feat.dtype)
        x = self.pool3(feat.transpose(1, 2))
        x = F.relu(self.bn4(self.conv4(x))).mean(dim=2).flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        z = F.relu(self.fc2(x))
        return z, att

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: (B, T, C, S, S) float -> Z^I (B, z), A^I (B, T, h, w)."""
        enc, feat = self.frame_features(frames)
        return self.clip_forward(enc, feat)


class AVModel(nn.Module):
    """The audio-visual network with a head per branch and a fusion head (modality "av")."""

    fusion_weights: torch.Tensor  # buffer (weighted fusion): (targets, 2)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n = len(cfg.targets)
        self.audio = AudioBranch(cfg) if cfg.has_audio else None
        self.visual = VisualBranch(cfg) if cfg.has_visual else None
        self.audio_head = nn.Linear(cfg.audio_hidden, n) if cfg.has_audio else None
        self.visual_head = nn.Linear(cfg.visual_z, n) if cfg.has_visual else None
        self.fusion = nn.Linear(cfg.audio_hidden + cfg.visual_z, n) \
            if cfg.modality == "av" and cfg.fusion == "learned" else None
        if cfg.fusion == "weighted":  # (targets, 2): each row [audio, visual], summing to 1
            w = torch.tensor([cfg.fusion_weights[t] for t in cfg.targets], dtype=torch.float32)
            self.register_buffer("fusion_weights", w / w.sum(1, keepdim=True), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (the paper's initialisation)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LSTM):
                for name, p in m.named_parameters():
                    (nn.init.xavier_uniform_ if "weight" in name else nn.init.zeros_)(p)

    def heads(self, z_audio: torch.Tensor | None, z_visual: torch.Tensor | None
              ) -> torch.Tensor:
        """The prediction from whatever branch outputs there are (fusion when both)."""
        if z_audio is not None and z_visual is not None:
            if self.fusion is None:  # weighted: each target a weighted mean of the two heads
                w = self.fusion_weights.to(z_audio.dtype)
                return (self.audio_pred(z_audio) * w[:, 0] + self.visual_pred(z_visual) * w[:, 1])
            return self.fusion(self.dropout(torch.cat([z_audio, z_visual], 1)))
        if z_audio is not None:
            return self.audio_pred(z_audio)
        if z_visual is not None:
            return self.visual_pred(z_visual)
        raise ValueError("no input")

    def audio_pred(self, z_audio: torch.Tensor) -> torch.Tensor:
        """The audio head's prediction from the audio branch's output."""
        if self.audio_head is None:
            raise ValueError("this model has no audio branch")
        return self.audio_head(self.dropout(z_audio))

    def visual_pred(self, z_visual: torch.Tensor) -> torch.Tensor:
        """The visual head's prediction from the visual branch's output."""
        if self.visual_head is None:
            raise ValueError("this model has no visual branch")
        return self.visual_head(self.dropout(z_visual))

    def forward(self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """audio: (B, T, 88) raw eGeMAPS; video: (B, T, C, S, S) prepared frames.

        Returns ``pred`` (B, targets) from the fusion head when both are given, else from the
        given branch's head, plus each branch's own prediction and attention when it ran.
        """
        out: dict[str, torch.Tensor] = {}
        za = zv = None
        if audio is not None:
            if self.audio is None:
                raise ValueError("this model has no audio branch")
            za, out["audio_attention"] = self.audio(self.audio.normalise(audio))
        if video is not None:
            if self.visual is None:
                raise ValueError("this model has no visual branch")
            zv, out["visual_attention"] = self.visual(video)
        return {**out, **self.predictions(za, zv)}

    def predictions(self, z_audio: torch.Tensor | None, z_visual: torch.Tensor | None
                    ) -> dict[str, torch.Tensor]:
        """``pred`` from ``heads`` plus each present branch's own head (``audio_pred``,
        ``visual_pred``)."""
        out = {}
        if z_audio is not None:
            out["audio_pred"] = self.audio_pred(z_audio)
        if z_visual is not None:
            out["visual_pred"] = self.visual_pred(z_visual)
        out["pred"] = self.heads(z_audio, z_visual)
        return out
