"""The inference stage: a small CNN (``net``), loading and running shipped models (``model``),
training (``train``) and its on-the-fly augmentations (``augment``)."""
