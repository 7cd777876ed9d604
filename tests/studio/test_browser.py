"""A person's path in real Chromium: prompt, Generate, the image, the Gallery, a reload."""
import pytest

pytestmark = pytest.mark.browser


def _gallery_count(page) -> int:
    page.get_by_role("tab", name="Gallery").click()
    info = page.locator("#gallery-page-info")
    info.get_by_text("item").wait_for(timeout=30_000)
    text = info.inner_text()  # "Page 1 of 1 · 3 items"
    return int(text.split("·")[1].split()[0])


def test_generate_in_the_browser_then_find_it_in_the_gallery_after_reload(studio, page):
    page.goto(studio.url)
    before = _gallery_count(page)
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Prompt", exact=True).fill("a yellow star in the top left")
    page.click("#generate-button")
    page.wait_for_function("document.querySelector('#generate-status').innerText.includes('Done')",
                           timeout=90_000)
    assert page.locator("#generate-result img").count() >= 1
    after = before + 1
    page.get_by_role("tab", name="Gallery").click()
    # The grid refreshes itself once the generation is saved.
    page.wait_for_function(f"document.querySelector('#gallery-page-info').innerText.includes('· {after} item')",
                           timeout=30_000)
    assert page.locator("#gallery-grid img").count() == min(after, 24)
    page.reload()
    assert _gallery_count(page) == after
    assert "a yellow star in the top left" in page.locator("#gallery-grid").inner_text()


def test_a_small_guidance_sweep_in_the_browser_shows_the_grid_and_the_plots(studio, page):
    page.goto(studio.url)
    page.get_by_role("tab", name="Guidance Explorer").click()
    model = page.locator("#guidance-model input")
    model.fill("local/tiny-sd")
    model.press("Enter")
    page.locator("#guidance-prompt textarea").fill("a red circle on a white background")
    page.locator("#guidance-scales textarea").fill("1, 4")
    page.locator("#guidance-seeds textarea").fill("0")
    steps = page.locator("#guidance-steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.click("#guidance-run")
    page.wait_for_function("document.querySelector('#guidance-status').innerText.includes('Done')", timeout=90_000)
    status = page.locator("#guidance-status").inner_text()
    assert "2 cells" in status, status
    assert page.locator("#guidance-grid img").count() == 2
    # the CLIP-score curve is drawn (Vega renders the marks into a canvas or an svg)
    plot = page.locator("#guidance-plot-clip_score")
    plot.locator("canvas, svg").first.wait_for(timeout=30_000)
    assert "CLIP score" in plot.inner_text()
    table = page.locator("#guidance-table")
    assert "clip_score" in table.inner_text()
    # the sweep is one group in the gallery: an item opens it again in the Guidance Explorer
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid img").first.click()  # newest first: a cell of this sweep
    page.get_by_text("Open its sweep #").click()
    page.wait_for_function("document.querySelector('#guidance-status').innerText.includes('Reopened')",
                           timeout=30_000)
    assert page.locator("#guidance-grid img").count() == 2


def test_embedding_map_and_tokenizer_viewer_in_the_browser(studio, page):
    from gradio_client import Client

    client = Client(studio.url, verbose=False)
    gallery_ids = client.predict("local/tiny-sd", "a green star", "", 2, 5.0, 99, 16, 16, "euler", 1,
                                 api_name="/generate")[3]["gallery_ids"]
    page.goto(studio.url)
    page.get_by_role("tab", name="Embedding Map").click()
    page.get_by_label("PCA").check()
    page.locator("#embedding-build").click()
    page.wait_for_selector("#embedding-plot .js-plotly-plot .scatterlayer .point", timeout=90_000)
    assert "points" in page.locator("#embedding-status").inner_text()
    # Hover shows the thumbnail; a click on an image point opens that generation in the Gallery tab.
    point = page.locator("#embedding-plot .scatterlayer .trace").last.locator(".point").first
    box = point.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#embedding-tip", state="visible", timeout=10_000)
    assert page.locator("#embedding-tip").inner_text().strip() != ""
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('[role=tab][aria-selected=true]').innerText.includes('Gallery')",
                           timeout=30_000)
    page.wait_for_function("/#\\d+ · /.test(document.querySelector('#gallery-detail-status').innerText)",
                           timeout=30_000)

    page.get_by_role("tab", name="Tokenizer Viewer").click()
    page.locator("#tok-text textarea").fill("a small red circle in the top left on a black background")
    page.locator("#tok-run").click()
    page.wait_for_selector("#tok-view .tok-chip", timeout=30_000)
    assert "circle" in page.locator("#tok-view").inner_text() and "limit" in page.locator("#tok-view").inner_text()
    page.get_by_role("tab", name="VQGAN codes").click()
    page.locator("#vq-gen input").fill(str(gallery_ids[0]))
    page.locator("#vq-run").click()
    page.wait_for_selector("#vq-grid table td", timeout=30_000)
    assert page.locator("#vq-grid td").count() == 256


def test_audio_tab_generates_a_clip_with_a_player_and_a_spectrogram(studio, page):
    page.goto(studio.url)
    page.get_by_role("tab", name="Audio").click()
    model = page.locator("#audio-model input")
    model.fill("local/tiny-audioldm")
    model.press("Enter")
    page.locator("#audio-prompt textarea").fill("a low square wave pulsing")
    page.locator("#audio-duration input").fill("0.5")
    page.locator("#audio-generate").click()
    page.wait_for_function("document.querySelector('#audio-status').innerText.includes('Done')", timeout=90_000)
    assert "Judge:" in page.locator("#audio-status").inner_text()
    page.wait_for_selector("#audio-player audio, #audio-player .waveform-container, #audio-player button",
                           timeout=30_000)
    assert page.locator("#audio-spectrogram img").count() == 1


def test_video_tab_generates_a_clip_with_a_player_frames_and_measures(studio, page):
    page.goto(studio.url)
    page.get_by_role("tab", name="Video").click()
    model = page.locator("#video-model input")
    model.fill("local/tiny-animatediff")
    model.press("Enter")
    page.locator("#video-prompt textarea").fill("a green triangle moving left")
    for field, value in (("#video-frames", "4"), ("#video-fps", "8"), ("#video-seed", "5")):
        page.locator(f"{field} input").fill(value)
    steps = page.locator("#video-steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#video-generate").click()
    page.wait_for_function("document.querySelector('#video-status').innerText.includes('Done')", timeout=90_000)
    assert "4 frames at 8 fps" in page.locator("#video-status").inner_text()
    page.wait_for_selector("#video-player video", timeout=30_000)
    assert page.locator("#video-player video").get_attribute("src")
    # the browser decodes the MP4 (H.264): its metadata (duration, size) loads without a media error
    page.wait_for_function("(v => v && v.readyState >= 1 && !v.error && v.videoWidth === 16)"
                           "(document.querySelector('#video-player video'))", timeout=30_000)
    assert "Temporal consistency" in page.locator("#video-measures").inner_text()
    assert page.locator("#video-frame-strip img").count() == 4
    assert page.locator("#video-step-strip img").count() == 1
    # the gallery plays it too
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid img").first.click()  # newest first: this clip
    page.wait_for_selector("#gallery-video video", timeout=30_000)


@pytest.fixture()
def training_studio(tmp_path):
    """A studio of its own: its models folder receives the run's export, its gallery the sample grids."""
    from .conftest import StudioProcess

    (tmp_path / "models").mkdir()
    proc = StudioProcess(tmp_path / "models", tmp_path / "gallery").start()
    yield proc
    proc.stop()


def _pick(page, elem_id: str, text: str) -> None:
    """Choose ``text`` in a dropdown; typing and Enter can be lost while a busy page re-renders, so check the
    value took and try again (up to three times) before going on."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input")
    for attempt in range(3):
        box.fill(text)
        box.press("Enter")
        try:
            expect(box).to_have_value(text, timeout=5_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


def test_train_tab_runs_a_short_training_then_generate_uses_its_checkpoint(training_studio, page):
    studio = training_studio
    page.goto(studio.url)
    page.get_by_role("tab", name="Train").click()
    from studio.training_spec import TARGETS

    # the whole option label: with a prefix, Enter picks the option and the box may show its full label
    _pick(page, "train-target", TARGETS["vae-decoder"].label)  # the form follows the target
    page.wait_for_function("document.querySelector('#train-objective').innerText.includes('frozen encoder')",
                           timeout=30_000)
    assert page.locator("#train-ema input").is_disabled() and page.locator("#train-steps input").input_value() == "200"
    _pick(page, "train-target", TARGETS["ldm-fresh"].label)
    page.wait_for_function("document.querySelector('#train-objective').innerText.includes('a new UNet')",
                           timeout=30_000)
    assert page.locator("#train-ema input").is_enabled()
    page.locator("#train-name textarea, #train-name input").first.fill("browser-run")
    for field, value in (("#train-steps", "6"), ("#train-batch", "2"), ("#train-every", "3"), ("#train-lr", "0.001")):
        page.locator(f"{field} input").fill(value)
    page.locator("#train-more textarea, #train-more input").first.fill("--pool 16 --widths 8,16,16 --warmup 1 "
                                                                       "--threads 1")
    page.locator("#train-start").click()
    page.wait_for_function("document.querySelector('#train-message').innerText.includes('Started')", timeout=30_000)
    page.wait_for_function("['exported as', 'failed', 'crashed'].some("
                           "w => document.querySelector('#train-status').innerText.includes(w))", timeout=240_000)
    status = page.locator("#train-status").inner_text()
    assert "exported as" in status, status + "\n" + page.locator("#train-log").inner_text()
    assert "finished at step 6 / 6" in status and "local/browser-run-step6" in status
    page.wait_for_selector("#train-loss canvas, #train-loss svg", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#train-samples img').length >= 2", timeout=30_000)
    # the checkpoint generates from the Generate tab, no restart
    page.get_by_role("tab", name="Generate").click()
    _pick(page, "generate-model", "local/browser-run-step6")
    page.get_by_label("Prompt", exact=True).fill("a red circle")
    page.click("#generate-button")
    page.wait_for_function("document.querySelector('#generate-status').innerText.includes('Done')", timeout=90_000)
    assert page.locator("#generate-result img").count() >= 1
    # the sample grids are in the gallery, and a reload reconnects the Train tab to the run
    assert _gallery_count(page) >= 3  # 2 grids + the generation
    page.reload()
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('browser-run')",
                           timeout=30_000)


def test_two_d_lab_trains_ddpm_and_flow_and_shows_the_measures(studio, page):
    page.goto(studio.url)
    page.get_by_role("tab", name="Train").click()
    page.get_by_role("tab", name="2-D lab: DDPM vs flow").click()
    page.locator("#lab-train-steps input").fill("300")
    page.locator("#lab-run").click()
    page.wait_for_function("document.querySelector('#lab-status').innerText.includes('distance floor')",
                           timeout=120_000)
    text = page.locator("#lab-status").inner_text()
    assert "ddpm" in text and "flow" in text and "straightness" in text
    page.wait_for_selector("#lab-animation img", timeout=30_000)
    page.wait_for_function("document.querySelector('#lab-table').innerText.includes('reflow')", timeout=30_000)
    table = page.locator("#lab-table").inner_text()
    assert all(word in table for word in ("ddpm", "ddim", "flow", "distance", "straightness"))
