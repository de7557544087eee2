"""real/live_view.py: what the operator's window shows, and that it stays off without a display."""
import numpy as np

from real.live_view import LiveView, ViewState, compose, draw_chunk_inset


def test_the_inset_draws_the_chunk_top_down_around_the_ee():
    ee = np.array([0.5, 0.0, 0.2])
    chunk = np.array([[0.52, 0.0, 0.2], [0.5, 0.03, 0.2]])  # 2 cm forward, then 3 cm left
    img = draw_chunk_inset(200, ee, chunk, span_m=0.1)  # 1000 px per m
    c = 100
    assert tuple(img[c - 20, c]) == (255, 255, 0)  # forward is up
    assert tuple(img[c, c - 30]) == (255, 255, 0)  # left is left
    assert tuple(img[c, c + 30]) != (255, 255, 0)
    assert img[c, c, 1] == 255  # the EE cross is green


def test_compose_shows_each_camera_the_inset_and_the_status():
    front = np.repeat(np.repeat((np.arange(640) * 255 // 639).astype(np.uint8)[None, :, None], 480, 0), 3, 2)
    wrist = np.full((240, 320, 3), 200, np.uint8)
    state = ViewState(frames={"front": front, "wrist": wrist}, ee_pos=np.zeros(3), chunk=np.zeros((8, 10)),
                      step=42, latency_ms=12.0)
    img = compose(state, height=240)
    assert img.shape == (240 + 24, 320 + 320 + 240, 3)
    assert np.abs(img[120:200, 40:300].astype(int) - front[240:400:2, 80:600:2].astype(int)).max() <= 2  # the front frame, halved
    assert (img[100:200, 360:600] == 200).all()  # the wrist tile, text-free part
    assert img[240:, :].max() > 0  # the status line is written


def test_without_a_display_the_view_is_off_and_harmless(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with LiveView(enabled=True) as view:  # asked for, but nothing to open it on
        assert not view.enabled and view._thread is None
        view.update(step=3, latency_ms=5.0)
        assert view.state.step == 3
    assert view.frames_drawn == 0
