"""Turn a trained ResNeSt checkpoint into a verified ONNX model carrying its own spec."""
