"""The benchmark app: Medusa against plain mlx-lm decoding, interleaved, with a
JSON record of every figure and the environment."""
