"""COCO keypoint AP of decoded people against the crowd their maps were rendered from."""

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.baselines.render import pose_areas


def oks_ap(gt: torch.Tensor, poses: torch.Tensor, scores: torch.Tensor) -> float:
    """AP at OKS 0.50:0.95 (COCOeval's, COCO sigmas) of poses [P, K, 3] with scores [P] against the
    ground truth [N, K, 3] of one image, the OKS scale each person's keypoint box area. Every pose
    counts: COCO's summary keeps a person's 20 best, which caps recall at 20 / N in a bigger crowd."""
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": float(area),
            "bbox": [0, 0, 1, 1],
            "keypoints": person.flatten().tolist(),
            "num_keypoints": int((person[:, 2] > 0).sum()),
        }
        for i, (person, area) in enumerate(zip(gt, pose_areas(gt), strict=True))
    ]
    records = [
        {"image_id": 1, "category_id": 1, "keypoints": p.flatten().tolist(), "score": float(s)}
        for p, s in zip(poses.cpu(), scores.cpu(), strict=True)
    ]
    if not records:
        return 0.0
    truth = COCO()
    truth.dataset = {
        "images": [{"id": 1, "width": 1, "height": 1}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(records), "keypoints")
        evaluator.params.maxDets = [len(records)]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, 0, 0, 0]  # [OKS thresholds, recall points]
    return float(np.mean(precision[precision > -1])) if (precision > -1).any() else 0.0
