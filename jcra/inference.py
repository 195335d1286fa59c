"""A trained checkpoint as a function: images in, people out (what ``jcra predict`` runs).

estimator = PoseEstimator.from_checkpoint("outputs/demo/run/checkpoint.pt")
people = estimator("photo.jpg", score_threshold=0.3)  # a file, read upright as its EXIF orientation says,
# or in memory as stored: a PIL image, numpy [H, W, 3] or torch [3, H, W] uint8
people["keypoints"]  # [N, K, 2] float: x, y in the image's pixels (COCO's: pixel indices)
people["scores"]     # [N] in [0, 1], highest first
fast = PoseEstimator.from_checkpoint(path, device="cuda", precision="bf16")  # under bf16 autocast
"""

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from jcra.data.images import as_rgb_image, read_rgb
from jcra.postprocess import checked_score_threshold


def load_model(checkpoint: str | Path, device: torch.device):
    """The model of a training checkpoint in eval mode, and the checkpoint's data settings."""
    from jcra import build_model
    from train.checkpoint import load_checkpoint, model_overrides
    from train.train import keypoint_layout

    state = load_checkpoint(checkpoint, keys=("model", "model_config", "data_config"))
    needed = {
        "model_config": ("name", "overrides"),
        "data_config": ("keypoint_layout", "val_scale", "max_size"),
    }
    for part, keys in needed.items():
        if not isinstance(state[part], dict) or any(key not in state[part] for key in keys):
            raise ValueError(
                f"checkpoint {checkpoint}: its {part} must hold {', '.join(keys)} (not from train.train?)"
            )
    overrides = {**model_overrides(state), "pretrained": False}  # the weights come from the checkpoint
    if device.type != "cuda":
        overrides["use_fused_kernels"] = False  # Triton needs a GPU; the reference ops run anywhere
    model = build_model(state["model_config"]["name"], **overrides)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:  # a checkpoint written by hand or another version
        raise ValueError(f"checkpoint {checkpoint}: its weights do not fit its model_config: {err}") from err
    layout = keypoint_layout(state["data_config"]["keypoint_layout"])
    if len(layout.sigmas) != model.num_keypoints:
        raise ValueError(
            f"checkpoint {checkpoint}: its model has {model.num_keypoints} keypoints, its keypoint_layout "
            f"{layout.name!r} {len(layout.sigmas)}"
        )
    return model.to(device).eval(), state["data_config"]


def checked_precision(precision: str, name: str = "precision") -> str:
    """``precision`` if it is fp32, bf16 or fp16, else a ValueError naming the argument ``name``."""
    from train.config import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def compile_for_inference(model: torch.nn.Module) -> None:
    """Compile ``model`` (a :class:`jcra.model.JCRA`) in place for inference on batches padded to
    :func:`jcra.data.canvas`: the whole forward, on a GPU replayed as one CUDA graph a canvas and batch
    size. The compile is ``fullgraph=True``: past Dynamo's recompile limit (8 graphs by default) a
    new canvas or batch size raises Dynamo's ``FailOnRecompileLimitHit``. Dynamo checks the inputs
    only (``module_guards=False``): the model must stay as it is, in eval mode."""
    on_gpu = next(model.parameters()).is_cuda
    model.compile_model(mode="reduce-overhead" if on_gpu else None, module_guards=False)


def unlabelled_target(image, num_keypoints: int, image_id) -> dict:
    """A target with no people, so the evaluation transforms can run on an unannotated image."""
    size = torch.tensor([image.height, image.width])
    return {
        "keypoints": torch.zeros(0, num_keypoints, 3),
        "area": torch.zeros(0),
        "iscrowd": torch.zeros(0),
        "image_id": image_id,
        "orig_size": size,
        "size": size.clone(),
    }


class PoseEstimator:
    """A model with its checkpoint's evaluation transform (the short side to its ``val_scale``, the long
    side at most its ``max_size``) and top-k post-processing: no NMS, no grouping. ``layout`` is the
    keypoint layout (names, skeleton) the model was trained on. ``precision``: ``fp32``, or ``bf16`` /
    ``fp16`` autocast around the model (the weights stay as they are).

    ``compile``: compile ``model`` in place (a :class:`jcra.model.JCRA`; ``compile_model``: the whole
    forward, on a GPU replayed as one CUDA graph) and pad each batch to one of at most four canvases,
    each side ``val_scale`` where every image's fits, else ``max_size``: one graph a canvas and batch
    size; past Dynamo's recompile limit (8 graphs by default) a batch of a new shape runs uncompiled,
    with a warning: keep to a few batch sizes. Each first call of those compiles (minutes for R-50 on
    a GPU); every later one runs faster. With ``precision="bf16"`` on a GPU this is the inference the
    end-to-end benchmark times."""

    def __init__(
        self,
        model: torch.nn.Module,
        data_config: dict,
        top_k: int = 100,
        precision: str = "fp32",
        compile: bool = False,
    ):
        from jcra.data import build_transforms
        from jcra.postprocess import PostProcess
        from train.train import keypoint_layout

        self.model, self.precision = model.eval(), checked_precision(precision)
        self.sides = (data_config["val_scale"], data_config["max_size"])  # short side, long side's cap
        self.compiled, self.graph_shapes = compile, set()  # the batch shapes compiled so far
        if compile:
            compile_for_inference(model)
        self.layout = keypoint_layout(data_config["keypoint_layout"])
        self.transforms = build_transforms(
            False,
            flip_pairs=self.layout.flip_pairs,
            scales=[data_config["val_scale"]],
            max_size=data_config["max_size"],
        )
        self.postprocess = PostProcess(top_k)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        device: str | torch.device = "auto",
        top_k: int = 100,
        precision: str = "fp32",
        compile: bool = False,
    ):
        """The estimator of a training checkpoint on ``device``: auto, cpu, cuda, cuda:N, or any
        ``torch.device`` (off CUDA the model runs the reference ops)."""
        from train.distributed import resolve_device

        if not isinstance(device, torch.device):
            device = resolve_device(device, "device")
        return cls(*load_model(checkpoint, device), top_k, precision, compile)

    @torch.no_grad()
    def records(self, images: Sequence, image_ids: Sequence) -> list[dict]:
        """COCO keypoint results (:class:`jcra.postprocess.PostProcess`'s records, ``top_k`` an image) of
        ``images``, run as one batch padded to the largest, each image's under its id."""
        return self.postprocess(*self._run(images, image_ids))

    def __call__(self, images, score_threshold: float = 0.0):
        """The people of one image, or of each of a list of images (one batch): ``keypoints`` [N, K, 2]
        (x, y pixels) and ``scores`` [N], highest first, those scoring at least ``score_threshold``.

        An image is a file path, read upright as its EXIF orientation says (as ``jcra predict`` reads
        it; the keypoints are in that frame), or a PIL image, numpy [H, W, 3] or torch [3, H, W] uint8
        array used as stored: open a phone photo with ``jcra.data.images.read_rgb(path, upright=True)``
        to draw on the frame the keypoints are in."""
        checked_score_threshold(score_threshold)
        batch = list(images) if isinstance(images, list | tuple) else [images]
        keypoints, scores = self.postprocess.people(*self._run(batch, list(range(len(batch)))))
        kept = scores >= score_threshold  # scores sorted: each image's kept people come first
        people = [
            {"keypoints": k[m], "scores": s[m]} for k, s, m in zip(keypoints, scores, kept, strict=True)
        ]
        return people if isinstance(images, list | tuple) else people[0]

    @torch.no_grad()
    def _run(self, images: Sequence, image_ids: Sequence) -> tuple[dict, list, list]:
        """The model's outputs for ``images`` as one padded batch, their (h, w) sizes and ids."""
        from jcra.data import collate, collate_on_canvas
        from train.train import autocast

        if len(images) != len(image_ids) or not images:
            raise ValueError(
                f"images and image_ids must be as many, and not empty: got {len(images)} and {len(image_ids)}"
            )
        pictures = [
            read_rgb(Path(image), upright=True)
            if isinstance(image, str | Path)
            else as_rgb_image(image, f"images[{i}]")
            for i, image in enumerate(images)
        ]
        samples = [
            self.transforms(picture, unlabelled_target(picture, self.model.num_keypoints, i))
            for i, picture in enumerate(pictures)
        ]
        batch, padding_mask, _ = collate_on_canvas(samples, self.sides) if self.compiled else collate(samples)
        weights = next(self.model.parameters())  # a half-precision model gets its own precision's pixels
        with autocast(weights.device, self.precision):
            outputs = self._forward(batch.shape)(
                batch.to(weights.device, weights.dtype), padding_mask.to(weights.device)
            )
        return outputs, [[picture.height, picture.width] for picture in pictures], list(image_ids)

    def _forward(self, shape: torch.Size):
        """The model's compiled call for a batch of ``shape``, or its uncompiled forward where that shape
        would be one graph past Dynamo's recompile limit (which raises under ``fullgraph=True``)."""
        if not self.compiled:
            return self.model
        if self.model.training:  # its graphs, compiled in eval mode, do not guard the mode
            raise RuntimeError(
                "PoseEstimator(compile=True): its model was put in training mode; call .eval()"
            )
        if shape in self.graph_shapes:
            return self.model
        if len(self.graph_shapes) < torch._dynamo.config.recompile_limit:
            self.graph_shapes.add(shape)
            return self.model
        warnings.warn(
            f"PoseEstimator: {len(self.graph_shapes)} batch shapes compiled, Dynamo's recompile limit; a "
            f"batch of shape {tuple(shape)} runs uncompiled (keep to a few batch sizes)",
            stacklevel=3,
        )
        return self.model.forward
