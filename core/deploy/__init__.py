"""Deployment: ONNX and TFLite export, the runtimes that run exported files, QAT and its fake quantisers."""
