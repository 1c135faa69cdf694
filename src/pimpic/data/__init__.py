"""Data: dataset readers, preprocessing cache, splits, synthetic cohort, patch sampling."""
