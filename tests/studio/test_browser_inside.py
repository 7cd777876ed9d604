"""Inside the Model in real Chromium: the forward-process slider changes x_t; the one-step x0 estimate appears."""
import pytest

pytestmark = pytest.mark.browser
XT_SRC = "document.querySelector('#forward-xt img') && document.querySelector('#forward-xt img').src"


def _open_forward_section(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Inside the Model").click()
    page.get_by_role("tab", name="Forward process").click()
    page.locator("#forward-xt img").wait_for(timeout=30_000)


def _src_changes(page, before: str) -> str:
    page.wait_for_function(f"({XT_SRC}) && ({XT_SRC}) !== {before!r}", timeout=30_000)
    return page.evaluate(XT_SRC)


def test_moving_t_changes_the_noisy_image(studio, page):
    _open_forward_section(page, studio.url)
    before = page.evaluate(XT_SRC)
    assert before and "t = 500" in page.locator("#forward-numbers").inner_text()
    number = page.locator("#forward-t input[type=number]")
    number.fill("900")
    number.press("Enter")
    after = _src_changes(page, before)
    page.wait_for_function("document.querySelector('#forward-numbers').innerText.includes('t = 900')",
                           timeout=30_000)
    # the range input too: keys move t one step at a time
    page.locator("#forward-t input[type=range]").press("ArrowLeft")
    _src_changes(page, after)
    page.wait_for_function("document.querySelector('#forward-numbers').innerText.includes('t = 899')",
                           timeout=30_000)
    assert page.locator("#forward-plot").locator(".js-plotly-plot").count() == 1


def test_predict_x0_shows_the_estimate(studio, page):
    _open_forward_section(page, studio.url)
    model = page.locator("#forward-model input")
    model.fill("local/tiny-sd")
    model.press("Enter")
    page.click("#forward-predict")
    page.wait_for_function("document.querySelector('#forward-error').innerText.includes('Model timestep used')",
                           timeout=90_000)
    assert page.locator("#forward-estimate img").count() == 1 and page.locator("#forward-true img").count() == 1
    assert "PSNR" in page.locator("#forward-error").inner_text()


def test_cross_attention_maps_show_one_heatmap_per_token_and_follow_the_step_slider(studio, page):
    page.goto(studio.url)
    page.get_by_role("tab", name="Inside the Model").click()
    page.get_by_role("tab", name="Cross-attention maps").click()
    model = page.locator("#attention-model input")
    model.fill("local/tiny-sd")
    model.press("Enter")
    page.locator("#attention-prompt textarea").fill("a red circle in the top left")
    page.click("#attention-run")
    page.wait_for_function("document.querySelector('#attention-summary').innerText.includes('Saved as gallery item')",
                           timeout=90_000)
    assert page.locator("#attention-maps img").count() == 7  # a, red, circle, in, the, top, left
    assert "averaged over all recorded steps" in page.locator("#attention-caption").inner_text()
    page.locator("#attention-step input[type=range]").press("ArrowLeft")
    page.wait_for_function("document.querySelector('#attention-caption').innerText.includes('step ')"
                           " && !document.querySelector('#attention-caption').innerText.includes('averaged')",
                           timeout=30_000)
    page.screenshot(path=str(studio.gallery_dir.parent / "attention.png"), full_page=True)
