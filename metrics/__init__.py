"""Evaluation metrics (FID, KID, precision/recall, IS), their detectors, and the calc_metric API."""
