"""Atomic writes (files.py): a file replaced only on success, stale temporaries removed."""
import pytest



def test_atomic_path_replaces_only_on_success(tmp_path):
    from avemo_cli.files import atomic_path

    target = tmp_path / "sub" / "out.png"
    with atomic_path(target, ".png") as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.endswith(".png")
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target, ".png") as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "first"  # the earlier complete file is kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from avemo_cli.files import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "v.avemo.csv"
    stale = [tmp_path / f".v.avemo.csv.tmp{dead}", tmp_path / f".v.avemo.png.tmp{dead}.png"]
    live = tmp_path / f".v.avemo.csv.tmp{os.getpid()}"  # a run still writing it
    other = tmp_path / f".w.avemo.csv.tmp{dead}"  # another input's: not this output's business
    for p in (*stale, live, other):
        p.write_text("half")
    assert remove_stale_temporaries(out) == [stale[0]]
    assert remove_stale_temporaries(tmp_path / "v.avemo.png") == [stale[1]]
    assert live.exists()
    assert other.exists()
    assert not any(p.exists() for p in stale)
