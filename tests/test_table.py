"""The per-frame table (table.py): step values to frame rows."""
import numpy as np

from avemo_cli.table import COLUMNS


from conftest import frame_table


def test_frame_table_interpolates_to_frames_and_takes_nearest_flags():
    values = np.array([[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]], np.float32)  # 3 steps at 4 Hz
    face = np.array([True, False, True])
    voice = np.array([True, True, False])
    times = np.arange(13) / 25.0  # 0 .. 0.48 s at 25 fps
    t = frame_table(values, ["valence", "arousal"], 4.0, face, voice, times)
    assert list(t.columns) == COLUMNS
    assert len(t) == 13
    assert t.valence.max() == 1.0  # clipped to [-1, 1]
    assert np.isclose(t.valence[3], 0.48)  # 0.12 s between steps 0 and 1
    assert list(t.face[:5]) == [1, 1, 1, 1, 0]
    assert t.voice.iloc[-1] == 0
    audio_only = frame_table(values[:, :1], ["valence"], 4.0, ~face, voice)
    assert len(audio_only) == 3
    assert audio_only.arousal.isna().all()
