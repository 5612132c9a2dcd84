"""End-to-end HTTP benchmark: the real gunicorn server, 1 worker, under bounded load from `hey`.

`hey` (Debian package `hey`) sends a fixed number of multipart uploads to
/api/v1/predict over loopback from a fixed number of connections; every request's
latency and status come back as CSV, and the worker's RSS is read from /proc.

    python -m bench.http_load --model models/default.onnx --requests 200 --concurrency 2
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inference import write_lesion_jpeg  # noqa: E402
from devtools.procs import memory_status, percentile  # noqa: E402
from devtools.server import LiveServer, Upload, multipart, start_server  # noqa: E402


class LoadTestError(RuntimeError):
    """The server did not start, or the load generator could not run."""


def multipart_body(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with the image in the `image` field, and its content type."""
    return multipart(fields, [Upload("lesion.jpg", image)])


def start(model: Path, directory: Path, max_waiting: int | None,
          timeout: float) -> tuple[LiveServer, float]:
    """gunicorn as production starts it (devtools/server.py); seconds until /readyz."""
    env = {"MELANOMA_WORKERS": "1", "OMP_NUM_THREADS": "1"}
    if max_waiting is not None:
        env["MELANOMA_MAX_WAITING"] = str(max_waiting)
    started = time.perf_counter()
    try:
        server = start_server(model.resolve(), directory, env, timeout)
    except AssertionError as error:
        raise LoadTestError(str(error)[-3000:]) from None
    return server, time.perf_counter() - started


def run_hey(hey: str, url: str, body: Path, content_type: str, requests: int,
            concurrency: int, rate: float) -> list[dict[str, float]]:
    """Every request's latency (s), status and start offset, from hey's CSV output."""
    command = [hey, "-n", str(requests), "-c", str(concurrency), "-m", "POST",
               "-T", content_type, "-D", str(body), "-t", "60", "-o", "csv"]
    if rate > 0:
        command += ["-q", str(rate)]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LoadTestError(f"hey failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    return [{"latency_s": float(r["response-time"]), "status": int(r["status-code"]),
             "offset_s": float(r["offset"])} for r in rows]


def summarise(results: list[dict[str, float]], requests: int) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200]
    if not ok:
        statuses = sorted({r["status"] for r in results})
        raise LoadTestError(f"no request succeeded; statuses {statuses}")
    latencies = [r["latency_s"] for r in ok]
    span = max(r["offset_s"] + r["latency_s"] for r in results) - min(
        r["offset_s"] for r in results)
    return {"requests": requests, "succeeded": len(ok), "errors": requests - len(ok),
            "statuses": {str(s): sum(r["status"] == s for r in results)
                         for s in sorted({r["status"] for r in results})},
            "throughput_rps": len(ok) / span, "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": percentile(latencies, 0.95),
            "latency_p99_s": percentile(latencies, 0.99), "latency_max_s": max(latencies)}


def format_table(report: dict[str, Any]) -> str:
    return "\n".join([
        f"gunicorn 1 worker ({report['threads']} threads), {report['requests']} requests from "
        f"{report['concurrency']} connections, TTA {report['tta']}, "
        f"upload {report['upload_bytes']} B ({report.get('image_size')}), "
        f"model {report.get('precision')}",
        "", "| throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | errors | "
        "worker RSS steady / peak (MiB) | ready after (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {report['throughput_rps']:.2f} | {report['latency_p50_s'] * 1000:.0f} | "
        f"{report['latency_p95_s'] * 1000:.0f} | {report['latency_p99_s'] * 1000:.0f} | "
        f"{report['errors']} | {report['worker_rss_mib']:.0f} / "
        f"{report['worker_peak_rss_mib']:.0f} | {report['ready_after_s']:.2f} |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.onnx"),
                        help="the .onnx model the server loads")
    parser.add_argument("--requests", type=int, default=200, help="requests to send in all")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="connections sending at once (above running + queue: 503s)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s per connection (0: as fast as answered)")
    parser.add_argument("--tta", default="dihedral", help="TTA policy sent with each request")
    parser.add_argument("--max-waiting", type=int, default=None,
                        help="predictions queued per worker (default: the shipped value; "
                             "gunicorn's threads follow from it, webapp/capacity.py)")
    parser.add_argument("--image", type=Path, help="JPEG to upload (default: synthetic 1024x768)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                        help="upload a synthetic lesion JPEG of this size instead "
                             "(4032 3024: a 12 MP phone photo; 600 450: ISIC-sized)")
    parser.add_argument("--hey", default="hey", help="the hey executable")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for /readyz")
    parser.add_argument("--json", type=Path, default=Path("bench-http.json"),
                        help="where the results go")
    args = parser.parse_args(argv)
    hey = shutil.which(args.hey)
    if hey is None:
        print(f"error: {args.hey!r} not found; install the Debian package `hey`",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        image = args.image or write_lesion_jpeg(Path(scratch) / "lesion.jpg",
                                                *(args.image_size or (1024, 768)))
        body, content_type = multipart_body(image.read_bytes(), {"tta": args.tta})
        body_path = Path(scratch) / "body.bin"
        body_path.write_bytes(body)
        try:
            report = _load(args, hey, body_path, content_type)
        except LoadTestError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return 0 if report["errors"] == 0 else 1


def _load(args: argparse.Namespace, hey: str, body: Path, content_type: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as logs:
        server, ready_after = start(args.model, Path(logs), args.max_waiting,
                                    args.startup_timeout)
        try:
            workers = server.worker_pids()
            if len(workers) != 1:
                raise LoadTestError(f"expected one gunicorn worker, found {workers}")
            worker = workers[0]
            samples: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    samples.append(_memory(worker).get("VmRSS", 0.0))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            results = run_hey(hey, f"{server.url}/api/v1/predict", body, content_type,
                              args.requests, args.concurrency, args.rate)
            stop.set()
            sampler.join()
            memory = _memory(worker)
            master = _memory(server.master_pid)
        finally:
            server.stop()
    capacity = server.capacity
    return {**summarise(results, args.requests), "model": str(args.model),
            "concurrency": args.concurrency, "rate_per_connection": args.rate,
            "threads": capacity.threads, "max_waiting": capacity.max_waiting,
            "tta": args.tta, "ready_after_s": ready_after,
            "worker_rss_mib": memory.get("VmRSS", 0.0),
            "worker_peak_rss_mib": memory.get("VmHWM", 0.0),
            "worker_rss_max_sampled_mib": max(samples, default=0.0),
            "master_rss_mib": master.get("VmRSS", 0.0),
            "upload_bytes": body.stat().st_size, "image_size": args.image_size,
            "precision": _precision(args.model)}


def _precision(model: Path) -> str:
    from inference.model_spec import read_spec_file

    return read_spec_file(model).precision


def _memory(pid: int) -> dict[str, float]:
    try:
        return memory_status(pid)
    except OSError:
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
