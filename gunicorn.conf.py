"""gunicorn settings for the t2.micro shape: 1 vCPU, 1 GiB RAM.

One worker holds one ONNX Runtime session (~115 MB of weights for resnest50 at fp32);
a second worker would double memory and buy nothing on one core. Its threads are derived
from the app's admission numbers (webapp/capacity.py): every upload the InferenceGate may
admit has a thread, the rest are refused with 503 at once, and spare threads keep health
checks answered.
"""
import os
import sys

# The unit starts the gunicorn script, whose sys.path does not hold the app's folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from webapp.capacity import Capacity  # noqa: E402

wsgi_app = "webapp.wsgi:app"
bind = os.environ.get("MELANOMA_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("MELANOMA_WORKERS", "1"))
worker_class = "gthread"
threads = Capacity.from_environ(os.environ).threads
# The model loads in each worker after the fork (no preload): ONNX Runtime sessions and
# their thread pools must not be shared across fork.
preload_app = False
timeout = int(os.environ.get("MELANOMA_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 5
# Recycle a worker now and then so slow heap growth can never reach the memory limit.
max_requests = int(os.environ.get("MELANOMA_MAX_REQUESTS", "2000"))
max_requests_jitter = 200
# Uploads never touch disk, and neither does gunicorn's heartbeat file.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-"
errorlog = "-"
# The access log records method, path, status, size and time; never bodies or filenames.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'


# Prometheus multiprocess mode (webapp/metrics.py), only where PROMETHEUS_MULTIPROC_DIR is
# set: samples left by a previous run would be summed with this one's, so start empty.
def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# Health checks and scrapes must not count toward max_requests: a flood of them would
# otherwise recycle the worker (and reload the model) every few seconds. gunicorn counts
# a request right after this hook, so taking one off here leaves the count unchanged.
_UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def pre_request(worker, req):
    if req.path in _UNCOUNTED_PATHS:
        worker.nr -= 1
    else:
        worker.log.debug("%s %s", req.method, req.path)


# Refusals (503 overloaded, 429 rate limited) do no work that could grow the heap; counted,
# a flood of them recycled the worker every ~6 s (tests/test_soak.py: 4,170 refusals in
# 13 s), reloading the model in the middle of an overload.
_UNCOUNTED_STATUSES = frozenset({429, 503})


def post_request(worker, req, environ, resp):
    if resp is not None and resp.status_code in _UNCOUNTED_STATUSES:
        worker.nr -= 1
