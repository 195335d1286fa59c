"""jcra.postprocess: top-k by score, keypoints in original pixels, COCO record layout."""

import json

import numpy as np
import pytest
import torch

from jcra.postprocess import PostProcess, coco_records


def test_records_are_top_k_in_original_pixels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, generator=gen)
    keypoints = torch.rand(2, 6, 3, 2, generator=gen)
    sizes = torch.tensor([[480, 640], [300, 200]])
    records = PostProcess(top_k=4)({"logits": logits, "keypoints": keypoints}, sizes, [7, torch.tensor(9)])
    assert len(records) == 8
    for b, image_id in enumerate((7, 9)):
        mine = [r for r in records if r["image_id"] == image_id]
        order = logits[b].argsort(descending=True)[:4]
        scores = [r["score"] for r in mine]
        torch.testing.assert_close(torch.tensor(scores), logits[b, order].sigmoid())
        for r, q in zip(mine, order.tolist(), strict=True):
            assert r["category_id"] == 1 and isinstance(r["image_id"], int)
            triples = torch.tensor(r["keypoints"]).view(3, 3)
            expected = (
                keypoints[b, q] * torch.tensor([sizes[b, 1], sizes[b, 0]]).float() - 0.5
            )  # pixel indices
            torch.testing.assert_close(triples[:, :2], expected)
            assert (triples[:, 2] == 1).all()


def test_top_k_larger_than_queries_keeps_all():
    out = {"logits": torch.zeros(1, 3), "keypoints": torch.rand(1, 3, 17, 2)}
    assert len(PostProcess(100)(out, torch.tensor([[10, 10]]), [1])) == 3


def test_orig_sizes_may_be_an_array_or_a_list():
    out = {"logits": torch.zeros(1, 3), "keypoints": torch.rand(1, 3, 17, 2)}
    want = PostProcess()(out, torch.tensor([[10, 20]]), [1])
    assert PostProcess()(out, np.array([[10, 20]]), [1]) == want == PostProcess()(out, [[10, 20]], [1])


def test_bad_arguments_raise():
    out = {"logits": torch.zeros(2, 3), "keypoints": torch.rand(2, 3, 17, 2)}
    for top_k in (0, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
            PostProcess(top_k)
    with pytest.raises(ValueError, match="orig_sizes"):
        PostProcess()(out, torch.tensor([[10, 10]]), [1, 2])
    sizes = torch.tensor([[10, 10], [5, 5]])
    # more queries than logits, (x, y, score) triples, or K flattened: each would give wrong records
    for keypoints in (torch.rand(2, 4, 17, 2), torch.rand(2, 3, 17, 3), torch.rand(2, 3, 34)):
        with pytest.raises(ValueError, match=r"keypoints must be \[B=2, Q=3, K, 2\]"):
            PostProcess()({**out, "keypoints": keypoints}, sizes, [1, 2])
    with pytest.raises(ValueError, match="image_ids"):
        PostProcess()(out, torch.tensor([[10, 10], [5, 5]]), [1])
    for bad in (1.5, True, None):
        with pytest.raises(ValueError, match="image_ids must be integers or strings"):
            PostProcess()(out, torch.tensor([[10, 10], [5, 5]]), [1, bad])


def test_non_finite_outputs_name_their_images():
    """NaN scores made results.json invalid JSON without a word; the images are named instead."""
    out = {"logits": torch.zeros(3, 4), "keypoints": torch.rand(3, 4, 17, 2)}
    out["logits"][1, 2] = float("nan")
    out["keypoints"][2, 0, 5, 1] = float("inf")
    out["logits"][0, 1] = float("inf")  # a score of 1
    with pytest.raises(ValueError, match=r"image\(s\) \['b', 'c'\] are NaN or inf"):
        PostProcess()(out, torch.tensor([[10, 10]] * 3), ["a", "b", "c"])


def test_image_ids_keep_their_type():
    """Ints (also as tensors or numpy) become Python ints; string ids stay as the file has them."""
    out = {"logits": torch.zeros(4, 1), "keypoints": torch.rand(4, 1, 17, 2)}
    ids = [torch.tensor(3), np.int64(4), "000785", "img_a"]
    records = PostProcess()(out, torch.tensor([[10, 10]] * 4), ids)
    assert [r["image_id"] for r in records] == [3, 4, "000785", "img_a"]
    assert [type(r["image_id"]) for r in records[:2]] == [int, int]


def test_records_name_the_category_they_are_given():
    """A dataset whose person category is not 1 (its id is read from the file) gets records of its id."""
    out = {"logits": torch.zeros(1, 2), "keypoints": torch.rand(1, 2, 17, 2)}
    records = PostProcess(category_id=7)(out, torch.tensor([[10, 10]]), [1])
    assert [r["category_id"] for r in records] == [7, 7]


def test_coco_records_hold_every_person_image_by_image_as_plain_numbers():
    """What the bottom-up baselines' poses become too: P people of B images, keypoint triples and
    scores as Python floats of the same values (JSON-ready), in order."""
    gen = torch.Generator().manual_seed(1)
    keypoints, scores = torch.rand(2, 3, 4, 3, generator=gen) * 500, torch.rand(2, 3, generator=gen)
    records = coco_records(keypoints, scores, [5, "b"], category_id=2)
    assert [(r["image_id"], r["category_id"]) for r in records] == [(5, 2)] * 3 + [("b", 2)] * 3
    assert torch.equal(torch.tensor([r["keypoints"] for r in records]), keypoints.view(6, 12))
    assert torch.equal(torch.tensor([r["score"] for r in records]), scores.view(6))
    assert json.loads(json.dumps(records)) == records
    assert coco_records(keypoints[:, :0], scores[:, :0], [5, 6]) == []


def test_coco_records_refuse_mismatched_inputs():
    keypoints, scores = torch.zeros(2, 3, 4, 3), torch.zeros(2, 3)
    for bad_keypoints, bad_scores in (
        (keypoints[..., :2], scores),
        (keypoints, scores[:, :2]),
        (keypoints[0], scores[0]),
    ):
        with pytest.raises(ValueError, match="keypoints must be"):
            coco_records(bad_keypoints, bad_scores, [1, 2])
    with pytest.raises(ValueError, match="image_ids must hold B=2"):
        coco_records(keypoints, scores, [1])
