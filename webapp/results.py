"""What a result says, as JSON and as report text: one place for the API and the page."""
from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference import patient as patient_rank
from webapp import wording
from inference.classifier import Prediction
from inference.errors import ClientError
from inference.insight import Insight
from inference.model_spec import ModelSpec
from webapp.multi_upload import NamedUpload
from webapp.report import ReportContent
from webapp.service import Analysis, PredictionService
from webapp.visuals import Visuals

DISCLAIMER = ("Research demo, not a medical device and not a diagnosis. Any concerning skin "
              "lesion must be examined by a dermatologist.")
THUMBNAIL_SIDE = 240
DEMO_NOTES = {True: "Demo model: trained only on computer-drawn (synthetic) dermoscopy images; it "
                    "has never seen a real lesion.",
              False: "Demo model: untrained placeholder with random weights; its scores mean "
                     "nothing."}


def disclaimer_for(spec: ModelSpec) -> str:
    """The disclaimer, led by what a demo model learned from when it is one."""
    return f"{DEMO_NOTES[bool(spec.training_data)]} {DISCLAIMER}" if spec.demo else DISCLAIMER


def single(analysis: Analysis, spec: ModelSpec, heatmap_png: bool = False) -> dict[str, Any]:
    """The JSON body of one analysis; the page's download is this same body."""
    prediction, insight = analysis.prediction, analysis.insight
    body: dict[str, Any] = {
        "probability": round(prediction.probability, 6),
        "label": prediction.label,
        "positive": prediction.positive,
        "threshold": spec.threshold,
        "warnings": [w.as_dict() for w in insight.warnings],
        "tta": {
            "policy": prediction.policy,
            "views": [{"name": name, "probability": round(p, 6)}
                      for name, p in prediction.views],
            "spread": round(prediction.spread, 6),
        },
        "image": {"width": prediction.image_width, "height": prediction.image_height},
        "heatmap": {"scale": "each region's own melanoma probability (0..1, same scale for "
                             "every image)",
                    "grid": np.round(insight.grid, 4).tolist()},
        "out_of_distribution": None if insight.ood_score is None else {
            "score": round(insight.ood_score, 4)},
        "model": {"name": spec.name, "version": spec.version,
                  "architecture": spec.architecture, "demo": spec.demo,
                  **precision_block(spec)},
        "demo": spec.demo,
        "timing_ms": dict(analysis.timing_ms),
        "disclaimer": disclaimer_for(spec),
    }
    if heatmap_png and analysis.visuals is not None:
        body["heatmap_png_base64"] = base64.b64encode(analysis.visuals.blended_png).decode()
    return body


def report_content(analysis: Analysis, spec: ModelSpec, filename: str) -> ReportContent:
    prediction = analysis.prediction
    return ReportContent(
        filename=filename, probability_text=wording.percent(prediction.probability),
        probability=prediction.probability, threshold=spec.threshold,
        call_sentence=wording.threshold_sentence(prediction.positive, spec.threshold,
                                                 spec.labels),
        agreement_sentence=wording.agreement(prediction.view_probabilities, prediction.policy),
        warnings=tuple(f"{wording.warning_title(w.code)} {w.message}"
                       for w in analysis.insight.warnings),
        model_line=f"Model: {wording.model_words(spec)}; {spec.architecture}, "
                   f"{spec.input_size} px; checkpoint {spec.checkpoint_sha256[:12]}.",
        demo=spec.demo, disclaimer="Not a diagnosis. " + DISCLAIMER.split(". ", 1)[1])


@dataclass(frozen=True)
class Lesion:
    index: int
    filename: str
    analysis: Analysis
    standing: patient_rank.Standing

    @property
    def prediction(self) -> Prediction:
        return self.analysis.prediction

    @property
    def insight(self) -> Insight:
        return self.analysis.insight

    @property
    def visuals(self) -> Visuals | None:
        return self.analysis.visuals


def patient(uploads: Sequence[NamedUpload], policy: str, service: PredictionService,
            max_total_pixels: int) -> list[Lesion]:
    """Analyse the photos as one piece of work (PredictionService.predict_each), then rank
    them; a refusal names the photo it is about."""
    try:
        analyses = service.predict_each([upload.data for upload in uploads], policy,
                                        max_total_pixels, display_side=THUMBNAIL_SIDE)
    except ClientError as error:
        if error.photo_index is not None:
            error.message = f"{uploads[error.photo_index].filename}: {error.message}"
        raise
    pooled = np.stack([a.insight.pooled for a in analyses])
    ranks = patient_rank.standings([a.prediction.probability for a in analyses], pooled)
    return [Lesion(i, upload.filename, analysis, standing)
            for i, (upload, analysis, standing) in enumerate(zip(uploads, analyses, ranks,
                                                                  strict=True))]


def patient_body(lesions: Sequence[Lesion], spec: ModelSpec,
                 heatmap_png: bool = False) -> dict[str, Any]:
    odd = next((lesion.index for lesion in lesions if lesion.standing.odd_one_out), None)
    items = []
    for lesion in lesions:
        item = single(lesion.analysis, spec, heatmap_png)
        item.pop("disclaimer")
        s = lesion.standing
        items.append({"filename": lesion.filename, **item, "standing": {
            "difference": round(s.difference, 6), "relative": round(s.relative, 4),
            "probability_rank": s.probability_rank, "difference_rank": s.difference_rank,
            "odd_one_out": s.odd_one_out}})
    return {"lesions": items, "odd_one_out": odd, "disclaimer": DISCLAIMER}


def precision_block(spec: ModelSpec) -> dict[str, Any]:
    """What the model runs in and, for INT8, its measured fidelity against fp32."""
    block: dict[str, Any] = {"precision": spec.precision}
    if spec.fidelity_summary:
        block["fidelity_vs_fp32"] = spec.fidelity_summary
    return block
