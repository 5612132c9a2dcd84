"""Plain-language wording for results: percentages, agreement, threshold, view sets, file names."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath

from inference import tta
from inference.model_spec import ModelSpec

_POLICY_WORDS = {
    "dihedral": "the photo turned and flipped every way",
    "flips": "the photo flipped left-right and upside down",
    "none": "the photo as it is",
}


def percent(probability: float) -> str:
    """Whole percent; the model is not precise enough for decimals to mean anything."""
    if probability < 0.01:
        return "under 1%"
    if probability > 0.99:
        return "over 99%"
    return f"{round(probability * 100)}%"


def views_phrase(count: int) -> str:
    return "1 view" if count == 1 else f"{count} views"


_POLICY_SHORT = {"dihedral": "turned and flipped", "flips": "flipped", "none": "as uploaded"}


def policy_label(policy: str) -> str:
    """How a TTA policy reads in the form's select: short enough for a 320 px phone."""
    count = len(tta.POLICIES[policy])
    return f"{views_phrase(count)} ({_POLICY_SHORT.get(policy, policy)})"


def agreement(probabilities: Sequence[float], policy: str) -> str:
    """The spread across views, in words a patient can read."""
    if len(probabilities) < 2:
        return ("Only one view was analysed, so there is no check of how steady the score is. "
                "Choose more views for that.")
    low, high = min(probabilities), max(probabilities)
    gap = high - low
    if gap < 0.05:
        verdict = "they agree closely"
    elif gap < 0.15:
        verdict = "they agree fairly well"
    else:
        verdict = "they disagree noticeably, so treat the score with extra caution"
    span = (f"all gave {percent(low)}" if percent(low) == percent(high)
            else f"gave between {percent(low)} and {percent(high)}")
    return (f"The model looked at {views_phrase(len(probabilities))} "
            f"({_POLICY_WORDS.get(policy, policy)}) and {span}: {verdict}.")


def threshold_sentence(positive: bool, threshold: float, labels: Sequence[str]) -> str:
    side = "at or above" if positive else "below"
    call = labels[1] if positive else labels[0]
    return (f"The model calls a photo “{labels[1]}” when the probability is "
            f"{percent(threshold)} or more (the mark on the bar). This one is {side} that "
            f"mark, so its call is “{call}”.")


def display_name(filename: str | None, default: str = "photo") -> str:
    """The upload's name as the page may show it: its base name in safe characters only,
    since a client's file name could carry markup, a path or a trick of direction."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    extension = re.sub(r"[^A-Za-z0-9]", "", name.rsplit(".", 1)[1])[:5] if "." in name else ""
    stem = file_stem(filename, default)
    return f"{stem}.{extension}" if extension else stem


def file_stem(filename: str | None, default: str = "lesion") -> str:
    """A safe, short base name for downloads, taken from the uploaded file's name."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name.rsplit(".", 1)[0]).strip(".-_")
    return stem[:60] or default


_VIEW_WORDS = {
    "original": "as uploaded", "flip-h": "flipped left-right", "flip-v": "flipped upside down",
    "rotate-180": "turned half a turn", "transpose": "mirrored across the diagonal",
    "rotate-90": "turned a quarter turn", "rotate-270": "turned three quarters",
    "anti-transpose": "mirrored across the other diagonal",
}
_WARNING_TITLES = {
    "not_a_lesion": "Not a skin lesion?", "blurry": "Blurred.", "too_dark": "Too dark.",
    "too_bright": "Too bright.", "low_contrast": "Nothing stands out.",
    "lesion_too_small": "Lesion too small.",
}


def view_words(name: str) -> str:
    return _VIEW_WORDS.get(name, name)


def warning_title(code: str) -> str:
    return _WARNING_TITLES.get(code, code.replace("_", " ").capitalize() + ".")


_ORIGIN_WORDS = {"user_model": "trained", "untrained_demo": "an untrained demo",
                 "demo_trained_on_drawn_lesions": "a demo trained on drawn lesions"}


def model_words(spec: ModelSpec) -> str:
    """The model's identity in one plain phrase."""
    return f"{spec.name}, version {spec.version} ({_ORIGIN_WORDS[spec.origin]})"


def number_meaning(spec: ModelSpec) -> str:
    """What the probability means, where the model's own record says; '' where it does not.

    The trained demo's scores are Platt-calibrated on its held-out drawn lesions
    (training/module.py), so among drawn lesions that score p, about a share p are drawn
    melanomas. A user's model carries no such record: nothing is claimed for it.
    """
    if spec.origin != "demo_trained_on_drawn_lesions":
        return ""
    share = re.search(r"(\d+(?:\.\d+)?)% melanoma", spec.training_data)
    mix = f" ({share.group(1)}% of them melanomas)" if share else ""
    return ("What this number is: a probability calibrated on drawn lesions the model did "
            f"not learn from{mix}. Among drawn lesions that score like this one, about this "
            "share were drawn as melanomas.")
