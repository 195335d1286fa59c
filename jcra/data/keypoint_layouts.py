"""Keypoint layouts of the supported datasets: names, OKS sigmas, left/right flip pairs, skeleton.

Indices are 0-based. Sigmas are COCOeval's (COCO) and crowdposetools' (CrowdPose), shared with the
OKS kernels so training, matching and evaluation use one table.
"""

from dataclasses import dataclass

from kernels.oks import COCO_SIGMAS, CROWDPOSE_SIGMAS


@dataclass(frozen=True)
class KeypointLayout:
    """names: K keypoint names; sigmas: K OKS sigmas; flip_pairs: (left, right) index pairs swapped by a
    horizontal flip; skeleton: (i, j) index pairs drawn as limbs."""

    name: str
    names: tuple[str, ...]
    sigmas: tuple[float, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def check_order(self, names, source) -> None:
        """ValueError naming ``source`` when ``names`` (an annotation file's keypoint names, in its
        order) puts a keypoint of this layout at another index: flips would swap the wrong joints and
        OKS would use the wrong sigmas. Names the layout does not know are not checked."""
        for index, name in enumerate(names or ()):
            if name in self.names and self.names.index(name) != index:
                raise ValueError(
                    f"{source} lists keypoint {index} as {name!r}, which keypoint_layout {self.name!r} "
                    f"has at index {self.names.index(name)}; its order: {list(self.names)}"
                )

    @property
    def flip_index(self) -> list[int]:
        """[K] with mirrored[k] = original[flip_index[k]]: the keypoint order of a mirrored image."""
        return flip_permutation(self.flip_pairs, self.num_keypoints)


def flip_permutation(flip_pairs, size: int = 0) -> list[int]:
    """perm with flipped[k] = original[perm[k]]: ``flip_pairs`` swapped, every other keypoint below
    ``size`` (or the highest paired one) in place."""
    size = max([size] + [max(pair) + 1 for pair in flip_pairs])
    perm = list(range(size))
    for left, right in flip_pairs:
        perm[left], perm[right] = right, left
    return perm


_SIDES = ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")

COCO = KeypointLayout(
    name="coco",
    names=("nose", "left_eye", "right_eye", "left_ear", "right_ear")
    + tuple(f"{side}_{part}" for part in _SIDES for side in ("left", "right")),
    sigmas=tuple(COCO_SIGMAS.tolist()),
    flip_pairs=tuple((k, k + 1) for k in range(1, 17, 2)),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
)  # fmt: skip
"""COCO 2017 person keypoints (also OCHuman's); the skeleton is the annotation file's, made 0-based."""

CROWDPOSE = KeypointLayout(
    name="crowdpose",
    names=tuple(f"{side}_{part}" for part in _SIDES for side in ("left", "right")) + ("head", "neck"),
    sigmas=tuple(CROWDPOSE_SIGMAS.tolist()),
    flip_pairs=tuple((k, k + 1) for k in range(0, 12, 2)),
    skeleton=(
        (12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (0, 6), (1, 7), (6, 7),
        (6, 8), (8, 10), (7, 9), (9, 11),
    ),
)  # fmt: skip
"""CrowdPose's 14 keypoints: twelve limb joints, then head top and neck."""

LAYOUTS = {"coco": COCO, "ochuman": COCO, "crowdpose": CROWDPOSE}


def get_layout(name: str) -> KeypointLayout:
    """The layout called ``name`` (``coco``, ``ochuman`` or ``crowdpose``)."""
    if name not in LAYOUTS:
        raise ValueError(f"keypoint_layout must be one of {sorted(LAYOUTS)}, got {name!r}")
    return LAYOUTS[name]


def layout_for(num_keypoints: int) -> KeypointLayout:
    """The layout with ``num_keypoints`` keypoints (17: COCO, 14: CrowdPose)."""
    for layout in (COCO, CROWDPOSE):
        if layout.num_keypoints == num_keypoints:
            return layout
    raise ValueError(f"no keypoint layout has {num_keypoints} keypoints (known: 17 COCO, 14 CrowdPose)")
