"""DeepRoom core."""
