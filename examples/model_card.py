"""The default model's measured numbers in its card and docs, rendered from the metrics file.

    python examples/model_card.py            # rewrite the marked parts of the pages
    python examples/model_card.py --check    # exit 1 (saying which parts) if a page is stale

Every table and figure of the default model's own scores in ``weights/MODEL_CARD.md`` (and the
short summaries in ``docs/models.md`` and the README) sits between ``<!-- metrics: NAME -->``
and ``<!-- /metrics -->`` and is rendered here from ``weights/default_metrics.json`` (written
by ``examples/train_default.py``), so that no page can say something the shipped model's own
run did not measure. Text outside the markers carries no number of the shipped model (the
design runs the card cites name their benchmark).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from avemo_cli.recipes.speech import AUDIO_CONFIG

HERE = Path(__file__).resolve().parents[1]
CARD = HERE / "weights" / "MODEL_CARD.md"
PAGES = [CARD, HERE / "docs" / "models.md", HERE / "docs" / "usage.md", HERE / "README.md"]
METRICS = HERE / "weights" / "default_metrics.json"
CORPORA = {"emodb": "EmoDB", "ravdess": "RAVDESS", "emovo": "EMOVO", "nemo": "nEMO"}
LANGUAGES = {"emodb": "German", "ravdess": "English", "emovo": "Italian", "nemo": "Polish"}
REGION = re.compile(r"(<!-- metrics: (\w+) -->\n?)(.*?)(<!-- /metrics -->)", re.S)


def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def signed(x: float) -> str:
    return f"{x:+.3f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{round(100 * x)}%"


def va(s: dict) -> str:
    return f"{f3(s['valence_ccc'])} / {f3(s['arousal_ccc'])}" if s else "-"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _held(m: dict) -> dict:
    return m["audio_speech"]["held_out"]


UNITS = {"clip": "clip alone (mean of its steps)",
         "clip_speech": "clip alone (mean of its speech steps)",
         "clip_last": "clip alone (its last step)",
         "recording": "block in a joined recording"}


def checkpoint_of(metrics: Path) -> Path:
    """The checkpoint a metrics file describes (the recipe writes ``<stem>_metrics.json``
    beside ``<stem>.safetensors``)."""
    return metrics.with_name(metrics.name.removesuffix("_metrics.json") + ".safetensors")


def header(m: dict, weights: Path = checkpoint_of(METRICS)) -> str:
    from avemo_cli.checkpoint import load_checkpoint

    params = sum(p.numel() for p in load_checkpoint(weights).model.parameters())
    env = m.get("trained_with", {})
    a = m["audio_speech"]
    shown = weights.relative_to(HERE) if weights.is_relative_to(HERE) else weights
    return (f"`{shown}` ({weights.stat().st_size / 1e6:.1f} MB, "
            f"{params / 1e6:.2f} M parameters), trained by `python examples/train_default.py` "
            f"at commit `{(env.get('commit') or '?')[:10]}` (torch {env.get('torch', '?')}, "
            f"{env.get('torch_threads', '?')} threads): the visual branch "
            f"{m['visual_ferplus']['minutes']} min, the audio branch's held-out runs "
            f"{a['cross_validation_minutes']} min and its shipped fit {a['final_minutes']} "
            f"min on this project's 2-core CPU, plus feature extraction the first time.\n")


def design_shipped(m: dict) -> str:
    held = _held(m)["speaker_cv"]
    rows = []
    for key, name in (("network", "**shipped** (this model's run): recording norm, 30 s prior, "
                                  f"{m['audio_speech']['augmented_copies']} augmented copies, "
                                  "speech steps only; each step's audio clip looks "
                                  f"{AUDIO_CONFIG['audio_lookahead']} steps ahead "
                                  "inside its utterance"),
                      ("network_causal", "the same networks, each step's clip ending at the "
                                         "step (the paper's reading; the previous design)"),
                      ("svr", "the SVR probe on single steps")):
        cv = held.get(key)
        if cv:
            rows.append([name, *(f"{va(cv[k]['all'])}, {pct(cv[k]['all']['happy_above_negatives'])}"
                                 for k in ("clip_speech", "clip_last", "recording"))])
    return table(["design", "clip (speech-step mean): valence / arousal CCC, happy",
                  "last step: valence / arousal, happy", "recording: valence / arousal, happy"],
                 rows)


def ferplus(m: dict) -> str:
    v = m["visual_ferplus"]
    t = v["test"]
    return (table(["measure", "value"], [
        ["valence CCC (against vote-expected targets)", f"**{f3(t['valence_ccc'])}**"],
        ["arousal CCC", f3(t["arousal_ccc"])],
        [f"7-class accuracy of the nearest class in the table (FER2013's 7 classes; "
         f"{t['n_test_for_accuracy']} faces whose majority vote is one of them)",
         f"{100 * t['nearest_class_accuracy_7']:.1f}%"]])
        + f"\nFER+ test: {t['n_test']} faces. FER+ valid (all of it, with the selected "
          f"weights): valence CCC {f3(v['valid']['valence_ccc'])}, arousal CCC "
          f"{f3(v['valid']['arousal_ccc'])}. Trained on {v['train_faces']} faces for "
          f"{v['epochs']} epochs; dlib found {pct(v['dlib_detected_share'])} of the faces "
          f"(the rest were landmarked in the centred box).\n")


def speaker_cv(m: dict) -> str:
    cv = _held(m)["speaker_cv"]
    rows = []
    for corpus in ("all", *CORPORA):
        for unit in UNITS:
            s, p = cv["network"].get(unit, {}).get(corpus), cv.get("svr", {}).get(
                unit, {}).get(corpus)
            if not s:
                continue
            who = f"all {s['speakers']} speakers" if corpus == "all" else \
                f"{CORPORA[corpus]} ({s['speakers']})"
            strong = unit == "recording" and corpus == "all"
            rows.append([who, UNITS[unit], f"**{va(s)}**" if strong else va(s),
                         pct(s["happy_above_negatives"]), f"{s['valence_std']:.2f}",
                         va(p) if p else "-", pct(p["happy_above_negatives"]) if p else "-"])
    return table(["scored on", "unit", "network valence / arousal CCC", "happy above negatives",
                  "sd", "SVR valence / arousal CCC", "SVR happy"], rows)


def loco(m: dict) -> str:
    rows = []
    for corpus, name in CORPORA.items():
        res = _held(m).get(f"loco_{corpus}")
        if not res:
            continue
        for unit in UNITS:
            s = res["network"].get(unit, {}).get(corpus)
            p = res.get("svr", {}).get(unit, {}).get(corpus)
            if s:
                rows.append([f"{name} ({LANGUAGES[corpus]})", UNITS[unit], va(s),
                             pct(s["happy_above_negatives"]), pct(s.get("arousal_order")),
                             va(p) if p else "-",
                             pct(p["happy_above_negatives"]) if p else "-",
                             pct(p.get("arousal_order")) if p else "-"])
    return table(["held out (never heard: language, speakers, studio)", "unit",
                  "network valence / arousal CCC", "happy", "arousal: anger > neutral > sadness",
                  "SVR valence / arousal CCC", "SVR happy", "SVR arousal order"], rows)


def _met(value: float, target: float, form: Callable[[float], str] = f3) -> str:
    return f"{form(value)} ({'met' if value >= target else f'**not met**: target {form(target)}'})"


CLIP_TARGET = (0.33, 0.66, 0.9)  # valence CCC, arousal CCC, happy share: a clip alone
RECORDING_TARGET = (0.62, 0.86, 0.9)  # inside a recording of the speaker
ORDER_TARGET = 0.8  # share of a held-out corpus's speakers whose arousal orders the three


def _against(s: dict, goal: tuple[float, float, float]) -> str:
    return (f"valence {_met(s['valence_ccc'], goal[0])}, arousal {_met(s['arousal_ccc'], goal[1])}"
            f", happy above the negatives {_met(s['happy_above_negatives'], goal[2], pct)}")


def targets(m: dict) -> str:
    held = _held(m)["speaker_cv"]
    lines = []
    for unit, goal, what in (("clip_speech", CLIP_TARGET, "Each clip alone (mean of its speech "
                                                          "steps)"),
                             ("recording", RECORDING_TARGET, "Inside a recording of the "
                                                             "speaker (blocks)")):
        s = held["network"][unit]["all"]
        lines.append(f"- **{what}**: {_against(s, goal)}: "
                     f"{sum(s['happy_by_speaker'].values())} of {s['speakers']} speakers.")
        for key, name in (("network_causal", "without the look-ahead"), ("svr", "SVR probe")):
            if held.get(key):
                o = held[key][unit]["all"]
                lines.append(f"  - {name}: {va(o)}, happy {pct(o['happy_above_negatives'])}.")
    lines.append(f"- **Arousal across languages** (each corpus held out whole; a clip alone, "
                 f"the mean of its speech steps; target: anger > neutral > sadness for "
                 f">= {pct(ORDER_TARGET)} of a corpus's speakers):")
    for corpus, name in CORPORA.items():
        res = _held(m).get(f"loco_{corpus}")
        if not res:
            continue
        s = res["network"]["clip_speech"].get(corpus, {})
        gaps = s.get("arousal_gaps", {})
        order = s.get("arousal_order")
        if order is None:
            continue
        worst = sorted((min(g), spk) for spk, g in gaps.items() if min(g) <= 0)
        miss = "; out of order: " + ", ".join(
            f"{spk.split(':')[1]} by {-gap:.2f}" for gap, spk in worst) if worst else ""
        causal = res.get("network_causal", {}).get("clip_speech", {}).get(corpus, {})
        probe = res.get("svr", {}).get("clip_speech", {}).get(corpus, {})
        lines.append(f"  - {name} ({LANGUAGES[corpus]}): {_met(order, ORDER_TARGET, pct)}, "
                     f"{sum(min(g) > 0 for g in gaps.values())} of {len(gaps)} speakers{miss} "
                     f"(without the look-ahead {pct(causal.get('arousal_order'))}, SVR probe "
                     f"{pct(probe.get('arousal_order'))}).")
    lines.append(f"- Over every row of the two tables above, the network's valence CCC is above "
                 f"the probe's in {_above_probe(m)}.")
    return "\n".join(lines) + "\n"


def _above_probe(m: dict) -> str:
    """'X of N rows' where the network's valence CCC beats the SVR probe's (both tables)."""
    wins = total = 0
    for scheme, res in _held(m).items():
        for unit in UNITS:
            for corpus, s in res["network"].get(unit, {}).items():
                p = res.get("svr", {}).get(unit, {}).get(corpus)
                if scheme.startswith("loco_") and corpus != scheme[5:]:
                    continue  # (a held-out corpus's table shows only that corpus)
                if s and p:
                    total += 1
                    wins += s["valence_ccc"] > p["valence_ccc"]
    return f"{wins} of {total} rows"


def cremad(m: dict) -> str:
    a = m["audio_speech"]
    rows = [[str(i + 1), f"`{r['file']}`", r["emotion"], r["crowd_voice_vote"],
             signed(r["valence"]), signed(r["arousal"])]
            for i, r in enumerate(a["cremad_1002"])]
    joined = ", ".join(f"{r['emotion']} ({r['valence']:+.2f})" for r in a["cremad_1002_joined"])
    alone_rank = [r["emotion"] for r in a["cremad_1002"]].index("happiness") + 1
    alone = [r["valence"] for r in a["cremad_1002"]]
    joined_rank = [r["emotion"] for r in a["cremad_1002_joined"]].index("happiness") + 1
    return (table(["rank", "file", "acted emotion", "crowd voice-only vote",
                   "predicted valence", "predicted arousal"], rows)
            + f"\nThe six clips joined into one recording of the speaker rank {joined}. "
              f"Happiness is **{_ordinal(alone_rank)} of six** alone and "
              f"**{_ordinal(joined_rank)}** joined (the target: first). Alone, the six span "
              f"{min(alone):+.2f} to {max(alone):+.2f} in valence.\n")


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}[n]


def videos(m: dict) -> str:
    rows = []
    for v in m["videos"]:
        rows.append([f"`{v['file']}`", f"**{signed(v['valence'])}**",
                     signed(v["audio_head"]["valence"]) if "audio_head" in v else "-",
                     signed(v["visual_head"]["valence"]) if "visual_head" in v else "-",
                     signed(v["arousal"])])
    w = m["fusion"]["weights"]
    return (f"The fused value is {w['valence'][0]:.2f} x audio + {w['valence'][1]:.2f} x visual "
            f"for valence and {w['arousal'][0]:.2f} x audio + {w['arousal'][1]:.2f} x visual "
            f"for arousal where both are there (the voice only at speech steps).\n\n"
            + table(["video", "fused valence", "audio head", "visual head", "fused arousal"],
                    rows))


def fusion(m: dict) -> str:
    f = m["fusion"]
    rows = [[t, f"**{f['weights'][t][0]:.3f}**", f"**{f['weights'][t][1]:.3f}**",
             f3(f["audio_ccc_leave_one_corpus_out"][t]), f3(f["visual_ccc_ferplus_test"][t])]
            for t in ("valence", "arousal")]
    return table(["target", "audio head", "visual head", "audio head's held-out CCC",
                  "visual head's held-out CCC"], rows)


def clip_summary(m: dict) -> str:
    cv = _held(m)["speaker_cv"]
    rows = []
    for unit, name in (("clip", "the mean of all its steps"),
                       ("clip_speech", "the mean of its speech steps"),
                       ("clip_last", "its last step (heard the whole utterance)"),
                       ("recording", "(inside a recording of the speaker, per block)")):
        s, p = cv["network"][unit]["all"], cv.get("svr", {}).get(unit, {}).get("all", {})
        rows.append([name, f"{f3(s['valence_ccc'])} (SVR {f3(p.get('valence_ccc'))})",
                     f"{f3(s['arousal_ccc'])} (SVR {f3(p.get('arousal_ccc'))})",
                     f"{pct(s['happy_above_negatives'])} of speakers "
                     f"(SVR {pct(p.get('happy_above_negatives'))})"])
    return table(["each clip alone, summarised by", "valence CCC", "arousal CCC",
                  "happy above the four negatives"], rows)


def models_summary(m: dict) -> str:
    """docs/models.md's short table."""
    cv = _held(m)["speaker_cv"]["network"]
    rec, sp = cv["recording"]["all"], cv["clip_speech"]["all"]
    loco_ccc = m["fusion"]["audio_ccc_leave_one_corpus_out"]
    w = m["fusion"]["weights"]
    return (table(["the voice, held-out speakers of EmoDB + RAVDESS + EMOVO + nEMO",
                   "valence CCC",
                   "arousal CCC", "happy above anger, fear, disgust, sadness"], [
        ["inside a recording of the speaker (blocks of 10-60 s)", f"{rec['valence_ccc']:.2f}",
         f"{rec['arousal_ccc']:.2f}", f"{pct(rec['happy_above_negatives'])} of speakers"],
        ["each clip alone (1-14 s; mean of its speech rows)", f"{sp['valence_ccc']:.2f}",
         f"{sp['arousal_ccc']:.2f}", f"{pct(sp['happy_above_negatives'])} of speakers"],
        ["a whole corpus never heard (mean over the four, both ways)",
         f"{loco_ccc['valence']:.2f}", f"{loco_ccc['arousal']:.2f}", ""]])
        + f"\nFusion weights (audio / visual): valence {w['valence'][0]:.2f} / "
          f"{w['valence'][1]:.2f}, arousal {w['arousal'][0]:.2f} / {w['arousal'][1]:.2f}. "
          "Mean fused valence of whole files: "
          + ", ".join(f"`{v['file']}` {v['valence']:+.2f} (audio head "
                      f"{v['audio_head']['valence']:+.2f}, visual "
                      f"{v['visual_head']['valence']:+.2f})" for v in m["videos"]) + ".\n")


def sample_line(m: dict) -> str:
    """docs/usage.md's reading of the bundled sample's plot (inline)."""
    v = next(v for v in m["videos"] if v["file"] == "sample.mp4")
    return (f"Valence ends at {v['last_step']['valence']:+.2f} as the face smiles and the voice "
            f"livens (mean {v['valence']:+.2f}: audio head {v['audio_head']['valence']:+.2f}, "
            f"visual head {v['visual_head']['valence']:+.2f}); arousal averages "
            f"{v['arousal']:+.2f}.")


def readme_scores(m: dict) -> str:
    """The README's one sentence (inline)."""
    cv = _held(m)["speaker_cv"]["network"]
    rec, sp = cv["recording"]["all"], cv["clip_speech"]["all"]
    return (f"Held-out speakers: valence CCC {rec['valence_ccc']:.2f} and arousal "
            f"{rec['arousal_ccc']:.2f} inside a recording, {sp['valence_ccc']:.2f} and "
            f"{sp['arousal_ccc']:.2f} on a short clip alone.")


RENDER: dict[str, Callable[[dict], str]] = {
    "header": header, "design_shipped": design_shipped, "ferplus": ferplus,
    "speaker_cv": speaker_cv, "loco": loco, "targets": targets, "cremad": cremad,
    "videos": videos, "fusion": fusion, "clip_summary": clip_summary,
    "models_summary": models_summary, "sample_line": sample_line,
    "readme_scores": readme_scores}


def render(card: str, metrics: dict[str, Any], weights: Path = checkpoint_of(METRICS)) -> str:
    """The card with every marked part re-rendered from ``metrics`` (of the checkpoint
    ``weights``)."""
    parts = {**RENDER, "header": lambda m: header(m, weights)}

    def one(match: re.Match) -> str:
        name = match.group(2)
        if name not in parts:
            raise KeyError(f"the card marks an unknown part: {name}")
        return match.group(1) + parts[name](metrics) + match.group(4)

    return REGION.sub(one, card)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if a page is not what the metrics say")
    ap.add_argument("--pages", type=Path, nargs="+", default=PAGES)
    ap.add_argument("--metrics", type=Path, default=METRICS)
    args = ap.parse_args(argv)
    metrics = json.loads(args.metrics.read_text())
    failed = False
    for page in args.pages:
        text = page.read_text()
        fresh = render(text, metrics, checkpoint_of(args.metrics))
        stale = [name for (_, name, old, _), (_, _, new, _) in
                 zip(REGION.findall(text), REGION.findall(fresh)) if old != new]
        if args.check:
            if stale:
                print(f"{page}: parts not as {args.metrics.name} says: {', '.join(stale)} "
                      f"(run python examples/model_card.py)", file=sys.stderr)
                failed = True
            continue
        if stale:
            page.write_text(fresh)
        print(f"{page}: {len(REGION.findall(text))} parts, rewrote {stale or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
