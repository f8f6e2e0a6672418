"""The gradio_webrtc video demo on rtcpool: webcam in, boxed faces out.

The seed runs a MobileNet-SSD Caffe net; this project downloads no model files, so the
detector is the Haar frontal-face cascade that OpenCV 4.x bundles
(``haarcascade_frontalface_alt2.xml``, Lienhart's tree-based cascade; OpenCV 5 dropped the
bundled cascades, hence the ``<5`` pin). It searches a 256 px wide gray copy of each frame:
about 20 ms a 640x480 frame on one core of the 2-core machine this was measured on (12 ms
with OpenCV's two threads), against ~100 ms for the scikit-image LBP cascade it replaced.
Like the seed's net, the detector is loaded at module level and does not pickle: each
worker process recovers ``detection`` by re-importing this file (workers/process/loader.py).

Run:  python examples/face_detection/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

from __future__ import annotations

import os

import cv2
import gradio as gr
import numpy as np

from gradio_ext import WebRTC

CASCADE_FILE = cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml"
# Measured on the astronaut test picture, 640x480, one core: alt2 and _default cost the
# same (~20 ms at these settings); alt2 found the face at more sizes and JPEG qualities, and
# neither boxed anything in scikit-image's 17 face-free pictures. So alt2.
DETECT_WIDTH_PX = 256  # faces are searched on a gray copy this wide (4:3 frame: 192 rows)
MIN_FACE_FRACTION = 1 / 6  # smallest face searched, as a fraction of the frame's height
SCALE_FACTOR = 1.15  # search window growth between scales (1.2 missed the face at some sizes)
MIN_NEIGHBOURS = 3  # a face needs more than this many overlapping accepted windows
MARGIN_AT_HALF = 0.5  # last-stage margin that maps to confidence 0.5, see confidence()
BOX_RGB = (0, 255, 0)  # pure green: absent from the test picture, survives VP8 well
BOX_THICKNESS_PX = 4
LABEL_SCALE = 0.7
TIME_LIMIT_S = 90
CONCURRENCY_LIMIT = 2
DEFAULT_PORT = 7860

detector = cv2.CascadeClassifier(CASCADE_FILE)
if detector.empty():
    raise RuntimeError(f"OpenCV could not load its face cascade {CASCADE_FILE}")


def _last_stage_threshold(path: str) -> float:
    """The threshold a window's sum must reach in the cascade's last stage to be accepted."""
    storage = cv2.FileStorage(path, cv2.FILE_STORAGE_READ)  # its nodes are only valid while it lives
    try:
        stages = storage.getNode("cascade").getNode("stages")
        return stages.at(stages.size() - 1).getNode("stageThreshold").real()
    finally:
        storage.release()


LAST_STAGE_THRESHOLD = _last_stage_threshold(CASCADE_FILE)


def confidence(level_weight: float) -> float:
    """How sure the cascade is of a face, 0..1, from its level weight.

    ``detectMultiScale3(..., outputRejectLevels=True)`` keeps only windows that passed every
    stage and gives each face the *level weight* of its best window: the sum its weak
    classifiers voted in the last stage. That sum minus the stage's threshold (the margin,
    >= 0 for an accepted window) says how clearly the window passed: a false alarm scrapes
    through near 0. So: ``margin / (margin + MARGIN_AT_HALF)``: margin 0 -> 0.00,
    0.2 -> 0.29, 0.5 -> 0.50, 1.0 -> 0.67, 2.0 -> 0.80. The astronaut's face (the test
    picture) has a margin of 1.2 to 2.4, 0.71 to 0.83. It reaches 1 only at an infinite
    margin, so a threshold of 1.0 shows no box.
    """
    margin = max(0.0, level_weight - LAST_STAGE_THRESHOLD)
    return margin / (margin + MARGIN_AT_HALF)


def find_faces(image: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Faces in an RGB frame: ((x, y, w, h) in the frame's pixels, confidence)."""
    height, width = image.shape[:2]
    scale = DETECT_WIDTH_PX / width
    small = cv2.resize(
        image, (DETECT_WIDTH_PX, round(height * scale)), interpolation=cv2.INTER_AREA
    )
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    side = round(gray.shape[0] * MIN_FACE_FRACTION)
    boxes, _levels, weights = detector.detectMultiScale3(
        gray,
        scaleFactor=SCALE_FACTOR,
        minNeighbors=MIN_NEIGHBOURS,
        minSize=(side, side),
        outputRejectLevels=True,
    )
    faces = []
    for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=True):
        box = (round(x / scale), round(y / scale), round(w / scale), round(h / scale))
        faces.append((box, confidence(float(weight))))
    return faces


def detection(image: np.ndarray, conf_threshold: float = 0.3) -> np.ndarray:
    """Box every face more confident than ``conf_threshold``; ``image`` is RGB uint8."""
    for (x, y, w, h), conf in find_faces(image):
        if conf <= conf_threshold:
            continue
        cv2.rectangle(image, (x, y), (x + w, y + h), BOX_RGB, BOX_THICKNESS_PX)
        label = f"face: {conf * 100:.0f}%"
        text_y = y - 10 if y - 10 > 15 else y + h + 25
        cv2.putText(image, label, (x, text_y), cv2.FONT_HERSHEY_SIMPLEX, LABEL_SCALE, BOX_RGB, 2)
    return image


css = """.my-group {max-width: 600px !important;}
.my-column {display: flex !important; justify-content: center !important; align-items: center !important;}"""

with gr.Blocks() as demo:
    gr.HTML("<h1 style='text-align: center'>Face Detection Webcam Stream</h1>")
    gr.HTML(
        "<p style='text-align: center'>Each session runs in its own worker process "
        "(rtcpool); faces come from OpenCV's Haar frontal-face cascade.</p>"
    )
    with gr.Column(elem_classes=["my-column"]):
        with gr.Group(elem_classes=["my-group"]):
            image = WebRTC(label="Stream", mode="send-receive", modality="video")
            conf_threshold = gr.Slider(
                label="Confidence Threshold",
                minimum=0.0,
                maximum=1.0,
                step=0.05,
                value=0.30,
            )
        image.stream(
            fn=detection,
            inputs=[image, conf_threshold],
            outputs=[image],
            time_limit=TIME_LIMIT_S,
            concurrency_limit=CONCURRENCY_LIMIT,
        )

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
        css=css,
    )
