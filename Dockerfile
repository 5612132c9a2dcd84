# The melanoma classifier's server: gunicorn with the shipped gunicorn.conf.py and one
# model, as a non-root user on a read-only root filesystem. docs/container.md says how to
# build and run it, mount your own model, and how the tests build it with podman.
#
#   docker build -t melanoma .                          # trains the demo model (minutes)
#   docker build --build-arg MODEL_SOURCE=file --build-arg MODEL_FILE=models/mine.onnx -t melanoma .
#   docker run -p 8000:8000 -e MELANOMA_SECRET_KEY=... --read-only --tmpfs /tmp melanoma

# A slim Debian bookworm Python 3.11 with venv and pip; the tests pass one built locally
# (scripts/build-container-base.sh) where no registry is reachable.
ARG BASE=python:3.11-slim-bookworm
# demo: the build stage trains the demo model; file: MODEL_FILE, a path in the context.
ARG MODEL_SOURCE=demo

# The serving packages (requirements.txt) in their own venv, copied whole into the runtime.
FROM ${BASE} AS serving
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.txt /tmp/requirements.txt
# A TLS-inspecting proxy's CA bundle may be passed as the build secret `ca`. After the
# install: pip itself, test suites and onnxruntime's model-building tools go (the server
# never imports them), and the rest is compiled now, since a read-only filesystem keeps no
# bytecode written at run time.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && python3 -m venv /opt/melanoma \
    && /opt/melanoma/bin/pip install --no-compile -r /tmp/requirements.txt \
    && /opt/melanoma/bin/pip uninstall --yes pip setuptools \
    && find /opt/melanoma -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
    && rm -rf /opt/melanoma/lib/python3.11/site-packages/onnxruntime/transformers \
              /opt/melanoma/lib/python3.11/site-packages/onnxruntime/quantization \
              /opt/melanoma/lib/python3.11/site-packages/onnxruntime/tools \
    && /opt/melanoma/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/melanoma

# The demo model, built as `make model` builds it: drawn lesions, training, export.
FROM serving AS model-demo
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
COPY requirements-export.txt requirements-train.txt /tmp/
# torch==2.13.0 is pinned as the CPU build: point PIP_EXTRA_INDEX_URL or PIP_FIND_LINKS at
# PyTorch's CPU wheels (docs/container.md).
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-compile -r /tmp/requirements.txt \
       -r /tmp/requirements-export.txt -r /tmp/requirements-train.txt
WORKDIR /src
COPY inference/ inference/
COPY export/ export/
COPY training/ training/
COPY evaluation/ evaluation/
RUN ORT_DISABLE_TELEMETRY=1 /opt/build/bin/python export/demo_model.py --quiet \
      --output /model/default.onnx \
    && rm -rf /model/default-build /model/*.ckpt

# A model file from the build context instead.
FROM ${BASE} AS model-file
ARG MODEL_FILE=models/default.onnx
COPY ${MODEL_FILE} /model/default.onnx

FROM model-${MODEL_SOURCE} AS model

FROM ${BASE} AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin melanoma
COPY --from=serving /opt/melanoma /opt/melanoma
COPY --from=model /model/ /app/models/
WORKDIR /app
COPY gunicorn.conf.py ./
COPY inference/ inference/
COPY webapp/ webapp/
RUN /opt/melanoma/bin/python -m compileall -q --invalidation-mode unchecked-hash inference webapp
# No secret here: MELANOMA_SECRET_KEY is given at run time or the app refuses to start.
# Python writes nothing (bytecode is compiled above); gunicorn's heartbeat goes to /dev/shm.
ENV PATH=/opt/melanoma/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    MELANOMA_BIND=0.0.0.0:8000 \
    MELANOMA_MODEL_PATH=/app/models/default.onnx
USER 10001:10001
EXPOSE 8000
# The model loads in a few seconds; the decoder's imports on a throttled CPU take longer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['MELANOMA_BIND'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
# gunicorn's control socket (for gunicornc) would be written under $HOME: nothing uses it.
CMD ["gunicorn", "--config", "gunicorn.conf.py", "--no-control-socket"]
