"""JCRA: joint coordinate regression and association for multi-person pose estimation."""

from jcra.deformable_attention import MSDeformAttn
from jcra.evaluation import evaluate_keypoints
from jcra.inference import PoseEstimator
from jcra.model import JCRA, build_model

__all__ = ["JCRA", "MSDeformAttn", "PoseEstimator", "build_model", "evaluate_keypoints"]
