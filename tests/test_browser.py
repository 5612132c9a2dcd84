"""Real-browser end to end: Debian's chromium, driven by Playwright, over HTTPS through the
production-shaped stack (TLS load balancer, rendered nginx site, shipped gunicorn).

Open the page, upload through the form with the keyboard, see the result and its heatmap,
with no console error or CSP violation, at desktop and phone sizes; screenshots are kept
under test-artifacts/. Playwright's own browser download is never used.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import images
from devtools.server import REPO, LiveServer
from devtools.stack import serve_stack

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
VIEWPORTS: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3,
              "is_mobile": True, "has_touch": True},
}
# Records what CSP blocks even where the browser would not log it to the console.
CSP_LISTENER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("browser-stack"), tls=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "install Debian's chromium: scripts/install-system-packages.sh"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "lesion.jpg"
    path.write_bytes(images.encode(images.lesion_rgb(640, 480, seed=4), ".jpg"))
    return path


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


def _open(browser: Any, server: LiveServer, viewport: str) -> tuple[Any, Any, PageProblems]:
    # The stack's certificate is self-signed, made for this run.
    context = browser.new_context(base_url=server.url, ignore_https_errors=True,
                                  **VIEWPORTS[viewport])
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    problems = PageProblems(page)
    response = page.goto("/")
    assert response is not None and response.status == 200
    assert page.url.startswith("https://")
    return context, page, problems


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_upload_through_the_form_shows_result_with_heatmap(browser: Any, server: LiveServer,
                                                           photo: Path, viewport: str) -> None:
    context, page, problems = _open(browser, server, viewport)
    try:
        # Accessibility: each control is found by its visible label.
        file_input = page.get_by_label("Lesion photo")
        assert file_input.get_attribute("type") == "file"
        assert page.get_by_label("Test-time augmentation").evaluate("e => e.tagName") == "SELECT"
        file_input.set_input_files(str(photo))
        file_input.focus()
        for _ in range(5):  # the submit button is a few Tab presses away, never a mouse
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.type") == "submit":
                break
        assert page.evaluate("document.activeElement.textContent.trim()") == "Analyse"
        with page.expect_navigation() as navigation:
            page.keyboard.press("Enter")
        result = navigation.value
        assert result is not None and result.status == 200
        assert "no-store" in result.headers["cache-control"]

        assert page.locator("h1").inner_text() == "Result"
        assert page.locator(".probability").inner_text().endswith("%")
        heatmap = page.locator("img.heatmap")
        heatmap.wait_for(state="visible")
        assert heatmap.evaluate("img => img.complete && img.naturalWidth") > 0
        alts = page.locator("img").evaluate_all("imgs => imgs.map(i => i.alt)")
        assert len(alts) == 2 and all(alt.strip() for alt in alts)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), \
            "the page must not scroll sideways"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"browser-result-{viewport}.png"), full_page=True)
        assert page.evaluate("window.__csp") == []
        assert problems.items == []
    finally:
        context.close()


def test_refused_upload_shows_the_reason_next_to_the_form(browser: Any, server: LiveServer,
                                                          tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo at all\n" * 10)
    context, page, problems = _open(browser, server, "desktop")
    try:
        page.get_by_label("Lesion photo").set_input_files(str(notes))
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Analyse").click()
        assert navigation.value is not None and navigation.value.status == 415
        alert = page.get_by_role("alert").filter(has_text="Could not analyse")
        assert "not an image" in alert.inner_text() or "not a photo" in alert.inner_text()
        assert page.get_by_label("Lesion photo").get_attribute("aria-describedby") == \
            "upload-error"
        page.screenshot(path=str(ARTIFACTS / "browser-refused-desktop.png"), full_page=True)
        assert page.evaluate("window.__csp") == []
        # The 415 document itself is reported by Chromium as a failed resource load.
        assert [p for p in problems.items if "415" not in p] == []
    finally:
        context.close()
