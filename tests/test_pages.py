"""The pages and the subtitle track: ``--format vtt`` (parsed here), ``--format html`` and
``avemo status DIR --html``, opened from disk in a real headless Chromium (tests/browser.py)
with the network off, and driven by script: the curves, the cursor following the media, a
click on the curves seeking it, the folder report's rows. Skipped, saying so, where no
Chromium can be had (`.ci/run` installs Debian's)."""
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from avemo_cli.demux import probe

from browser import Browser, find_chromium
from conftest import cli as run, shared_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.mp4"
needs_browser = pytest.mark.skipif(find_chromium() is None,
                                   reason="no Chromium here (apt install chromium)")




@pytest.fixture(scope="module")
def sample_pages(tmp_path_factory):
    """The bundled sample with the shipped default model: csv, vtt and html."""
    out = tmp_path_factory.mktemp("pages")
    code, stdout, err = run("annotate", SAMPLE, "-o", out, "--format", "csv,vtt,html", "-q")
    assert code == 0, err
    return out


def _cues(text: str) -> list[tuple[float, float, list[str]]]:
    """A WebVTT file's cues (start, end, lines); asserts the format as it reads."""
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    blocks = text.strip().split("\n\n")
    assert blocks[0].splitlines()[0] == "WEBVTT"
    cues = []
    for block in blocks[1:]:
        lines = block.splitlines()
        if lines[0].startswith("NOTE"):
            continue
        m = re.fullmatch(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})", lines[0])
        assert m, lines[0]
        cues.append((seconds(m.group(1)), seconds(m.group(2)), lines[1:]))
    return cues


def test_the_subtitle_track_is_valid_webvtt_within_the_media(sample_pages):
    cues = _cues((sample_pages / "sample.avemo.vtt").read_text(encoding="utf-8"))
    duration = probe(SAMPLE).duration
    assert len(cues) == 11  # a cue per second of the 10.56 s sample
    assert all(0 <= a < b <= duration + 1e-6 for a, b, _ in cues)
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(cues, cues[1:]))  # in order
    table = pd.read_csv(sample_pages / "sample.avemo.csv")
    for start, end, lines in cues:
        (line,) = lines  # one face
        m = re.fullmatch(r"face 0  valence ([+-]\d\.\d\d) \[[·|●]{11}\]  "
                         r"arousal ([+-]\d\.\d\d) \[[·|●]{11}\]", line)
        assert m, line
        rows = table[(table.time >= start) & (table.time < end)]
        assert float(m.group(1)) == pytest.approx(rows.valence.mean(), abs=0.05)


@needs_browser
def test_the_file_page_draws_follows_and_seeks_offline(sample_pages, tmp_path):
    page = sample_pages / "sample.avemo.html"
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html
    assert "https://" not in html  # nothing fetched from anywhere
    table = pd.read_csv(sample_pages / "sample.avemo.csv")
    steps = int(round(table.time.max() * 4)) + 1
    with Browser() as b:
        b.call("Network.enable")
        b.call("Network.emulateNetworkConditions", offline=True, latency=0,
               downloadThroughput=-1, uploadThroughput=-1)
        b.open(page.as_uri(), "window.avemoPage && window.avemoPage.ready")
        assert b.eval("document.getElementById('media').tagName") == "VIDEO"
        src = b.eval("document.getElementById('media').getAttribute('src')")
        assert not src.startswith(("/", "file:")), src  # relative, as the EAF's link
        assert b.eval("document.getElementById('media').src") == SAMPLE.resolve().as_uri()
        b.wait_for("document.getElementById('media').readyState >= 2", 20)  # it plays
        assert b.eval("window.avemoPage.drawn['face 0']") == {"valence": steps,
                                                              "arousal": steps}
        for t in (2.0, 7.25):  # the media's time moves the cursor there
            b.eval(f"document.getElementById('media').currentTime = {t}")
            b.wait_for(f"Math.abs(window.avemoPage.cursorTime - {t}) < 0.05", 10)
            assert b.eval("window.avemoPage.cursorX") == \
                pytest.approx(b.eval(f"window.avemoPage.xAt({t})"), abs=0.5)
        box = b.eval("(() => { const r = document.getElementById('curves')"
                     ".getBoundingClientRect(); return [r.left, r.top, r.height]; })()")
        x = box[0] + b.eval("window.avemoPage.xAt(5.0)")
        b.click(x, box[1] + box[2] / 3)  # a click on the curves seeks the media
        b.wait_for("Math.abs(document.getElementById('media').currentTime - 5.0) < 0.15", 10)
        assert "5.0" in b.eval("document.getElementById('readout').textContent")
        shot = b.screenshot(tmp_path / "file_page.png")
    assert shot.stat().st_size > 20_000


@needs_browser
def test_the_folder_report_lists_every_input_with_its_status(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_file("emodb", "03a01Fa.wav"), src / "speech.wav")
    shutil.copy(SAMPLE, src / "sample.mp4")
    (src / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    code, _, err = run("annotate", src, "-o", out, "--format", "csv,html", "-q")
    assert code == 1, err  # the broken one
    code, stdout, err = run("status", out, "--html")
    report = out / "avemo-report.html"
    assert report.exists()
    assert "report written to" in err
    with Browser() as b:
        b.open(report.as_uri(), "window.avemoPage && window.avemoPage.ready")
        assert b.eval("window.avemoPage.rows") == 3
        rows = b.eval("[...document.querySelectorAll('#rows tr')].map(tr => "
                      "[...tr.children].map(td => td.textContent))")
        status = {Path(r[0]).name: r[1] for r in rows}
        assert status == {"broken.mp4": "failed", "sample.mp4": "ok", "speech.wav": "ok"}
        broken = next(r for r in rows if r[0].endswith("broken.mp4"))
        assert "unreadable media" in broken[-1]
        links = b.eval("[...document.querySelectorAll('#rows a')].map(a => a.href)")
        assert sorted(Path(u).name for u in links) == ["sample.avemo.html", "speech.avemo.html"]
        b.eval("document.querySelector('th[data-key=valence]').click()")  # sortable
        order = b.eval("window.avemoPage.order")
        valence = {Path(r[0]).name: float(r[3]) for r in rows if r[3]}
        ranked = sorted(valence, key=valence.get)
        assert [Path(i).name for i in order[:2]] == ranked
        assert order[2].endswith("broken.mp4")
        b.open(links[0], "window.avemoPage && window.avemoPage.ready")  # the link opens
        assert b.eval("document.getElementById('name').textContent") in ("sample.mp4",
                                                                          "speech.wav")


def test_report_links_are_relative_paths_never_a_scheme(tmp_path, tiny_audio_ckpt):
    """An input named ``javascript:alert(document.domain).wav``: its page is linked as
    ``./javascript:...``, a file beside the report, not script a click would run."""
    src = tmp_path / "in"
    src.mkdir()
    name = "javascript:alert(document.domain).wav"
    shutil.copy(shared_file("emodb", "03a01Fa.wav"), src / name)
    out = tmp_path / "out"
    code, _, err = run("annotate", src, "-o", out, "--weights", tiny_audio_ckpt, "-q",
                       "--format", "csv,html")
    assert code == 0, err
    code, _, err = run("status", out, "--html")
    assert code == 0, err
    page = (out / "avemo-report.html").read_text()
    links = re.findall(r'"page":"([^"]*)"', page)
    assert links == ["./javascript:alert(document.domain).avemo.html"], links
    own = (out / "javascript:alert(document.domain).avemo.html").read_text()
    media = re.findall(r'"media":"([^"]*)"', own)
    assert len(media) == 1
    assert not media[0].startswith("javascript:"), media
