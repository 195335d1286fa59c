"""Bottom-up pose baselines (associative embedding, DEKR) and the map rendering that feeds them."""

from bench.baselines.associative_embedding import AssociativeEmbeddingHead
from bench.baselines.dekr import DEKRHead

HEADS = {"associative_embedding": AssociativeEmbeddingHead, "dekr": DEKRHead}
"""method: the class of its network (a backbone and the method's stride-4 head)."""
