"""Stage 4c — batched inference over a whole input: one clip ends at every ``stride``-th step.

The first T-1 steps are padded by repeating step 0 (so every step has a full clip). Audio clips
are gathered from the per-step features. For video, the per-frame work (2D encoder and the 3D
convolutions before temporal pooling) is computed once over a span of frames and sliced into
the overlapping clips; only the ConvLSTM attention and the layers after it run per clip. Memory
is bounded by the span (about 150 frames of 64x64 feature maps), whatever the input's length.
On the CPU the number of torch threads is chosen by measuring (``ThreadChoice``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch

from ._memory import trim_heap
from .model import AVModel

MAX_SPAN_CLIPS = 128  # clip ends per shared-feature span
R = TypeVar("R")


class ThreadChoice:
    """torch's thread count for the model's work on the CPU, chosen by timing it. Alone on a
    machine, torch's threads share the work; beside other busy processes they wait for each
    other at every step (OpenMP), so one thread is faster: on this project's 2-core machine a
    10-minute video's model stage took 3.8 s with 2 threads and 6.6 s with 1 when alone, but
    29 s with 2 and 6.4 s with 1 beside one busy process. Every ``every`` units of work (clip
    batches of one size) the second is timed with every thread and the third with one, and
    the faster count per clip is kept until the next such pair (also for the work between, and
    for the next file: one per process and thread count, ``for_threads``). At most ``most``
    threads (torch's count when it was made); ``restore`` sets that count back."""

    def __init__(self, most: int, every: int = 32):
        self.most = most
        self.best = most
        self.every = every
        self.units = 0
        self.timed: dict[int, float] = {}

    def apply(self) -> None:
        """Set the chosen count (for work between timed units)."""
        if torch.get_num_threads() != self.best:
            torch.set_num_threads(self.best)

    def __call__(self, work: Callable[[], R], size: int) -> R:
        """``work()``, a unit of ``size`` clips, under the chosen count, or timed to choose."""
        phase = self.units % self.every
        self.units += 1
        if self.most <= 1 or phase not in (1, 2):  # (unit 0 warms up, at the chosen count)
            self.apply()
            return work()
        threads = self.most if phase == 1 else 1
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        out = work()
        self.timed[threads] = (time.perf_counter() - t0) / max(1, size)
        if phase == 2:
            self.best = 1 if self.timed[1] < self.timed[self.most] else self.most
        return out

    def restore(self) -> None:
        torch.set_num_threads(self.most)

    @classmethod
    def for_threads(cls) -> "ThreadChoice":
        """This process's choice for torch's current thread count."""
        most = torch.get_num_threads()
        return _CHOICES.setdefault(most, cls(most))


_CHOICES: dict[int, ThreadChoice] = {}


@dataclass
class StepPredictions:
    values: np.ndarray  # (K, targets) raw model output at every step
    predicted: np.ndarray  # (K,) bool: a clip ended here (others are interpolated, --stride)
    audio_attention: np.ndarray | None  # (K, T) temporal weights of the clip ending at a step
    visual_attention: np.ndarray | None  # (K, h, w) spatial map at a clip's newest step
    audio_values: np.ndarray | None = None  # (K, targets) the audio head alone
    visual_values: np.ndarray | None = None  # (K, targets) the visual head alone


def clip_ends(n_steps: int, stride: int) -> np.ndarray:
    """Steps at which a clip ends: every ``stride``-th step, and always the last one."""
    ends = np.arange(0, n_steps, max(1, stride))
    if ends[-1] != n_steps - 1:
        ends = np.append(ends, n_steps - 1)
    return ends


def clip_steps(ends: np.ndarray, t: int) -> np.ndarray:
    """(len(ends), T) step indices of each clip, repeating step 0 before the start."""
    return np.maximum(ends[:, None] - (t - 1) + np.arange(t)[None, :], 0)


def audio_sources(n_steps: int, spans: list[tuple[int, int]], ahead: int) -> np.ndarray:
    """(K,) the step at which each step's audio clip ends: inside each utterance of ``spans``
    ((first, last) steps, the last having heard all of it) the step ``ahead`` steps later, not
    past the utterance's last; elsewhere the step itself (``ModelConfig.audio_lookahead``)."""
    out = np.arange(n_steps)
    if ahead > 0:
        for first, last in spans:
            k = np.arange(max(0, first), min(last, n_steps - 1) + 1)
            out[k] = np.minimum(k + ahead, min(last, n_steps - 1))
    return out


RUN_JOIN = 2  # steps: runs of voiced steps this close (one step missing between) are one


def runs(mask: np.ndarray, join: int = RUN_JOIN) -> list[tuple[int, int]]:
    """(first, last) steps of the runs of ``mask``, runs at most ``join`` steps apart joined:
    utterances at the analysis steps' resolution (what the recipes have; annotation finds them
    in the audio's 50 ms loudness, utterances.py)."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    cut = np.flatnonzero(np.diff(idx) > join) + 1
    return [(int(g[0]), int(g[-1])) for g in np.split(idx, cut)]


def _spans(ends: np.ndarray, t: int):
    """Group consecutive clip ends so that each group's frames form one bounded span."""
    i = 0
    while i < len(ends):
        j = i + 1
        while j < len(ends) and j - i < MAX_SPAN_CLIPS and ends[j] - ends[j - 1] < t:
            j += 1
        yield ends[i:j]
        i = j


def _fill(values: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """``values`` placed at rows ``at`` of an n-row array, NaN elsewhere."""
    out = np.full((n,) + values.shape[1:], np.nan, np.float32)
    out[at] = values
    return out


@dataclass
class StepInputs:
    """One recording's inputs to ``Predictor.many`` (the arguments of ``Predictor.steps``)."""

    audio: np.ndarray | None = None
    crops: np.ndarray | None = None
    audio_valid: np.ndarray | None = None
    crop_index: np.ndarray | None = None
    audio_from: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.crops is not None and self.crop_index is None:
            self.crop_index = np.arange(len(self.crops))
        if self.audio is None and self.crop_index is None:
            raise ValueError("predict_steps needs audio features, face crops, or both")

    @property
    def n(self) -> int:
        shown = self.audio if self.audio is not None else self.crop_index
        assert shown is not None  # (checked when made)
        return len(shown)


class _Batches:
    """Clips of several recordings run together: ``add`` queues one unit of clips (tensors
    whose rows are clips) for recording ``i``; once ``cap`` rows are queued (and at ``flush``)
    they run as one call of ``forward`` and its outputs are split back to their recordings.
    ``cap`` 0: every unit runs alone (one recording: the batches it always had)."""

    def __init__(self, forward: Callable[..., tuple], cap: int):
        self.forward, self.cap = forward, cap
        self.pending: list[tuple[int, tuple[torch.Tensor, ...]]] = []
        self.rows = 0
        self.out: dict[int, list[tuple[torch.Tensor, ...]]] = {}

    def add(self, i: int, *unit: torch.Tensor) -> None:
        self.pending.append((i, unit))
        self.rows += len(unit[0])
        if self.rows >= self.cap:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        parts = [u for _, u in self.pending]
        joined = parts[0] if len(parts) == 1 else \
            tuple(torch.cat(column) for column in zip(*parts))
        made = self.forward(*joined)
        sizes = [len(u[0]) for u in parts]
        pieces = zip(*(m.split(sizes) for m in made)) if len(parts) > 1 else [made]
        for (i, _), piece in zip(self.pending, pieces):
            self.out.setdefault(i, []).append(tuple(piece))
        self.pending, self.rows = [], 0

    def joined(self, i: int) -> list[torch.Tensor]:
        """Recording ``i``'s outputs, each concatenated over its units (call after ``flush``)."""
        return [torch.cat(column) for column in zip(*self.out[i])]


@dataclass
class Predictor:
    """A model and how it runs over a whole input: a clip ends at every ``stride``-th step,
    ``batch_size`` clips per forward pass, on ``device``. Built once per annotator (or per
    scoring pass); ``steps`` predicts one recording, ``many`` several at once (their clips
    batched together: a batch of ``batch_size`` clips per recording)."""

    model: AVModel
    stride: int = 1
    batch_size: int = 32
    device: str | torch.device = "cpu"

    def steps(self, audio: np.ndarray | None = None, crops: np.ndarray | None = None,
              audio_valid: np.ndarray | None = None, crop_index: np.ndarray | None = None,
              audio_from: np.ndarray | None = None) -> StepPredictions:
        """Predict every step of one recording from its raw per-step eGeMAPS ``audio`` (K, 88)
        and/or aligned face ``crops`` (K, S, S[, 3]) uint8. The fusion head is used when both
        are given. The audio is first adapted to the recording (``AudioBranch.adapt``, by the
        checkpoint's ``audio_norm``) from its steps with a voice (``audio_valid``: annotation
        passes ``AudioFeatures.heard``, speech inside the audio; all steps if None).
        ``crop_index`` (K,), when given, says which of ``crops`` each step sees (steps without
        a face see the nearest face's crop: no second copy of the crops is made for that).
        ``audio_from`` (K,), when given, is the step at which each step's audio clip ends
        (``audio_sources``: a look-ahead inside utterances); else the step itself."""
        return self.many([StepInputs(audio, crops, audio_valid, crop_index, audio_from)])[0]

    @torch.inference_mode()
    def many(self, inputs: list[StepInputs]) -> list[StepPredictions]:
        """``steps`` of several recordings, their clips run in shared batches (``batch_size``
        clips per recording given: the batch grows with the recordings queued, what a GPU fed
        by many extraction processes wants). Each recording's predictions are its own: only
        the batches are shared."""
        on_cpu = torch.device(self.device).type == "cpu"
        threads = ThreadChoice.for_threads() if on_cpu else None
        try:
            return self._predict(inputs, threads)
        finally:
            if threads is not None:
                threads.restore()

    def _predict(self, inputs: list[StepInputs], threads: ThreadChoice | None
                 ) -> list[StepPredictions]:
        model, device, batch_size = self.model, self.device, self.batch_size
        shared = len(inputs) > 1

        def run(work: Callable[[], R], size: int) -> R:
            return threads(work, size) if threads is not None else work()

        t = model.cfg.clip_steps
        ends_of = [clip_ends(x.n, self.stride) for x in inputs]
        vis, heard = model.visual, model.audio
        ctx = model.cfg.shared_context

        def audio_batch(clips: torch.Tensor) -> tuple:
            assert heard is not None
            return heard(heard.normalise(clips))

        def visual_batch(enc: torch.Tensor, feat: torch.Tensor) -> tuple:
            assert vis is not None
            return run(lambda: _last_map(vis.clip_forward(enc, feat)), len(enc))

        audio_runs = _Batches(audio_batch, batch_size * 8 * len(inputs) if shared else 0)
        visual_runs = _Batches(visual_batch, batch_size * len(inputs) if shared else 0)
        for i, (x, ends) in enumerate(zip(inputs, ends_of)):
            if x.audio is not None:
                if heard is None:
                    raise ValueError("this model has no audio branch")
                feats = torch.from_numpy(heard.adapt(x.audio, x.audio_valid)).to(device)
                if threads is not None:
                    threads.apply()
                audio_ends = ends if x.audio_from is None else x.audio_from[ends]
                for b in range(0, len(ends), batch_size * 8):  # the LSTM is cheap: larger
                    trim_heap()  # batches
                    idx = torch.from_numpy(clip_steps(audio_ends[b:b + batch_size * 8], t))
                    audio_runs.add(i, feats[idx.to(device)])
            if x.crops is not None and x.crop_index is not None:
                if vis is None:
                    raise ValueError("this model has no visual branch")
                for group in _spans(ends, t):
                    trim_heap()  # the previous span's activations, freed: back to the system
                    q0 = int(group[0])  # padded index q = step + T - 1; clip ending at e is
                    # [e, e + T)
                    steps = np.maximum(np.arange(q0, int(group[-1]) + t) - (t - 1), 0)
                    frames = vis.prepare(torch.from_numpy(x.crops[x.crop_index[steps]])
                                         .to(device)).unsqueeze(0)
                    if threads is not None:
                        threads.apply()
                    enc, feat = vis.frame_features(frames)
                    for b in range(0, len(group), batch_size):
                        off = torch.from_numpy(group[b:b + batch_size] - q0).to(device)
                        win = off[:, None] + torch.arange(t, device=device)[None, :]
                        visual_runs.add(i, enc[0][win], feat[0][win[:, : t - ctx]])
        audio_runs.flush()
        visual_runs.flush()
        out = []
        for i, (x, ends) in enumerate(zip(inputs, ends_of)):
            z_audio = z_visual = att_a = att_v = None
            if i in audio_runs.out:
                z_audio, w = audio_runs.joined(i)
                att_a = _fill(w.float().cpu().numpy(), ends, x.n)
            if i in visual_runs.out:
                z_visual, maps = visual_runs.joined(i)
                att_v = _fill(maps.float().cpu().numpy(), ends, x.n)
            out.append(self._heads(z_audio, z_visual, att_a, att_v, ends, x.n))
        return out

    def _heads(self, z_audio: torch.Tensor | None, z_visual: torch.Tensor | None,
               att_a: np.ndarray | None, att_v: np.ndarray | None, ends: np.ndarray,
               n: int) -> StepPredictions:
        """One recording's heads over its clip embeddings, every step interpolated."""
        model = self.model
        steps = np.arange(n)

        def every_step(za, zv) -> np.ndarray:
            pred = model.heads(za, zv).float().cpu().numpy()
            return np.stack([np.interp(steps, ends, pred[:, j]) for j in range(pred.shape[1])],
                            1).astype(np.float32)

        predicted = np.zeros(n, bool)
        predicted[ends] = True
        a_only = every_step(z_audio, None) if z_audio is not None else None
        v_only = every_step(None, z_visual) if z_visual is not None else None
        if a_only is not None and v_only is not None:
            values = every_step(z_audio, z_visual)
        elif a_only is not None:
            values = a_only
        else:
            assert v_only is not None  # one of the two ran
            values = v_only
        return StepPredictions(values, predicted, att_a, att_v, a_only, v_only)


def _last_map(out: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip's embedding and its spatial map at the newest step (a copy: a view would keep
    all T maps alive)."""
    z, att = out
    return z, att[:, -1].clone()


def predict_steps(model: AVModel, audio: np.ndarray | None = None,
                  crops: np.ndarray | None = None, stride: int = 1, batch_size: int = 32,
                  device: str | torch.device = "cpu", audio_valid: np.ndarray | None = None,
                  crop_index: np.ndarray | None = None,
                  audio_from: np.ndarray | None = None) -> StepPredictions:
    """``Predictor(model, stride, batch_size, device).steps(...)`` in one call (training's
    recipes and scripts)."""
    return Predictor(model, stride, batch_size, device).steps(audio, crops, audio_valid,
                                                             crop_index, audio_from)
