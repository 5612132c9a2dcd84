"""Melanoma classifier web app: the HTTP layer over the inference core.

`webapp.app.create_app` builds the Flask app and `webapp.wsgi` is gunicorn's entry point.
Everything that turns uploaded bytes into a verified prediction lives in `inference/`;
this package adds routes, forms, templates, admission, rate limits, security and responses.
"""
