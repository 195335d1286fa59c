"""COCO-format keypoint data: layouts, the dataset, transforms, batching, and the synthetic default."""

from jcra.data import keypoint_layouts
from jcra.data.coco import CocoKeypoints
from jcra.data.collate import canvas, collate, collate_on_canvas
from jcra.data.keypoint_layouts import KeypointLayout, get_layout
from jcra.data.transforms import build_transforms

__all__ = [
    "CocoKeypoints",
    "KeypointLayout",
    "build_transforms",
    "canvas",
    "collate",
    "collate_on_canvas",
    "get_layout",
    "keypoint_layouts",
]
