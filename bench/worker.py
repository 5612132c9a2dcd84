"""One measured process: cold start, latency, RSS of one inference path; JSON on stdout.

Run by bench/inference.py, one fresh process per measurement, so that imports, memory and
cold start belong to that path alone. The `ours` path must never import torch.

    python -m bench.worker ours --model M.onnx --image lesion.jpg --views 8 --repeats 20
"""
from __future__ import annotations

import time

STARTED = time.time()  # before any heavy import: cold start is measured from here

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

KINDS = ("ours", "torch-per-view", "torch-batched", "peak-numpy", "peak-torch", "peak-int8")
POLICY_FOR_VIEWS = {1: "none", 4: "flips", 8: "dihedral"}


def memory_mib() -> dict[str, float]:
    """Current and peak resident set of this process, from /proc (Linux)."""
    values: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    return {"rss_mib": values["VmRSS"], "peak_rss_mib": values["VmHWM"]}


def _timed(function: Callable[[], Any], repeats: int,
           cpu: list[float] | None = None) -> list[float]:
    """Wall seconds per call; with `cpu`, also this process's CPU seconds per call (one
    thread does all the work, so CPU time is the cost undisturbed by other processes)."""
    seconds = []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        function()
        seconds.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.process_time() - cpu_started)
    return seconds


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """The serving path as the server runs it: decode, then Classifier.predict, no heatmap."""
    from inference import preprocess, tta
    from inference.classifier import Classifier, Prediction

    imported = time.time()
    data = args.image.read_bytes()
    policy = POLICY_FOR_VIEWS[args.views]
    model = Classifier(args.model, intra_op_threads=1, cache_dir=args.cache_dir)
    loaded = time.time()
    def serve() -> Prediction:
        return model.predict(preprocess.decode_image(data), policy)

    first = serve()
    cold = time.time() - (args.spawned_at or STARTED)
    phases = {"interpreter_s": STARTED - (args.spawned_at or STARTED),
              "imports_s": imported - STARTED, "session_s": loaded - imported,
              "first_prediction_s": time.time() - loaded}
    after_load = memory_mib()
    seen = preprocess.prepare(data, model.spec).image
    batch = preprocess.to_model_input(tta.make_batch(seen, tta.views_for(policy)), model.spec)
    for _ in range(args.warmup):
        serve()
    request_cpu: list[float] = []
    inference_cpu: list[float] = []
    request = _timed(serve, args.repeats, request_cpu)
    inference = _timed(lambda: model.run_batch(batch), args.repeats, inference_cpu)
    return {**memory_mib(), "cold_start_s": cold, "cold_start_phases": phases,
            "after_first_prediction": after_load,
            "view_probabilities": list(first.view_probabilities),
            "probability": first.probability, "request_s": request, "inference_s": inference,
            "request_cpu_s": request_cpu, "inference_cpu_s": inference_cpu,
            "precision": model.spec.precision,
            "torch_imported": "torch" in sys.modules, "settings": "ORT CPU, 1 intra-op thread"}


def run_torch(args: argparse.Namespace, batched: bool) -> dict[str, Any]:
    """The baseline: the checkpoint in PyTorch eager, as the Streamlit apps serve it."""
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from export.network import load_network
    from inference import preprocess, tta
    from inference.model_spec import read_spec_file

    spec = read_spec_file(args.model)  # the same preprocessing numbers the server uses
    # Any: torch's stubs omit Module.to(memory_format=...), which the layout trial uses.
    network: Any = load_network(args.checkpoint, spec.architecture,
                           library=spec.architecture_library or None,
                           prefer_ema=spec.checkpoint_weights != "raw").module
    data = args.image.read_bytes()
    views = tta.views_for(POLICY_FOR_VIEWS[args.views])

    def predict(layout: torch.memory_format) -> list[float]:
        seen = preprocess.prepare(data, spec).image
        batch = torch.from_numpy(preprocess.to_model_input(tta.make_batch(seen, views), spec))
        with torch.inference_mode():
            if batched:
                logits = network(batch.contiguous(memory_format=layout))
            else:
                logits = torch.cat([network(batch[i:i + 1].contiguous(memory_format=layout))
                                    for i in range(len(views))])
        return [float(p) for p in spec.melanoma_probabilities(logits.numpy())]

    first = predict(torch.contiguous_format)
    cold = time.time() - (args.spawned_at or STARTED)
    after_load = memory_mib()
    # The baseline gets PyTorch's faster layout on this CPU, chosen by measurement.
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    trial = {}
    for name, layout in layouts.items():
        network.to(memory_format=layout)
        predict(layout)
        trial[name] = min(_timed(functools.partial(predict, layout), 2))
    best = min(trial, key=trial.__getitem__)
    network.to(memory_format=layouts[best])
    for _ in range(args.warmup):
        predict(layouts[best])
    request_cpu: list[float] = []
    request = _timed(lambda: predict(layouts[best]), args.repeats, request_cpu)
    return {**memory_mib(), "cold_start_s": cold, "after_first_prediction": after_load,
            "view_probabilities": first, "probability": sum(first) / len(first),
            "request_s": request, "request_cpu_s": request_cpu,
            "settings": f"torch {torch.__version__}, 1 thread, eval, inference_mode, "
                        f"{best} ({', '.join(f'{k} {v * 1000:.0f} ms' for k, v in trial.items())})"}


def run_peak(args: argparse.Namespace, library: str) -> dict[str, Any]:
    """Single-core fp32 GEMM throughput: the hardware bound the model is compared with."""
    n = args.matrix_size
    if library == "numpy":
        import numpy as np

        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        multiply: Callable[[], Any] = lambda: a @ b  # noqa: E731
        version = f"numpy {np.__version__}"
    else:
        import torch

        torch.set_num_threads(1)
        x, y = torch.randn(n, n), torch.randn(n, n)
        multiply = lambda: torch.mm(x, y)  # noqa: E731
        version = f"torch {torch.__version__}"
    multiply()
    cpu: list[float] = []
    seconds = _timed(multiply, args.repeats, cpu)
    return {**memory_mib(), "gemm_seconds": seconds, "gemm_cpu_seconds": cpu,
            "flops": 2.0 * n ** 3, "gflops_best": 2.0 * n ** 3 / min(seconds) / 1e9,
            "gflops_best_cpu": 2.0 * n ** 3 / min(cpu) / 1e9, "settings": version}


def run_peak_int8(args: argparse.Namespace) -> dict[str, Any]:
    """Single-core u8 x s8 GEMM throughput in ONNX Runtime (MatMulInteger, the MLAS kernel
    its quantised convolutions use): the bound an INT8 model is compared with."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import numpy as np
    from inference.runtime import ort
    from onnx import TensorProto, helper, numpy_helper

    n = args.matrix_size
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    session.run(None, feed)
    cpu: list[float] = []
    seconds = _timed(lambda: session.run(None, feed), args.repeats, cpu)
    return {**memory_mib(), "gemm_seconds": seconds, "gemm_cpu_seconds": cpu,
            "flops": 2.0 * n ** 3, "gflops_best": 2.0 * n ** 3 / min(seconds) / 1e9,
            "gflops_best_cpu": 2.0 * n ** 3 / min(cpu) / 1e9,
            "settings": f"onnxruntime {ort.__version__} MatMulInteger u8s8"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS, help="which path this process measures")
    parser.add_argument("--model", type=Path, help="the exported .onnx model (and its spec)")
    parser.add_argument("--checkpoint", type=Path, help="the PyTorch checkpoint it came from")
    parser.add_argument("--image", type=Path, help="the JPEG sent as every request")
    parser.add_argument("--views", type=int, default=8, choices=sorted(POLICY_FOR_VIEWS),
                        help="TTA views per request")
    parser.add_argument("--repeats", type=int, default=20, help="timed requests")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    parser.add_argument("--spawned-at", type=float, default=None,
                        help="the parent's time.time() just before it started this process")
    parser.add_argument("--matrix-size", type=int, default=2048, help="GEMM side for peak")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="ours: the server's optimised-graph cache (MODEL_CACHE_DIR)")
    args = parser.parse_args(argv)
    if args.kind == "ours":
        result = run_ours(args)
    elif args.kind.startswith("torch"):
        result = run_torch(args, batched=args.kind == "torch-batched")
    elif args.kind == "peak-int8":
        result = run_peak_int8(args)
    else:
        result = run_peak(args, args.kind.removeprefix("peak-"))
    # RSS is read inside each run_* while its model is still alive: steady state.
    result.update(kind=args.kind, pid=os.getpid(), started_at=STARTED,
                  affinity=sorted(os.sched_getaffinity(0)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
