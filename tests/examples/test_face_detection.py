"""The face demo's detector on its own (examples/face_detection/app.py): no Ray, no browser.

The handler is loaded the way a worker loads it (re-importing the app file, since the
cascade does not pickle), then fed the astronaut photograph the other face tests film, and
pictures with no face in them. Every check is on the pixels that come back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.clients.webrtc import synthetic_image
from tests.e2e.conftest import CAMERA_SIZE, face_picture
from workers.process import loader

APP = Path(__file__).resolve().parents[2] / "examples" / "face_detection" / "app.py"
# Hand-measured in face_picture() (640x480): the tip of the astronaut's nose, and a region
# holding her face with the demo's box and label around it, but none of the rest.
NOSE_PX = (280, 110)  # x, y
FACE_REGION = (slice(20, 190), slice(200, 370))  # rows, columns
FACE_WIDTH_PX = (70, 180)  # a box narrower or wider than this is not around her face
MIN_BOX_PIXELS = 1500  # green pixels of a drawn box: its 4 px outline of ~112 px alone is ~1800
DEFAULT_THRESHOLD = 0.3  # the slider's default in the demo
THRESHOLD_STEP = 0.05  # the slider's step
# scikit-image's bundled photographs with no human face (coffee cups, a cat, a rocket, a
# man's back to the camera, coins, a text page, microscopy, textures)
FACE_FREE = ("coffee", "chelsea", "rocket", "camera", "coins", "page", "text", "brick",
             "grass", "gravel", "immunohistochemistry", "hubble_deep_field", "moon", "retina")


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    """The app file's globals, reached through the handler a worker loads."""
    detection = loader.load(loader.HandlerSpec(app_path=str(APP), name="detection"))
    assert detection.__name__ == "detection"
    return detection.__globals__


def green(frame: np.ndarray) -> np.ndarray:
    """The demo's box colour, pure green (exact here: nothing is compressed)."""
    return np.all(frame == (0, 255, 0), axis=-1)


def as_camera(picture: np.ndarray) -> np.ndarray:
    import cv2

    if picture.ndim == 2:
        picture = np.dstack([picture] * 3)
    return cv2.resize(np.ascontiguousarray(picture[..., :3]), CAMERA_SIZE, interpolation=cv2.INTER_AREA)


def test_the_cascade_does_not_pickle_so_workers_reimport_the_app(demo: dict[str, Any]) -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(demo["detector"])


def test_finds_the_astronauts_face_once(demo: dict[str, Any]) -> None:
    faces = demo["find_faces"](face_picture())
    assert len(faces) == 1, faces
    (x, y, w, h), conf = faces[0]
    assert x < NOSE_PX[0] < x + w and y < NOSE_PX[1] < y + h, faces
    assert FACE_WIDTH_PX[0] <= w <= FACE_WIDTH_PX[1], faces
    assert DEFAULT_THRESHOLD < conf < 1.0, faces


def test_boxes_the_face_in_green_with_its_confidence(demo: dict[str, Any]) -> None:
    picture = face_picture()
    assert not green(picture).any(), "the test picture already has the box colour"
    ((_, conf),) = demo["find_faces"](picture)
    out = demo["detection"](picture.copy(), DEFAULT_THRESHOLD)
    boxed = green(out)
    rows, cols = FACE_REGION
    assert boxed[rows, cols].sum() >= MIN_BOX_PIXELS, "no box drawn around the face"
    assert boxed.sum() == boxed[rows, cols].sum(), "green drawn away from the face"
    # the box is an outline: the nose inside it is left as it was
    x, y = NOSE_PX
    assert np.array_equal(out[y - 5 : y + 5, x - 5 : x + 5], picture[y - 5 : y + 5, x - 5 : x + 5])
    # "face: NN%" in the same green: the label is the only green above the box's top edge
    (bx, by, bw, _), _ = demo["find_faces"](picture)[0]
    label = boxed[: by - demo["BOX_THICKNESS_PX"], bx : bx + bw]
    assert label.sum() > 0, f"no label above the box (confidence {conf:.2f})"


def test_the_threshold_decides_which_faces_get_a_box(demo: dict[str, Any]) -> None:
    picture = face_picture()
    ((_, conf),) = demo["find_faces"](picture)
    below = math.floor(conf / THRESHOLD_STEP) * THRESHOLD_STEP  # the highest slider stop that shows it
    assert green(demo["detection"](picture.copy(), below)).sum() >= MIN_BOX_PIXELS
    above = below + THRESHOLD_STEP
    out = demo["detection"](picture.copy(), above)
    assert not green(out).any(), f"boxed at threshold {above:.2f} with confidence {conf:.2f}"
    # the slider's top: nothing qualifies, the frame comes back untouched
    out = demo["detection"](picture.copy(), 1.0)
    assert np.array_equal(out, picture)


@pytest.mark.parametrize("name", FACE_FREE)
def test_no_box_on_a_picture_without_a_face(demo: dict[str, Any], name: str) -> None:
    import skimage.data

    picture = as_camera(getattr(skimage.data, name)())
    out = demo["detection"](picture.copy(), 0.0)  # the lowest threshold: any detection shows
    assert demo["find_faces"](picture) == []
    assert np.array_equal(out, picture)


@pytest.mark.parametrize("picture", ["gradient bars", "flat grey", "black"])
def test_no_box_on_a_synthetic_picture(demo: dict[str, Any], picture: str) -> None:
    width, height = CAMERA_SIZE
    frame = {
        "gradient bars": synthetic_image(width, height),
        "flat grey": np.full((height, width, 3), 128, np.uint8),
        "black": np.zeros((height, width, 3), np.uint8),
    }[picture]
    assert np.array_equal(demo["detection"](frame.copy(), 0.0), frame)


def test_confidence_maps_the_last_stage_margin_into_0_1(demo: dict[str, Any]) -> None:
    confidence, threshold, half = demo["confidence"], demo["LAST_STAGE_THRESHOLD"], demo["MARGIN_AT_HALF"]
    assert confidence(threshold) == 0.0
    assert confidence(threshold - 5.0) == 0.0  # never negative
    assert confidence(threshold + half) == pytest.approx(0.5)
    # the docstring's table
    for margin, expected in ((0.2, 0.29), (1.0, 0.67), (2.0, 0.80)):
        assert confidence(threshold + margin) == pytest.approx(expected, abs=0.005)
    margins = np.linspace(0.0, 1000.0, 2001)
    values = [confidence(threshold + m) for m in margins]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), "not increasing"
    assert max(values) < 1.0, "a threshold of 1.0 would show a box"


def test_a_frame_of_another_size_gets_its_box_in_its_own_pixels(demo: dict[str, Any]) -> None:
    import cv2

    # a 1280x960 camera: the box scales back from the detector's small copy to this frame
    big = cv2.resize(face_picture(), (1280, 960), interpolation=cv2.INTER_CUBIC)
    ((x, y, w, h), _), = demo["find_faces"](big)
    assert x < 2 * NOSE_PX[0] < x + w and y < 2 * NOSE_PX[1] < y + h
    assert 2 * FACE_WIDTH_PX[0] <= w <= 2 * FACE_WIDTH_PX[1]
