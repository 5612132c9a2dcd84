"""Which quantised nodes carry the INT8 error, measured one at a time; the fewest kept fp32.

A QDQ graph rounds a node's inputs (activations and weights) through QuantizeLinear and
DequantizeLinear pairs. `graft` puts those pairs back onto the fp32 graph for a chosen set
of nodes only, so a node's own contribution is the output error of the fp32 graph with that
node alone quantised (no recalibration: the ranges are the full model's). Nodes are ranked
by that error; `choose` then keeps the highest-ranked in fp32, as few as meet the fidelity
limits on the calibration images (the held-out images are left for the gate).

The error is measured in logit space after removing its mean, the part the logit bias
correction cannot take away: that is what moves decisions across the threshold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx

from export.errors import ExportError
from inference.model_spec import ModelSpec, melanoma_probabilities

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class NodeSensitivity:
    """One node quantised alone: the spread of the melanoma logit error it causes."""

    name: str
    op_type: str
    logit_error_sd: float


@dataclass(frozen=True)
class CalibrationFidelity:
    """A candidate's fidelity on the calibration images, after logit bias correction."""

    kept_fp32: int
    p99_abs_delta: float
    flip_rate: float
    logit_error_sd: float

    def meets(self, max_p99: float, max_flip_rate: float) -> bool:
        return self.p99_abs_delta <= max_p99 and self.flip_rate <= max_flip_rate


def quantised_nodes(qdq: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of a QDQ graph that read at least one dequantised input (but Shape, whose
    answer rounding cannot change)."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    return [n for n in qdq.graph.node if n.op_type not in (*_QDQ, "Shape") and any(
        producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
        for i in n.input)]


def graft(fp32: onnx.ModelProto, qdq: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """The fp32 graph with the named nodes' inputs rounded as in the QDQ graph."""
    chosen = set(names)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    qdq_nodes = {n.name: n for n in qdq.graph.node}
    q_initializers = {t.name: t for t in qdq.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    have = {t.name for t in model.graph.initializer}
    emitted: set[str] = set()
    # ORT names a bias's DequantizeLinear output after the fp32 bias itself, and a graph
    # output's after the output, renaming the tensor its QuantizeLinear reads.
    defined = have | {o for n in model.graph.node for o in n.output} | {
        i.name for i in model.graph.input}
    renames = _fp32_names(fp32, qdq, defined)
    ordered: list[onnx.NodeProto] = []
    found = set()
    for node in model.graph.node:
        if node.name in chosen:
            found.add(node.name)
            rewired = list(node.input)
            for index, name in enumerate(qdq_nodes[node.name].input):
                dq = producer.get(name)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                chain = [dq]
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    chain.insert(0, q)
                for link in chain:
                    if link.output[0] in emitted:
                        continue
                    emitted.add(link.output[0])
                    ordered.append(_renamed(link, renames, defined))
                    for tensor in link.input:
                        if tensor in q_initializers and tensor not in have:
                            model.graph.initializer.append(q_initializers[tensor])
                            have.add(tensor)
                rewired[index] = renames.get(dq.output[0], dq.output[0])
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(rewired)
            ordered.append(copy)
        else:
            ordered.append(node)
    missing = chosen - found
    if missing:
        raise ExportError(f"nodes not in the fp32 graph: {sorted(missing)[:5]}")
    del model.graph.node[:]
    model.graph.node.extend(_live(ordered, {o.name for o in model.graph.output}))
    used = {i for n in model.graph.node for i in n.input}
    live_initializers = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live_initializers)
    return model


def _fp32_names(fp32: onnx.ModelProto, qdq: onnx.ModelProto,
                defined: set[str]) -> dict[str, str]:
    """QDQ-graph tensor names that the fp32 graph calls otherwise (same producer, same slot)."""
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    renames = {}
    for node in qdq.graph.node:
        twin = fp32_nodes.get(node.name)
        if twin is None or node.op_type in _QDQ:
            continue
        for ours, theirs in zip(node.output, twin.output, strict=False):
            if ours != theirs and ours not in defined:
                renames[ours] = theirs
    return renames


def _renamed(node: onnx.NodeProto, renames: dict[str, str],
             defined: set[str]) -> onnx.NodeProto:
    """`node` with inputs renamed as before, and its output renamed where fp32 defines it."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for index, name in enumerate(copy.input):
        copy.input[index] = renames.get(name, name)
    for index, name in enumerate(copy.output):
        if name in defined:
            renames[name] = copy.output[index] = f"{name}_int8"
    return copy


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` without those whose results nothing reads (an fp32 Relu a Q now stands for)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


Runner = Callable[[onnx.ModelProto], np.ndarray]


def melanoma_logits(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The log-odds of the melanoma probability, whatever the head's kind."""
    p = np.clip(melanoma_probabilities(logits, spec.output_kind, spec.melanoma_index),
                1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def rank(fp32: onnx.ModelProto, qdq: onnx.ModelProto, run: Runner, spec: ModelSpec,
         progress: Callable[[int, int], None] | None = None) -> list[NodeSensitivity]:
    """Every quantised node, most harmful first, by the error it causes quantised alone."""
    reference = melanoma_logits(run(fp32), spec)
    nodes = quantised_nodes(qdq)
    measured = []
    for index, node in enumerate(nodes):
        error = melanoma_logits(run(graft(fp32, qdq, [node.name])), spec) - reference
        measured.append(NodeSensitivity(node.name, node.op_type, float(np.std(error))))
        if progress:
            progress(index + 1, len(nodes))
    return sorted(measured, key=lambda s: s.logit_error_sd, reverse=True)


def calibration_fidelity(reference: np.ndarray, candidate: np.ndarray, spec: ModelSpec,
                         kept: int) -> CalibrationFidelity:
    """p99 |Δp| and flips of `candidate` logits after the mean logit shift is removed,
    as the export's bias correction would."""
    corrected = candidate + (reference - candidate).mean(axis=0)
    before = melanoma_probabilities(reference, spec.output_kind, spec.melanoma_index)
    after = melanoma_probabilities(corrected, spec.output_kind, spec.melanoma_index)
    flips = np.mean((before >= spec.threshold) != (after >= spec.threshold))
    error = melanoma_logits(corrected, spec) - melanoma_logits(reference, spec)
    return CalibrationFidelity(kept, float(np.percentile(np.abs(after - before), 99)),
                               float(flips), float(np.std(error)))


def choose(fp32: onnx.ModelProto, qdq: onnx.ModelProto, ranking: Sequence[NodeSensitivity],
           run: Runner, spec: ModelSpec, max_p99: float, max_flip_rate: float,
           ) -> tuple[list[str], list[CalibrationFidelity]]:
    """The fewest top-ranked nodes kept fp32 whose graft meets the limits on calibration images.

    Doubles the count until the limits are met, then bisects; returns the names and every
    candidate tried (for the record). Raises when even all of them kept fp32 do not.
    """
    reference = run(fp32)
    everything = [n.name for n in quantised_nodes(qdq)]
    order = [s.name for s in ranking]
    tried: dict[int, CalibrationFidelity] = {}

    def measure(count: int) -> CalibrationFidelity:
        if count not in tried:
            keep = set(order[:count])
            candidate = run(graft(fp32, qdq, [n for n in everything if n not in keep]))
            tried[count] = calibration_fidelity(reference, candidate, spec, count)
        return tried[count]

    low, high = -1, 0
    while not measure(high).meets(max_p99, max_flip_rate):
        if high >= len(order):
            raise ExportError("no mix of fp32 and INT8 nodes meets the limits on the "
                              "calibration images")
        low, high = high, min(len(order), max(1, high * 2))
    while high - low > 1:
        middle = (low + high) // 2
        if measure(middle).meets(max_p99, max_flip_rate):
            high = middle
        else:
            low = middle
    return order[:high], [tried[k] for k in sorted(tried)]


@dataclass(frozen=True)
class Selection:
    """The nodes kept fp32, and the measurements that chose them."""

    fp32_nodes: tuple[str, ...]
    ranking: tuple[NodeSensitivity, ...]
    tried: tuple[CalibrationFidelity, ...]
    images: int
    ranking_images: int

    def as_dict(self, top: int = 20) -> dict[str, Any]:
        """The record in the INT8 spec: the most harmful nodes, and each count tried."""
        return {"ranking_images": self.ranking_images, "selection_images": self.images,
                "quantised_nodes": len(self.ranking), "kept_fp32": len(self.fp32_nodes),
                "fp32_nodes": list(self.fp32_nodes),
                "most_sensitive": [{"node": s.name, "op": s.op_type,
                                    "logit_error_sd": round(s.logit_error_sd, 5)}
                                   for s in self.ranking[:top]],
                "tried": [{k: (round(v, 5) if isinstance(v, float) else v)
                           for k, v in asdict(c).items()} for c in self.tried]}


def session_runner(inputs: np.ndarray, spec: ModelSpec, threads: int = 1,
                   batch: int = 16) -> Runner:
    """Runs a graph held in memory over `inputs` and returns its logits."""
    from inference.runtime import ort

    def run(model: onnx.ModelProto) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        return np.concatenate([session.run([spec.logits_name], {
            spec.input_name: inputs[i:i + batch]})[0] for i in range(0, len(inputs), batch)])

    return run


def select(prepared_fp32: Path, qdq_path: Path, inputs: np.ndarray, spec: ModelSpec,
           max_p99: float, max_flip_rate: float, ranking_images: int = 64, threads: int = 1,
           progress: Callable[[int, int], None] | None = None) -> Selection:
    """Rank every quantised node on the first `ranking_images` inputs, then keep the fewest
    fp32 that meet `max_p99` and `max_flip_rate` on all of them."""
    fp32, qdq = onnx.load(str(prepared_fp32)), onnx.load(str(qdq_path))
    ranking = rank(fp32, qdq, session_runner(inputs[:ranking_images], spec, threads), spec,
                   progress)
    names, tried = choose(fp32, qdq, ranking, session_runner(inputs, spec, threads), spec,
                          max_p99, max_flip_rate)
    return Selection(tuple(names), tuple(ranking), tuple(tried), len(inputs),
                     min(ranking_images, len(inputs)))
