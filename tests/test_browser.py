"""Real-browser end to end: Debian's chromium, driven by Playwright, over HTTPS through the
production-shaped stack (TLS load balancer, rendered nginx site, shipped gunicorn).

Every page and state is opened at desktop (1280x800), phone (390x844) and narrow (320 px)
sizes, checked for sideways scrolling, console errors and CSP violations, and audited with
axe-core for WCAG 2.x A/AA violations; screenshots are kept under test-artifacts/ to look
at. Playwright's own browser download is never used; axe-core comes from npm into build/.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import images, nonlesion
from devtools.server import REPO, LiveServer
from devtools.stack import serve_stack

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
AXE = REPO / "build/npm/node_modules/axe-core/axe.min.js"
VIEWPORTS: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
              "is_mobile": True, "has_touch": True},
    "narrow": {"viewport": {"width": 320, "height": 640}, "device_scale_factor": 1,
               "is_mobile": True, "has_touch": True},
}
# Records what CSP blocks even where the browser would not log it to the console.
CSP_LISTENER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""
AXE_RUN = """async () => {
  const result = await axe.run(document, {runOnly: {type: 'tag',
    values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}});
  return result.violations.map(v => v.id + ': ' + v.help + ' @ ' +
    v.nodes.map(n => n.target.join(' ')).join(', '));
}"""


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("browser-stack"), tls=True)


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.exists():  # the same step as `make browser-tools`
        subprocess.run(["make", "-s", "browser-tools"], cwd=REPO, check=True, timeout=300)
    return AXE.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "install Debian's chromium: scripts/install-system-packages.sh"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A lesion, three non-lesions, a blurred lesion and a patient's set, as files."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    made = {
        "lesion.jpg": images.lesion_rgb(640, 480, seed=4),
        "landscape.jpg": nonlesion.landscape(seed=1),
        "text.png": nonlesion.text_page(seed=1),
        "blurred.jpg": cv2.GaussianBlur(images.lesion_rgb(640, 480, seed=5), (0, 0), 12),
        "back.jpg": images.lesion_rgb(400, 300, seed=1),
        "arm.jpg": images.lesion_rgb(400, 300, seed=2),
        "odd.jpg": images.atypical_lesion_rgb(400, 300, seed=3),
        "leg.jpg": images.lesion_rgb(400, 300, seed=6),
    }
    paths = {}
    for name, pixels in made.items():
        paths[name] = folder / name
        paths[name].write_bytes(images.encode(pixels, Path(name).suffix))
    paths["notes.jpg"] = folder / "notes.jpg"
    paths["notes.jpg"].write_text("not a photo at all\n" * 10)
    return paths


class PageProblems:
    """Console errors, uncaught exceptions and failed requests seen by one page."""

    def __init__(self, page: Any) -> None:
        self.items: list[str] = []
        page.on("console", lambda m: self._note(m.type == "error", f"console: {m.text}"))
        page.on("pageerror", lambda e: self._note(True, f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self._note(True, f"requestfailed: {r.url}"))
        page.on("response", lambda r: self._note(r.status >= 400, f"HTTP {r.status}: {r.url}"))

    def _note(self, problem: bool, what: str) -> None:
        if problem:
            self.items.append(what)


class Visit:
    """One browser context at one size; checks every state it is asked to look at."""

    def __init__(self, browser: Any, server: LiveServer, viewport: str, axe: str,
                 **options: Any) -> None:
        self.viewport, self.axe = viewport, axe
        self.scripts = options.get("java_script_enabled", True)
        # The stack's certificate is self-signed, made for this run.
        self.context = browser.new_context(base_url=server.url, **VIEWPORTS[viewport],
                                           accept_downloads=True, ignore_https_errors=True,
                                           **options)
        self.context.add_init_script(CSP_LISTENER)
        self.page = self.context.new_page()
        self.problems = PageProblems(self.page)

    def open(self, path: str) -> Any:
        response = self.page.goto(path)
        assert response is not None and response.status == 200
        assert self.page.url.startswith("https://")
        return self.page

    def check(self, state: str, allowed: tuple[str, ...] = ()) -> None:
        """No sideways scroll, no CSP violation, no console error, no axe violation; snap."""
        page = self.page
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{state}: the page scrolls sideways ({width})"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"browser-{state}-{self.viewport}.png"),
                        full_page=True)
        if self.scripts:  # with scripts off axe cannot run; the same page is audited with them on
            page.evaluate(self.axe)
            violations = page.evaluate(AXE_RUN)
            assert violations == [], f"{state} at {self.viewport}: {violations}"
        assert page.evaluate("window.__csp") == []
        assert [p for p in self.problems.items if not any(a in p for a in allowed)] == []

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Any, server: LiveServer, axe_source: str) -> Iterator[Any]:
    opened: list[Visit] = []

    def make(viewport: str, **options: Any) -> Visit:
        opened.append(Visit(browser, server, viewport, axe_source, **options))
        return opened[-1]

    yield make
    for one in opened:
        one.close()


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_one_photo_from_preview_to_result(visit: Any, photos: dict[str, Path],
                                          viewport: str) -> None:
    v = visit(viewport)
    page = v.open("/")
    v.check("form")
    file_input = page.get_by_label("Lesion photo")
    assert page.get_by_label("How many views").evaluate("e => e.tagName") == "SELECT"
    file_input.set_input_files(str(photos["lesion.jpg"]))
    preview = page.locator("#preview-canvas")
    preview.wait_for(state="visible")
    assert preview.evaluate("c => [c.width, c.height]") == [640, 480]
    assert "lesion.jpg" in page.locator("#preview-caption").inner_text()
    v.check("preview")

    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    # Hold the answer back so the in-between state can be seen and double-clicked.
    page.route("**/predict", lambda route: (page.wait_for_timeout(700), route.continue_()))
    button = page.get_by_role("button", name="Analyse")
    button.click()
    status = page.get_by_role("status")
    status.wait_for(state="visible")
    assert any(word in status.inner_text() for word in ("Uploading", "Analysing"))
    assert button.is_disabled()
    button.click(force=True)
    page.keyboard.press("Enter")
    v.check("progress")

    heading = page.get_by_role("heading", level=1)
    heading.wait_for(state="visible")
    page.wait_for_function("() => document.title.startsWith('Result')")
    assert len(posts) == 1, f"double submit: {posts}"
    assert heading.inner_text() == "Result for lesion.jpg"
    assert page.locator(".probability").inner_text().endswith("%")
    assert page.locator("section.warnings").count() == 0, "a clear lesion photo is not warned"

    photo = page.locator("img.photo")
    overlay = page.locator("img.heatmap")
    overlay.wait_for(state="visible")
    natural = photo.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural[0] * 480 == natural[1] * 640, "the photo keeps its own aspect"
    assert overlay.bounding_box() == photo.bounding_box(), "the map lies exactly on the photo"
    score = page.locator("section.score").bounding_box()
    assert 0 <= photo.bounding_box()["y"] - (score["y"] + score["height"]) < 120, \
        "the heatmap sits right under the score"
    assert page.locator(".colour-bar svg stop").count() >= 5
    slider = page.get_by_label("Heatmap strength")
    slider.fill("20")
    assert overlay.evaluate("i => getComputedStyle(i).opacity") == "0.2"
    v.check("result")


def test_downloads_are_made_for_that_result_and_named_after_the_upload(
        visit: Any, photos: dict[str, Path]) -> None:
    v = visit("desktop")
    page = v.open("/")
    page.get_by_label("Lesion photo").set_input_files(str(photos["lesion.jpg"]))
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_function("() => document.title.startsWith('Result')")
    shown = page.locator(".probability").get_attribute("value")
    expected = {"Result as JSON": "lesion-result.json", "One-page report (PDF)":
                "lesion-report.pdf", "Photo with heatmap (JPEG)": "lesion-heatmap.jpg"}
    for label, filename in expected.items():
        with page.expect_download() as download:
            page.get_by_role("link", name=label).click()
        assert download.value.suggested_filename == filename
        data = Path(download.value.path()).read_bytes()
        if filename.endswith(".json"):
            body = json.loads(data)
            assert body["probability"] == pytest.approx(float(shown), abs=1e-6)
            assert body["warnings"] == []
        elif filename.endswith(".pdf"):
            assert data.startswith(b"%PDF") and data.count(b"/Type /Page") >= 1
        else:
            assert data.startswith(b"\xff\xd8")
    page.emulate_media(media="print")
    assert page.locator("form, .keep, header nav").evaluate_all(
        "els => els.every(e => getComputedStyle(e).display === 'none')")
    assert page.locator("section.score").is_visible() and page.locator("img.photo").is_visible()
    page.screenshot(path=str(ARTIFACTS / "browser-print-desktop.png"), full_page=True)
    assert page.request.get("/predict", max_redirects=0).status == 303


@pytest.mark.parametrize("name, code", [("landscape.jpg", "not_a_lesion"),
                                        ("text.png", "not_a_lesion"),
                                        ("blurred.jpg", "blurry")])
def test_unsuitable_photos_are_warned_above_the_score(visit: Any, photos: dict[str, Path],
                                                      name: str, code: str) -> None:
    v = visit("phone")
    page = v.open("/")
    page.get_by_label("Lesion photo").set_input_files(str(photos[name]))
    page.get_by_role("button", name="Analyse").click()
    warnings = page.get_by_role("region", name="Read this before the score")
    warnings.wait_for(state="visible")
    assert code in warnings.locator("li").evaluate_all("els => els.map(e => e.dataset.code)")
    assert warnings.bounding_box()["y"] < page.locator("section.score").bounding_box()["y"]
    v.check(f"warned-{Path(name).stem}")


def test_form_works_without_javascript(visit: Any, photos: dict[str, Path]) -> None:
    v = visit("narrow", java_script_enabled=False)
    page = v.open("/")
    assert page.locator("#preview").is_hidden()
    page.get_by_label("Lesion photo").set_input_files(str(photos["lesion.jpg"]))
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Analyse").click()
    assert navigation.value is not None and navigation.value.status == 200
    assert page.get_by_role("heading", level=1).inner_text() == "Result for lesion.jpg"
    assert page.locator(".opacity-control").is_hidden()
    assert page.locator("img.heatmap").evaluate("i => getComputedStyle(i).opacity") == "0.4"
    v.check("result-nojs")


@pytest.mark.parametrize("scripts", [True, False], ids=["js", "nojs"])
def test_a_drawn_example_is_analysed_in_one_click(visit: Any, scripts: bool) -> None:
    v = visit("narrow", java_script_enabled=scripts)
    page = v.open("/")
    examples = page.locator(".example-list button.example")
    assert examples.count() == 6
    first = examples.first
    caption = first.inner_text().strip()
    assert "drawn" in caption.lower()
    with page.expect_navigation() as navigation:
        first.click()
    assert navigation.value is not None and navigation.value.status == 200
    heading = page.get_by_role("heading", level=1).inner_text()
    assert heading.startswith("Result for drawn-"), heading
    assert page.locator("img.heatmap").count() == 1
    v.check(f"example-{'js' if scripts else 'nojs'}")


def test_a_refused_upload_keeps_the_chosen_file(visit: Any, photos: dict[str, Path]) -> None:
    v = visit("phone")
    page = v.open("/")
    file_input = page.get_by_label("Lesion photo")
    file_input.set_input_files(str(photos["notes.jpg"]))
    page.get_by_role("button", name="Analyse").click()
    alert = page.get_by_role("alert").filter(has_text="Could not analyse")
    alert.wait_for(state="visible")
    assert "the file is not an image format we read" in alert.inner_text().lower()
    assert file_input.evaluate("i => i.files.length && i.files[0].name") == "notes.jpg"
    assert "upload-error" in (file_input.get_attribute("aria-describedby") or "")
    assert page.get_by_role("button", name="Analyse").is_enabled()
    v.check("refused", allowed=("415",))


def test_a_refused_upload_without_javascript_shows_the_reason(
        visit: Any, photos: dict[str, Path]) -> None:
    v = visit("desktop", java_script_enabled=False)
    page = v.open("/")
    page.get_by_label("Lesion photo").set_input_files(str(photos["notes.jpg"]))
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Analyse").click()
    assert navigation.value is not None and navigation.value.status == 415
    assert page.get_by_role("alert").filter(has_text="Could not analyse").is_visible()
    v.check("refused-nojs", allowed=("415",))


@pytest.mark.parametrize("viewport", ["desktop", "narrow"])
def test_patient_view_ranks_lesions_and_flags_the_odd_one(visit: Any, photos: dict[str, Path],
                                                          viewport: str) -> None:
    v = visit(viewport)
    page = v.open("/")
    page.get_by_role("link", name="Several lesions").first.click()
    page.get_by_label("Lesion photos").set_input_files(
        [str(photos[n]) for n in ("back.jpg", "arm.jpg", "odd.jpg", "leg.jpg")])
    assert page.locator("#preview-strip canvas").count() == 4
    v.check("patient-form")
    page.get_by_role("button", name="Compare").click()
    page.get_by_role("heading", name="4 lesions of one person, compared").wait_for()
    assert "odd.jpg" in page.get_by_role("region", name="The odd one out").inner_text()
    rows = page.locator("table.lesions tbody tr")
    assert rows.count() == 4
    probabilities = [float(x) for x in rows.evaluate_all(
        "rs => rs.map(r => r.dataset.probability)")]
    assert probabilities == sorted(probabilities, reverse=True)
    assert page.locator("tr.odd th .file").inner_text() == "odd.jpg"
    assert all(page.locator("table.lesions img").evaluate_all(
        "is => is.map(i => i.complete && i.naturalWidth > 0)"))
    v.check("patient-result")
    page.get_by_role("button", name="Differs from the others").click()
    assert rows.first.locator("th .file").inner_text() == "odd.jpg"


def test_api_page_shows_curl_lines_and_the_spec(visit: Any) -> None:
    v = visit("narrow")
    page = v.open("/")
    page.get_by_role("link", name="API").click()
    page.wait_for_url("**/api")
    assert "curl -F image=@lesion.jpg" in page.locator("pre").first.inner_text()
    assert page.locator("table.spec").inner_text().count("input_size") == 1
    v.check("api")
    with page.expect_response("**/api/v1/openapi.json") as response:
        page.get_by_role("link", name="OpenAPI 3.1 (JSON)").click()
    assert response.value.json()["openapi"].startswith("3.1")


def test_dark_mode_result_passes_contrast_checks(visit: Any, photos: dict[str, Path]) -> None:
    v = visit("phone", color_scheme="dark")
    page = v.open("/")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != \
        "rgb(251, 251, 250)"
    page.get_by_label("Lesion photo").set_input_files(str(photos["text.png"]))
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_function("() => document.title.startsWith('Result')")
    v.check("result-dark")


@pytest.fixture(scope="module")
def demo_server(full_demo_model: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LiveServer]:
    """The stack serving the shipped default (trained on drawn lesions), not the tiny model."""
    yield from serve_stack(full_demo_model, tmp_path_factory.mktemp("demo-stack"), tls=True)


def test_page_shows_what_the_api_says_for_the_same_drawn_lesion(
        browser: Any, demo_server: LiveServer, full_demo_model: Path, axe_source: str,
        tmp_path: Path) -> None:
    """The page agrees with the API on the same image: the probability, the call and the
    threshold mark. Which side of the threshold a given drawn lesion lands on depends on
    each machine's build of the demo; the rates are judged in tests/test_truth.py."""
    from devtools.server import Upload
    from inference.model_spec import read_spec_file

    threshold = read_spec_file(full_demo_model).threshold
    melanoma, naevus = images.clear_truth_cases(seed=4243)
    v = Visit(browser, demo_server, "desktop", axe_source)
    try:
        for name, pixels in (("melanoma.png", melanoma), ("naevus.png", naevus)):
            data = images.encode(pixels, ".png")
            (tmp_path / name).write_bytes(data)
            api = demo_server.post_api([Upload(name, data, "image/png")]).json()
            page = v.open("/")
            page.get_by_label("Lesion photo").set_input_files(str(tmp_path / name))
            page.get_by_role("button", name="Analyse").click()
            page.wait_for_function("() => document.title.startsWith('Result')")
            shown = float(page.locator("data.probability").get_attribute("value"))
            assert shown == pytest.approx(api["probability"], abs=1e-6), (name, shown, api)
            call = page.locator("p.label").inner_text()
            assert ("at or above that mark" in call) is api["positive"], (call, api)
            mark = float(page.locator(".meter line.mark").get_attribute("x1"))
            assert mark == pytest.approx(threshold * 100, abs=0.005)
            assert api["threshold"] == threshold
            assert "says nothing about real skin" in page.content()
            v.check(f"truth-{name.split('.')[0]}")
    finally:
        v.close()
