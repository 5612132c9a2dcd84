"""A one-page PDF report of one result, drawn for that response and never kept."""
from __future__ import annotations

import datetime as dt
import io
import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inference import heatmap

WIDTH, HEIGHT = 1240, 1754  # A4 at 150 dpi
MARGIN = 80
INK, MUTED, WARN, LINE = (29, 35, 39), (83, 96, 106), (138, 28, 28), (213, 217, 220)


@dataclass(frozen=True)
class ReportContent:
    filename: str
    probability_text: str
    probability: float
    threshold: float
    call_sentence: str
    agreement_sentence: str
    warnings: tuple[str, ...]
    model_line: str
    demo: bool
    disclaimer: str


def render(content: ReportContent, photo_with_map: bytes) -> bytes:
    """The report as PDF bytes: score, meter, warnings, the photo with its map, disclaimer."""
    page = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(page)
    y = MARGIN
    y = _text(draw, "Melanoma risk check", y, 44, INK)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    y = _text(draw, f"{content.filename}  ·  {stamp}", y + 4, 24, MUTED)
    if content.demo:
        y = _box(draw, "Demo model, not trained: this score means nothing about any lesion.",
                 y + 20, (255, 243, 205), (179, 134, 0), INK)
    y = _text(draw, f"Melanoma probability: {content.probability_text}", y + 30, 40, INK)
    y = _meter(draw, content.probability, content.threshold, y + 16)
    y = _text(draw, content.call_sentence, y + 16, 26, INK)
    y = _text(draw, content.agreement_sentence, y + 8, 26, INK)
    for warning in content.warnings:
        y = _box(draw, warning, y + 16, (253, 236, 234), WARN, WARN)
    y = _picture(page, photo_with_map, y + 30, HEIGHT - y - 420)
    y = _colour_bar(draw, content.threshold, y + 12)
    y = _text(draw, "Heatmap: each region's own melanoma probability, on the same 0-100% scale "
              "for every photo (dark purple low, yellow high); the white line is the threshold.",
              y + 4, 22, MUTED)
    y = _text(draw, content.model_line, y + 20, 22, MUTED)
    _text(draw, content.disclaimer, max(y + 20, HEIGHT - MARGIN - 90), 24, INK)
    out = io.BytesIO()
    # Pillow stores the page as one JPEG inside the PDF: small, and prints at A4.
    page.save(out, "PDF", resolution=150.0, quality=88, title="Melanoma risk check result")
    return out.getvalue()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text(draw: ImageDraw.ImageDraw, text: str, y: int, size: int,
          colour: tuple[int, int, int], x: int = MARGIN, width: int = WIDTH - 2 * MARGIN) -> int:
    font = _font(size)
    per_line = max(20, int(width / (size * 0.52)))
    for line in textwrap.wrap(text, per_line) or [""]:
        draw.text((x, y), line, fill=colour, font=font)
        y += int(size * 1.35)
    return y


def _box(draw: ImageDraw.ImageDraw, text: str, y: int, fill: tuple[int, int, int],
         border: tuple[int, int, int], colour: tuple[int, int, int]) -> int:
    lines = max(1, len(textwrap.wrap(text, int((WIDTH - 2 * MARGIN - 40) / (24 * 0.52)))))
    height = lines * int(24 * 1.35) + 24
    draw.rectangle((MARGIN, y, WIDTH - MARGIN, y + height), fill=fill, outline=border, width=2)
    _text(draw, text, y + 12, 24, colour, MARGIN + 20, WIDTH - 2 * MARGIN - 40)
    return y + height


def _meter(draw: ImageDraw.ImageDraw, probability: float, threshold: float, y: int) -> int:
    left, right, height = MARGIN, WIDTH - MARGIN, 28
    draw.rectangle((left, y, right, y + height), fill=(230, 233, 235))
    colour = WARN if probability >= threshold else (11, 92, 173)
    draw.rectangle((left, y, left + (right - left) * probability, y + height), fill=colour)
    mark = left + (right - left) * threshold
    draw.line((mark, y - 8, mark, y + height + 8), fill=(0, 0, 0), width=4)
    small = _font(20)
    draw.text((left, y + height + 10), "0%", fill=MUTED, font=small)
    draw.text((mark - 60, y + height + 10), f"threshold {round(threshold * 100)}%",
              fill=MUTED, font=small)
    draw.text((right - 50, y + height + 10), "100%", fill=MUTED, font=small)
    return y + height + 40


def _picture(page: Image.Image, png: bytes, y: int, max_height: int) -> int:
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    scale = min((WIDTH - 2 * MARGIN) / picture.width, max(200, max_height) / picture.height)
    picture = picture.resize((max(1, round(picture.width * scale)),
                              max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)
    page.paste(picture, ((WIDTH - picture.width) // 2, y))
    return y + picture.height


def _colour_bar(draw: ImageDraw.ImageDraw, threshold: float, y: int) -> int:
    left, right = MARGIN, WIDTH - MARGIN
    colours = heatmap.colour_levels(np.linspace(0, 1, right - left).reshape(1, -1))[0]
    for offset, rgb in enumerate(colours):
        draw.line((left + offset, y, left + offset, y + 24), fill=tuple(int(c) for c in rgb))
    mark = left + (right - left) * threshold
    draw.line((mark, y, mark, y + 24), fill=(255, 255, 255), width=3)
    return y + 30
