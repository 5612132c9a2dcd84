"""Melanoma classifier web app.

`webapp.app.create_app` builds the Flask app and `webapp.wsgi` is gunicorn's entry point.
This package file stays empty on purpose: `webapp.model_spec`, the contract the exporter
shares, must import without loading Flask, OpenCV or ONNX Runtime.
"""
