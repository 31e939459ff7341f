"""Evaluation: reward-model metrics, dataset statistics, plots (one module each)."""
