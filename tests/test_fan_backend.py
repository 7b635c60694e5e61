"""The optional face-alignment backend, with stand-in weight files made here (random weights
in face-alignment's own architectures, saved where it looks: $TORCH_HOME/hub/checkpoints).
Nothing is downloaded: the downloader is replaced by one that fails."""
import numpy as np
import pytest
import torch

from avemo_cli import demux, faces
from avemo_cli.errors import AvemoError

from conftest import shared_file

fa = pytest.importorskip("face_alignment", reason="optional backend: pip install 'avemo[fan]'")


@pytest.fixture
def no_download(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise RuntimeError(f"test refused a download of {url}")

    import face_alignment.utils

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def stand_in_home(tmp_path_factory):
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    home = tmp_path_factory.mktemp("torch_home")
    ckpts = home / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), ckpts / "2DFAN4-11f355bf06.pth.tar")
    torch.save(s3fd().state_dict(), ckpts / "s3fd-619a316812.pth")
    return home


def test_fan_backend_loads_local_weights_and_returns_68_points(stand_in_home, monkeypatch,
                                                                no_download):
    monkeypatch.setenv("TORCH_HOME", str(stand_in_home))
    backend = faces.make_backend("fan", "cpu")
    assert backend.name == "fan"
    info = demux.probe(shared_file("videos", "WDA_KatieHill_000.mp4"))
    frame = next(iter(demux.iter_frames(info, 4, max_side=256)))
    boxes = backend.detect(frame)
    assert isinstance(boxes, list)
    assert all(len(b) == 4 for b in boxes)
    lm = backend.landmarks(frame, (60.0, 50.0, 200.0, 210.0))
    assert lm.shape == (68, 2)
    assert np.isfinite(lm).all()
    # points come back in frame coordinates: on a uniform image, moving the box moves them
    flat = np.full((720, 720), 128, np.uint8)  # both crops lie wholly inside it
    a = backend.landmarks(flat, (260.0, 260.0, 400.0, 420.0))
    b = backend.landmarks(flat, (320.0, 280.0, 460.0, 440.0))
    assert np.abs((b - a) - [60.0, 20.0]).max() <= 2.0


def test_fan_backend_without_weights_is_a_one_line_error(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(AvemoError) as err:
        faces.make_backend("fan", "cpu")
    msg = str(err.value)
    assert "face-alignment could not load its models" in msg
    assert str(tmp_path) in msg
    assert "\n" not in msg
