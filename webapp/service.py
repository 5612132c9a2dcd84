"""The model server around the Classifier: admission, stage timing, readiness, PNG encoding.

One PredictionService per worker process, shared by the form (views.py) and the API
(api.py), found with `current_service()`. Like KServe's model server, it times each stage
of the model for metrics and owns admission, so the model is never patched at run time.
Cache-Control for every dynamic response is set once, in security.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from flask import Flask, current_app

from inference import memory, precision, preprocess, tta

from webapp import metrics, photo, visuals
from webapp.admission import InferenceGate
from inference.classifier import Classifier, Prediction
from inference.errors import ClientError, InvalidImage
from inference.decode_sandbox import DecodeSandbox
from inference.insight import Insight
from inference.model_spec import DEFAULT_MAX_IMAGE_PIXELS, ModelSpec

_EXTENSION = "prediction_service"


@dataclass(frozen=True)
class Analysis:
    """What the form and the API show: the model's answer, stage timings, optional images."""

    prediction: Prediction
    timing_ms: Mapping[str, float]
    insight: Insight
    visuals: visuals.Visuals | None = None

    @property
    def model_input_png(self) -> bytes | None:
        return self.visuals.model_input_png if self.visuals else None

    @property
    def heatmap_png(self) -> bytes | None:
        """The user's photo with the heatmap laid over it."""
        return self.visuals.blended_png if self.visuals else None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


class PredictionService:
    """Admits, runs, times and renders predictions of one warmed-up Classifier."""

    def __init__(self, classifier: Classifier, gate: InferenceGate | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 stuck_after_seconds: float = 60.0,
                 decoder: DecodeSandbox | None = None,
                 choice: precision.Choice | None = None) -> None:
        self.classifier = classifier
        # Why this file (fp32 or the INT8 one beside it) is the one served.
        self.choice = choice or precision.Choice(classifier.model_path, "the configured file",
                                                 precision.cpu_features())
        self.gate = gate or InferenceGate()
        self._decode_limits = preprocess.DecodeLimits(max_pixels=max_image_pixels)
        self._decoder = decoder or DecodeSandbox()
        self._decoder.start()
        self._stuck_after = stuck_after_seconds

    @property
    def spec(self) -> ModelSpec:
        return self.classifier.spec

    def readiness(self) -> Readiness:
        """Ready while the model is warmed up, no prediction has hung in its slot and the
        decoder answers (one that stopped answering is being replaced)."""
        if not self.classifier.warmed_up:
            return Readiness(False, "the model is not warmed up")
        running = self.gate.longest_running()
        if running > self._stuck_after:
            return Readiness(False, f"a prediction has been running for {running:.0f} s")
        decoder = self._decoder.health()
        if decoder:
            return Readiness(False, decoder)
        return Readiness(True, "")

    def predict(self, data: bytes, policy: str = tta.DEFAULT_POLICY, *,
                want_heatmap: bool = True, want_input_image: bool = False,
                display_side: int = photo.DISPLAY_SIDE) -> Analysis:
        """Decode, preprocess and run every TTA view under admission; then explain.

        Warnings are always worked out; the pictures only when a heatmap or the model's
        input is wanted, with the photo shown at most `display_side` pixels long.
        """
        views = tta.views_for(policy)
        with self.gate.admit():
            run = self._infer(data, views)
        return self._finish(run, policy, want_heatmap or want_input_image, display_side)

    def predict_each(self, uploads: Sequence[bytes], policy: str, max_total_pixels: int, *,
                     display_side: int = photo.DISPLAY_SIDE) -> list[Analysis]:
        """Several photos admitted as one piece of work, all or none.

        The gate admits the request as as many predictions as it has photos, or refuses it
        before anything is read. Then the decoder reads every header (the sum of pixels is
        bounded before any photo is decoded) and each photo runs in turn without giving up
        the slot, so a queue timeout never throws away work already done. A ClientError
        carries `photo_index`, the photo it is about.
        """
        views = tta.views_for(policy)
        with self.gate.admit(len(uploads)):
            total = 0
            for index, header in enumerate(self._decoder.read_headers(uploads)):
                if isinstance(header, InvalidImage):
                    raise _about(header, index)
                total += header.pixels
            if total > max_total_pixels:
                raise ClientError(f"the photos have {total / 1e6:.0f} MP together; the limit "
                                  f"is {max_total_pixels / 1e6:.0f} MP per request",
                                  code="images_too_large", status=413)
            runs = []
            for index, data in enumerate(uploads):
                try:
                    runs.append(self._infer(data, views))
                except ClientError as error:
                    raise _about(error, index) from None
        return [self._finish(run, policy, True, display_side) for run in runs]

    def _infer(self, data: bytes, views: tuple[tta.View, ...]) -> _Run:
        """The stages that hold an admission slot: decode (sandboxed), preprocess, infer."""
        model = self.classifier
        started = time.perf_counter()
        upload = self._decoder.prepare(data, model.spec, self._decode_limits)
        decoded = time.perf_counter()
        seen, batch = model.preprocess(upload.image, views)
        prepared = time.perf_counter()
        logits, features = model.run_batch(batch)
        inferred = time.perf_counter()
        self.gate.record(inferred - started)
        return _Run(upload, seen, logits, features, views, (started, decoded, prepared, inferred))

    def _finish(self, run: _Run, policy: str, want_pictures: bool,
                display_side: int) -> Analysis:
        """The stages after the slot is given back: merge, explain, draw."""
        model, upload = self.classifier, run.upload
        prediction = model.postprocess(run.logits, policy, (upload.width, upload.height))
        insight = model.explain(upload.photo, run.features, run.views)
        drawn = (visuals.render(upload.photo, (upload.width, upload.height), run.seen,
                                insight.grid, model.spec, display_side)
                 if want_pictures else None)
        finished = time.perf_counter()
        started, decoded, prepared, inferred = run.marks
        timing = {"decode": _ms(started, decoded), "preprocess": _ms(decoded, prepared),
                  "inference": _ms(prepared, inferred), "heatmap": _ms(inferred, finished),
                  "total": _ms(started, finished)}
        metrics.observe_stages(timing)
        return Analysis(prediction, timing, insight, drawn)


@dataclass(frozen=True, eq=False)
class _Run:
    """One photo's model outputs, between the admitted stages and the explanation."""

    upload: preprocess.ModelView
    seen: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    views: tuple[tta.View, ...]
    marks: tuple[float, float, float, float]


def _about(error: ClientError, index: int) -> ClientError:
    error.photo_index = index
    return error


def init_app(app: Flask) -> None:
    """Load, check and warm up the model, and attach its service to the app."""
    config = app.config
    # Before the model loads: the fork server that decoders come from must not hold it.
    decoder = DecodeSandbox()
    decoder.start()
    cache_dir = _optional_path(config["MODEL_CACHE_DIR"])
    # One view per benchmark run: both models are loaded at once here, before the memory
    # budget is known, and a batch of 8 large views could not fit a 750M unit beside them.
    choice = precision.choose(Path(config["MODEL_PATH"]), str(config["MODEL_PRECISION"]),
                              cache_dir, threads=int(config["INTRA_OP_THREADS"]), views=1)
    app.logger.info("serving %s: %s (%s)", choice.path.name, choice.reason, choice.as_dict())
    classifier = Classifier(choice.path,
                            intra_op_threads=int(config["INTRA_OP_THREADS"]),
                            cache_dir=cache_dir,
                            memory_budget_mib=int(config["MEMORY_BUDGET_MB"]) or None)
    classifier.warm_up()
    _log_chunks(app, classifier.chunks)
    gate = InferenceGate(max_running=int(config["MAX_RUNNING"]),
                         max_waiting=int(config["MAX_WAITING"]),
                         wait_timeout=float(config["QUEUE_TIMEOUT"]))
    app.extensions[_EXTENSION] = PredictionService(
        classifier, gate, max_image_pixels=int(config["MAX_IMAGE_PIXELS"]),
        stuck_after_seconds=float(config["STUCK_AFTER_SECONDS"]), decoder=decoder,
        choice=choice)
    metrics.describe_model(classifier.spec)


def _log_chunks(app: Flask, chunks: memory.ChunkPlan) -> None:
    figures = chunks.as_dict()
    if chunks.fits:
        app.logger.info("TTA views run %d at a time within the memory budget: %s",
                        chunks.views_per_run, figures)
    else:
        app.logger.warning("the model does not fit the memory budget even one view at a time "
                           "(%s): expect the memory limit to be hit", figures)


def service_of(app: Flask) -> PredictionService:
    """The app's prediction service (created by `init_app`)."""
    service: PredictionService = app.extensions[_EXTENSION]
    return service


def current_service() -> PredictionService:
    """The prediction service of the app handling the current request."""
    return service_of(current_app)


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 2)


def _optional_path(value: object) -> Path | None:
    return Path(str(value)) if value else None
