"""Evaluation: routing metrics, reference policies, result tables."""
