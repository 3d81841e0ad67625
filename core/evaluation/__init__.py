"""Evaluation and prediction: COCO metrics and reports, predictions on images and videos, speed."""
