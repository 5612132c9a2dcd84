"""Benchmarks: ONNX Runtime vs PyTorch eager (inference.py), and HTTP load (http_load.py)."""
