"""Bottom-up pose baselines (associative embedding, DEKR) and the map rendering that feeds them."""
