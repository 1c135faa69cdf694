"""Losses: pure, vectorised, shape-documented (one per file)."""
