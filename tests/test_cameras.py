"""real/cameras.py through librealsense's software device, and the shared crop/resize."""
import time

import numpy as np
import pytest

from data.image import centred_crop, fit_image

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and apt libusb-1.0-0) is not installed",
                         exc_type=ImportError)

from real.cameras import (CameraConfig, CameraError, CameraNotFoundError, CameraSet,  # noqa: E402
                          CameraStalledError, RealSenseCamera, SoftwareCamera)

W, H = 160, 120


def _cfg(**kw):
    return CameraConfig(**{"name": "front", "width": W, "height": H, "fps": 60, "out_hw": [32, 32],
                           "stale_after_s": 0.15, **kw})


def _wait(cond, timeout=3.0):
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            return False
        time.sleep(0.005)
    return True


def test_fit_image_crops_centred_then_resizes():
    assert centred_crop((720, 1280), (96, 96)) == (280, 0, 720, 720)
    assert centred_crop((480, 480), (96, 128)) == (0, 60, 480, 360)
    img = np.zeros((720, 1280, 3), np.uint8)
    img[:, :280] = (255, 0, 0)      # cropped away
    img[:, 280:1000] = (0, 200, 0)  # the centred square
    img[:, 1000:] = (0, 0, 255)     # cropped away
    out = fit_image(img, (96, 96))
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8 and (out == (0, 200, 0)).all()
    assert (fit_image(img, (16, 16), crop=(0, 0, 280, 720)) == (255, 0, 0)).all()
    same = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert np.array_equal(fit_image(same, (96, 96)), same)
    with pytest.raises(ValueError, match="outside"):
        fit_image(img, (96, 96), crop=(1000, 0, 720, 720))


def test_software_camera_streams_with_host_timestamps():
    pattern = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    cam = SoftwareCamera(_cfg(), source=lambda: pattern, device_offset_s=1000.0)
    with cam:
        assert _wait(lambda: cam.stats.received >= 20)
        frame = cam.latest()
    assert np.array_equal(frame.color, pattern) and frame.color.flags.writeable
    assert cam.stats.dropped == 0
    # the device clock runs 1000 s ahead of the host's: the mapping finds it to within the transport delay
    assert -1000.0 <= cam.clock.offset < -999.95  # offset = -1000 s + the fastest transport delay
    assert frame.host_s <= frame.arrival_s < frame.host_s + 0.05
    assert cam.policy_image(frame).shape == (32, 32, 3)


def test_dropped_frames_alignment_and_staleness():
    cam = SoftwareCamera(_cfg())
    cam.start(first_frame_timeout_s=None)
    try:
        img = np.zeros((H, W, 3), np.uint8)
        t0 = cam.device_clock()
        for k, (number, dt) in enumerate(((0, 0.00), (1, 0.01), (2, 0.02), (5, 0.05))):  # 3 and 4 never arrive
            img[:] = number
            cam.push(img, device_s=t0 + dt, number=number)
            assert _wait(lambda: cam.stats.received == k + 1), cam.stats  # paced: the pipeline keeps the newest only
        assert cam.stats.dropped == 2
        host = {f.number: f.host_s for f in cam.ring._frames}
        assert cam.frame_before(host[2] + 0.001).number == 2 and cam.frame_before(host[5]).number == 5
        assert cam.frame_before(host[0] - 1.0).number == 5  # nothing that early: the newest there is
        assert int(cam.frame_before(host[1]).color[0, 0, 0]) == 1
        cams = CameraSet([cam])
        images, stamps = cams.observe(host[2] + 0.001)
        assert images["rgb/front"].shape == (32, 32, 3) and stamps["front"] == host[2]
        assert _wait(lambda: cam.is_stale(), timeout=1.0)
        with pytest.raises(CameraStalledError, match="'front' last frame"):
            cams.check()
        cam.push(img)
        assert _wait(lambda: not cam.is_stale(), timeout=1.0)
        cams.check()
    finally:
        cam.stop()


def test_paused_source_goes_stale_and_a_failing_source_is_an_error():
    img = np.zeros((H, W, 3), np.uint8)
    cam = SoftwareCamera(_cfg(), source=lambda: img)
    with cam:
        cam.pause()
        assert _wait(lambda: cam.is_stale(), timeout=1.0)
        cam.pause(False)
        assert _wait(lambda: not cam.is_stale(), timeout=1.0)

    def broken():
        raise OSError("render context lost")

    cam = SoftwareCamera(_cfg(), source=broken)
    with pytest.raises(CameraStalledError, match="no frame within"):
        cam.start(first_frame_timeout_s=0.3)
    with pytest.raises(ValueError, match="expects uint8"):
        SoftwareCamera(_cfg()).push(np.zeros((H, W), np.uint8))


def test_missing_serial_is_named():
    with pytest.raises(CameraNotFoundError, match="serial 123456 is not connected"):
        RealSenseCamera(_cfg(serial="123456")).start()
    with pytest.raises(CameraError, match="is not started"):
        RealSenseCamera(_cfg(serial="123456")).latest()
    with pytest.raises(ValueError, match="within one frame period"):
        CameraConfig(fps=30, stale_after_s=0.02)
