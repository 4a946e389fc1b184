"""Data: outcome tables, their sources, splits, the embedding cache, the DataModule and the bandit environment."""
