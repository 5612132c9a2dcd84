"""The inference core: what the server and every tool run to turn image bytes into a
verified prediction.

The model spec (`model_spec`), decoding and preprocessing (`image_header`, `pixels`,
`preprocess`, the `decode_sandbox` that runs them under limits), the ONNX Runtime session
(`runtime`, `session`), test-time augmentation (`tta`), the class-activation map
(`heatmap`), out-of-distribution and quality checks (`ood`, `quality`, `insight`), the
`classifier` that chains them, and the patient view's ranking (`patient`).

No web framework is imported here (tests/test_layers.py holds it to that), and this file
stays empty on purpose: `inference.model_spec`, the contract the exporter shares, must
import without loading OpenCV or ONNX Runtime.
"""
