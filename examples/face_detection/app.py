"""The gradio_webrtc video demo on rtcpool: webcam in, boxed faces out.

The seed runs a MobileNet-SSD Caffe net; this box has no model files to download, so the
detector is the LBP frontal-face cascade that scikit-image ships (an OpenCV-trained
cascade; the OpenCV 5 wheel installed here no longer bundles cascades or their classifier).
Like the seed's net, the detector is loaded at module level and does not pickle: each
worker process recovers ``detection`` by re-importing this file (workers/loader.py).

Run:  python examples/face_detection/app.py   (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
"""

from __future__ import annotations

import math
import os

import cv2
import gradio as gr
import numpy as np
from skimage.data import lbp_frontal_face_cascade_filename
from skimage.feature import Cascade

from gradio_ext import WebRTC

DETECT_WIDTH_PX = 320  # faces are searched on a copy this wide: ~0.1 s a frame on one core
MIN_FACE_FRACTION = 1 / 6  # smallest face searched, as a fraction of the frame's height
SCALE_STEP = 1.05  # search window growth between scales
STEP_RATIO = 1.0  # window stride, relative to the cascade's own step (1: every position)
GROUP_MIN_IOU = 0.3  # accepted windows overlapping at least this much are one face
NEIGHBOUR_SCALE = 4.0  # accepted windows per e-fold of confidence, see confidence()
BOX_RGB = (0, 255, 0)  # pure green: absent from the test picture, survives VP8 well
BOX_THICKNESS_PX = 4
LABEL_SCALE = 0.7
TIME_LIMIT_S = 90
CONCURRENCY_LIMIT = 2
DEFAULT_PORT = 7860

detector = Cascade(lbp_frontal_face_cascade_filename())


def confidence(windows: int) -> float:
    """How sure the cascade is of a face, 0..1, from how many windows agree on it.

    The cascade only accepts or rejects each search window; it gives no score. A real face
    is accepted by many overlapping windows (neighbouring positions and scales), a false
    alarm by one or two -- the same evidence OpenCV's ``minNeighbors`` thresholds. So:
    ``1 - exp(-(windows - 1) / NEIGHBOUR_SCALE)``: 1 window -> 0.00, 2 -> 0.22, 3 -> 0.39,
    5 -> 0.63, 9 -> 0.86; it never reaches 1, so a threshold of 1.0 shows no box.
    """
    return 1.0 - math.exp(-(windows - 1) / NEIGHBOUR_SCALE)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


def find_faces(image: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Faces in an RGB frame: ((x, y, w, h) in the frame's pixels, confidence)."""
    height, width = image.shape[:2]
    scale = DETECT_WIDTH_PX / width
    small = cv2.resize(
        image, (DETECT_WIDTH_PX, round(height * scale)), interpolation=cv2.INTER_AREA
    )
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    side = max(detector.window_width, round(gray.shape[0] * MIN_FACE_FRACTION))
    found = detector.detect_multi_scale(
        img=gray,
        scale_factor=SCALE_STEP,
        step_ratio=STEP_RATIO,
        min_size=(side, side),
        max_size=gray.shape[:2],
        # every accepted window, unmerged: we group them ourselves to count them
        min_neighbor_number=0,
        intersection_score_threshold=1.01,
    )
    windows = [(d["c"], d["r"], d["width"], d["height"]) for d in found]
    groups: list[list[tuple[int, int, int, int]]] = []
    for win in windows:
        for group in groups:
            if any(_iou(win, other) >= GROUP_MIN_IOU for other in group):
                group.append(win)
                break
        else:
            groups.append([win])
    faces = []
    for group in groups:
        x, y, w, h = (sum(v) / len(group) / scale for v in zip(*group, strict=True))
        faces.append(((round(x), round(y), round(w), round(h)), confidence(len(group))))
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
        "(rtcpool); faces come from scikit-image's LBP frontal-face cascade.</p>"
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
