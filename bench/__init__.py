"""Benchmarks: ONNX Runtime serving path vs PyTorch eager (inference.py), and HTTP (http_load.py)."""
