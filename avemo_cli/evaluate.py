"""``avemo eval``: RMSE, Pearson CC and CCC of predictions against gold labels.

Predictions are avemo CSVs (``<name>.avemo.csv``); gold is label files of either layout
(``<name>.csv``), matched by name. Each prediction column is interpolated linearly onto the
gold label times (gold times more than half a second past the prediction's end are ignored),
and the metrics are aggregated over sequences (``concat``, AVEC's, or ``mean``).

With ``--weights``, the model annotates the partition's videos into CSVs through annotate's own
code (``pipeline.Annotator.predict`` on the features in the cache, then the ``csv`` writer of
``outputs.py``; post-processing included unless disabled), and those files are scored by the
same code, so both routes give the same numbers on the same predictions.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import metrics as M
from . import outputs
from .cache import FeatureCache, describe_counts, extract_all
from .datasets import LABEL_RANGE, DatasetError, load_dataset, outside_range, read_labels

TARGETS = ("valence", "arousal")
PAST_END = 0.5  # s: gold this far past a prediction's last row is still scored, not beyond


@dataclass
class EvalResult:
    scores: dict[str, dict[str, float]]  # target -> metric -> value
    per_sequence: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    sequences: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    preds: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    golds: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    coverage: dict[str, float] = field(default_factory=dict)  # sequence -> share of gold scored
    warnings: list[str] = field(default_factory=list)  # partial coverage, unmatched files

    def plot(self, folder: str | Path) -> list[Path]:
        """One figure per sequence (predicted against gold over time, like the paper's
        Figure 4) and ``ccc_per_sequence.png``; returns the files written."""
        from .plots import plot_ccc_summary, plot_sequence

        folder = Path(folder)
        out = [plot_sequence(self.preds[n], self.golds[n], self.per_sequence.get(n, {}),
                             folder / f"{n.replace('/', '_')}.png", n)
               for n in self.sequences]
        out.append(plot_ccc_summary(self.per_sequence, folder / "ccc_per_sequence.png",
                                    "CCC per sequence"))
        return out

    def to_json(self, with_sequences: bool = False) -> dict:
        out: dict = {t: v for t, v in self.scores.items()}
        if with_sequences:
            out["sequences"] = self.per_sequence
            out["coverage"] = self.coverage
        return out


def read_prediction(path: Path) -> pd.DataFrame:
    """One avemo CSV, checked: readable, not empty, a numeric ``time`` and target columns."""
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty prediction file") from None
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable prediction file ({exc})") from None
    if "time" not in table.columns:
        raise DatasetError(f"{path}: not an avemo CSV (no time column; found "
                           f"{', '.join(map(str, table.columns)) or 'none'})")
    if table.empty:
        raise DatasetError(f"{path}: no prediction rows")
    if "face_id" in table.columns and table["face_id"].nunique() > 1:
        # several faces (--max-faces): the gold is one person's; face 0 is the one seen longest
        table = table[table["face_id"] == table["face_id"].min()].reset_index(drop=True)
    for col in ["time", *(t for t in TARGETS if t in table.columns)]:
        try:
            table[col] = pd.to_numeric(table[col])
        except (ValueError, TypeError):
            raise DatasetError(f"{path}: non-numeric values in the {col} column") from None
        if np.isinf(table[col].to_numpy(np.float64)).any():
            raise DatasetError(f"{path}: infinite values in the {col} column")
    if table["time"].isna().any():
        raise DatasetError(f"{path}: rows without a time")
    return _in_time_order(table, path)


def _in_time_order(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Rows sorted by time (a shuffled file scores as the ordered one); rows repeating a time
    with the same values kept once, with other values an error naming the first such time."""
    targets = [t for t in TARGETS if t in table.columns]
    table = table.sort_values("time", kind="stable").reset_index(drop=True)
    repeated = table["time"].duplicated(keep=False)
    if repeated.any():
        same = table[repeated].groupby("time")[targets].nunique(dropna=False).le(1).all(axis=1)
        if not same.all():
            first = same.index[~same.to_numpy()][0]
            raise DatasetError(f"{path}: two rows at time {first:g} with different values "
                               f"(one prediction per time)")
        table = table.drop_duplicates("time").reset_index(drop=True)
    return table


def read_predictions(folder: Path) -> dict[str, pd.DataFrame]:
    found = {outputs.stem_of(p, "csv"): p
             for p in sorted(Path(folder).rglob(outputs.pattern("csv")))}
    if not found:
        raise DatasetError(f"{folder}: no {outputs.pattern('csv')} prediction files")
    return {name: read_prediction(p) for name, p in found.items()}


def read_gold(folder: Path) -> dict[str, pd.DataFrame]:
    found = {p.stem: p for p in sorted(Path(folder).rglob("*.csv"))
             if not p.match(outputs.pattern("csv"))}
    if not found:
        raise DatasetError(f"{folder}: no label CSV files")
    gold = {name: read_labels(p) for name, p in found.items()}
    for name, labels in gold.items():
        for t in TARGETS:
            bad = outside_range(labels[t]) if t in labels else None
            if bad is not None:
                lo, hi = LABEL_RANGE
                raise DatasetError(f"{found[name]}: {t} value {bad:g} is outside [{lo:g}, "
                                   f"{hi:g}], the scale avemo writes; rescale the gold labels "
                                   f"(a 0-100 or 1-9 rating?)")
    return gold


def aligned(pred: pd.DataFrame, gold: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Prediction interpolated onto the gold times, and the gold values."""
    gt = gold["time"].to_numpy(np.float64)
    g = gold[target].to_numpy(np.float64)
    col = pred[target].to_numpy(np.float64)
    pt = pred["time"].to_numpy(np.float64)
    ok = ~np.isnan(col)
    if not ok.any():
        return np.full_like(g, np.nan), g
    p = np.interp(gt, pt[ok], col[ok])
    p[gt > pt[ok][-1] + PAST_END] = np.nan
    return p, g


def coverage(pred: pd.DataFrame, gold: pd.DataFrame) -> float:
    """Share of the gold label rows that the prediction covers in time (gold more than
    ``PAST_END`` past the prediction's last row is not scored)."""
    gt = gold["time"].to_numpy(np.float64)
    end = pred["time"].to_numpy(np.float64).max()
    return float(np.mean(gt <= end + PAST_END)) if len(gt) else 0.0


def evaluate(preds: dict[str, pd.DataFrame], golds: dict[str, pd.DataFrame],
             metrics=M.METRICS, how: str = "concat", min_coverage: float = 0.5) -> EvalResult:
    """Score matched sequences. Sequences whose prediction covers less than all of the gold
    are named in ``warnings``; any below ``min_coverage`` is an error. Files without a partner
    are listed in ``unmatched`` (and in ``warnings``)."""
    names = sorted(set(preds) & set(golds))
    only_pred, only_gold = sorted(set(preds) - set(golds)), sorted(set(golds) - set(preds))
    unmatched = sorted(only_pred + only_gold)
    if not names:
        raise DatasetError("no prediction file matches a gold file by name "
                           "(<name>.avemo.csv against <name>.csv)")
    notes = []
    if only_pred:
        notes.append(f"{len(only_pred)} prediction(s) without gold, not scored: "
                     f"{', '.join(only_pred)}")
    if only_gold:
        notes.append(f"{len(only_gold)} gold file(s) without a prediction, not scored: "
                     f"{', '.join(only_gold)}")
    cover = {n: coverage(preds[n], golds[n]) for n in names}
    for n in names:
        if cover[n] < 1.0:
            notes.append(f"{n}: the prediction covers {cover[n]:.0%} of the gold "
                         f"({int(round(cover[n] * len(golds[n])))} of {len(golds[n])} "
                         f"label rows); the rest is not scored")
    low = [n for n in names if cover[n] < min_coverage]
    if low:
        lowest = min(cover[n] for n in low)
        raise DatasetError(f"{', '.join(low)}: the prediction covers less than "
                           f"{min_coverage:.0%} of the gold (lowest {lowest:.0%}); check that "
                           f"they are the same recording, or lower --min-coverage")
    targets = [t for t in TARGETS if any(t in golds[n] and t in preds[n] and
                                         preds[n][t].notna().any() for n in names)]
    for t in TARGETS:
        if t not in targets and any(t in golds[n] for n in names):
            why = "no column" if not any(t in preds[n] for n in names) else "only empty values"
            notes.append(f"{t}: not scored: the predictions have {why} for it")
    pairs = {t: {n: aligned(preds[n], golds[n], t) for n in names
                 if t in golds[n] and t in preds[n]} for t in targets}
    scores = {t: {m: M.aggregate(m, [p for p, _ in pairs[t].values()],
                                 [g for _, g in pairs[t].values()], how) for m in metrics}
              for t in targets}
    per_seq = {n: {t: {m: M.FUNCTIONS[m](*pairs[t][n]) for m in metrics}
                   for t in targets if n in pairs[t]} for n in names}
    for t in targets:
        for n, (p, g) in pairs[t].items():
            ok = ~np.isnan(p) & ~np.isnan(g)
            if ok.sum() < 2:
                notes.append(f"{n}: {t} has {int(ok.sum())} scored row(s); CC and CCC need "
                             f"two or more (nan)")
            elif np.ptp(g[ok]) == 0:
                notes.append(f"{n}: {t} gold is constant ({g[ok][0]:g}); its CC is undefined "
                             f"(nan) and its CCC measures only the offset")
    return EvalResult(scores, per_seq, names, unmatched,
                      {n: preds[n] for n in names}, {n: golds[n] for n in names}, cover, notes)


def evaluate_folders(pred_dir: Path, gold_dir: Path, metrics=M.METRICS, how="concat",
                     min_coverage: float = 0.5) -> EvalResult:
    return evaluate(read_predictions(pred_dir), read_gold(gold_dir), metrics, how, min_coverage)


@dataclass(kw_only=True)
class EvalOptions:
    """What ``evaluate_model`` scores and how: the corpus, the model, the metrics."""

    data: str | Path
    weights: str | Path | None = None  # checkpoint path or shipped name (None: the default)
    layout: str = "avec2017"
    partition: str = "devel"
    split: str | None = None  # generic layout: CSV of name,partition
    postprocess: bool = True  # the checkpoint's post-processing (False: raw model output)
    device: str = "auto"
    faces_backend: str = "dlib"
    cache: str | None = None  # feature cache folder
    jobs: int = 1  # files whose features are extracted in parallel
    metrics: tuple[str, ...] = M.METRICS
    how: str = "concat"  # aggregation over sequences
    save_pred: str | Path | None = None  # keep the predicted CSVs here
    min_coverage: float = 0.5


def predict_partition(options: EvalOptions, out_dir: Path,
                      log: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Annotate a partition's videos into ``out_dir`` (features from the cache, the model
    through ``Annotator.predict``, the CSVs through the ``csv`` writer); returns the gold
    labels of each written sequence, by name (a categorical clip's constant label is laid on
    its prediction's time grid)."""
    from .pipeline import Annotator
    from .settings import AnnotatorSettings

    seqs = [s for s in load_dataset(options.data, options.layout, options.split)
            if s.partition == options.partition]
    labelled = [s for s in seqs if s.labels is not None]
    if not labelled:
        raise DatasetError(f"{options.data}: no labelled {options.partition} sequences to "
                           f"evaluate")
    annotator = Annotator(None if options.weights is None else str(options.weights),
                          AnnotatorSettings(device=options.device,
                                            faces_backend=options.faces_backend,
                                            postprocess=options.postprocess))
    settings = annotator.request
    fc = FeatureCache(options.cache)
    counts = extract_all([s.media for s in labelled], settings, fc, options.jobs)
    log(describe_counts(counts))
    gold = {}
    for s in labelled:
        feats = fc.load(s.media, settings)
        if feats is None:
            log(f"avemo: warning: {s.media}: could not be analysed; skipped")
            continue
        annotation = annotator.predict(feats)
        outputs.write(annotation, {"csv": outputs.output_path(out_dir / s.media.stem, "csv")})
        if s.label_path is not None:
            gold[s.media.stem] = read_labels(s.label_path)
        elif s.labels is not None:
            labels, times = s.labels, annotation.columns["time"]
            gold[s.media.stem] = pd.DataFrame(
                {"time": times, **{t: np.interp(times, labels["time"], labels[t])
                                   for t in TARGETS if t in labels}})
    return gold


def evaluate_model(options: EvalOptions, log: Callable[[str], None] = print) -> EvalResult:
    """Annotate ``options.partition`` with the model and score it against its labels."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(options.save_pred) if options.save_pred else Path(tmp)
        gold = predict_partition(options, out, log)
        preds = read_predictions(out)
        return evaluate({n: preds[n] for n in gold}, gold, options.metrics, options.how,
                        options.min_coverage)
