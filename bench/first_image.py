"""Click to first image in real Chromium: ``python -m bench.first_image [--runs 5] [--warm 5] [--settle S]
[--compare DIR] [--launch-args=...] [--breakdown]``.

Each run starts the real studio (``launch.py --no-browser --no-hf-cache --device cpu``, a fresh temporary gallery),
opens it in Debian's Chromium through Playwright, types a prompt and clicks Generate on the builtin shapes-ldm at
its default settings (15 DPM-Solver++ steps, guidance 2, 64 x 64, random seed). The time is taken inside the page:
``performance.now()`` just before the button's ``click()``, then every 4 ms until a new ``#generate-result img`` has
loaded (``complete`` with a natural width). Marks on the way: the first change of the status line (the queue's
answer), the handler's phases as the page shows them ("Loading model", "Encoding prompt", the first "Denoising",
"Saving", which arrives with the image) and "Done" (the run is saved; the next click waits for it).

- **cold**: the first click of a run, as soon as the page is rendered (``--settle S``: S seconds later, as a person
  typing a prompt would); it includes loading the model unless the launch's background warm-up already did;
- **warm**: ``--warm`` further clicks in the same page, each ``--pause`` seconds after the previous run was done.

Prints medians (and the handler's own "Done in" and sampling times) against the issue's goal (issue 11: click to
first image <= 1.5 s). With ``--compare DIR`` (another checkout) the two alternate run by run and the ratios of their
medians are printed. ``--breakdown`` also times the handler's pieces in this process (imports, model load, sampling
with live previews, trajectory decode, saving to the gallery).
"""
from __future__ import annotations

import argparse
import re
import statistics
import time

from bench.launch import open_browser, p95, start_studio, summary
from bench.report import emit

GOAL_S = 1.5
PROMPT = "a red circle on a white background"
MODEL_ID = "builtin/shapes-ldm"

# Clicks Generate; resolves with the marks (ms after the click) once a new result image has loaded and the status
# says "Done" (the handler finished: the next click must not queue behind this run's saving).
CLICK_AND_WAIT = """(old) => new Promise((resolve) => {
  const status = document.querySelector('#generate-status');
  const doneLine = (text) => (text.match(/Done in [^\\n]*/) || [null])[0];
  const before = status.innerText, beforeDone = doneLine(before);
  const marks = {};
  const t0 = performance.now();
  document.querySelector('#generate-button').click();
  const timer = setInterval(() => {
    const now = performance.now() - t0;
    const text = status.innerText;
    if (marks.first_status === undefined && text !== before) marks.first_status = now;
    for (const [key, phrase] of [['loading', 'Loading model'], ['encoding', 'Encoding prompt'],
                                 ['denoising', 'Denoising'], ['saving', 'Saving to the gallery']]) {
      if (marks[key] === undefined && text !== before && text.includes(phrase)) marks[key] = now;
    }
    const done = doneLine(text);
    if (marks.done === undefined && done && done !== beforeDone) { marks.done = now; marks.status = done; }
    if (marks.image === undefined) {
      for (const img of document.querySelectorAll('#generate-result img')) {
        if (!old.includes(img.src) && img.complete && img.naturalWidth > 0) { marks.image = now; break; }
      }
    }
    if ((marks.image !== undefined && marks.done !== undefined) || now > 120000) {
      if (now > 120000) marks.timeout = true;
      clearInterval(timer); resolve(marks);
    }
  }, 4);
})"""
OLD_SOURCES = "() => Array.from(document.querySelectorAll('#generate-result img')).map((i) => i.src)"


def click_once(page) -> dict:
    marks = page.evaluate(CLICK_AND_WAIT, page.evaluate(OLD_SOURCES))
    if marks.get("timeout"):
        raise SystemExit(f"no image within 120 s; status: {page.locator('#generate-status').inner_text()}")
    found = re.search(r"Done in ([\d.]+) s \(sampling ([\d.]+) s\)", marks.get("status", ""))
    marks["handler"] = float(found.group(1)) * 1000 if found else float("nan")
    marks["sampling"] = float(found.group(2)) * 1000 if found else float("nan")
    return marks


def breakdown(repeats: int = 5) -> None:
    """The Generate handler's pieces in this process (the same calls as studio.tabs.generate._run)."""
    import tempfile
    from pathlib import Path

    t = time.perf_counter()
    from pipelines.families import family_class
    from studio.generation import build_request, decode_trajectory, save_result
    from studio.services import build_services
    from studio.settings import Settings
    from studio.tabs.generate import PREVIEW_EVERY_S

    family_class("latent_diffusion")
    imports = time.perf_counter() - t
    folder = Path(tempfile.mkdtemp(prefix="bench-first-image-"))
    services = build_services(Settings(models_dir=folder / "models", gallery_dir=folder / "gallery", device="cpu",
                                       use_hf_cache=False))
    t = time.perf_counter()
    model = services.models.get(MODEL_ID)
    load = time.perf_counter() - t
    from pipelines.default_settings import read_default_settings

    d = read_default_settings(services.registry.get(MODEL_ID).path)
    rows: dict[str, list[float]] = {"sampling (previews decoded inline)": [], "previews decoded": [],
                                    "trajectory decode": [], "save to gallery": [], "PNG of the result": []}
    for k in range(repeats + 1):  # the first run warms torch's kernels and is reported alone
        req = build_request(PROMPT, "", d["num_inference_steps"], d["guidance_scale"], k, 64, 64, d["scheduler"], 1)
        decoded = [0]
        last = [0.0]

        def on_step(event):  # what _run does with the events: a preview at most every PREVIEW_EVERY_S, and the last
            now = time.perf_counter()
            if event.pred_x0 is not None and (now - last[0] >= PREVIEW_EVERY_S or event.step + 1 == event.num_steps):
                getattr(model.preview, "decode_live", model.preview.decode)(event.pred_x0[:1])
                decoded[0] += 1
                last[0] = now

        t0 = time.perf_counter()
        result = model.generate(req, on_step=on_step)
        t1 = time.perf_counter()
        frames = [decode_trajectory(model.preview, result, i) for i in range(len(result.images))]
        t2 = time.perf_counter()
        save_result(services.gallery, result, frames)
        t3 = time.perf_counter()
        import io

        result.images[0].save(io.BytesIO(), format="PNG")
        t4 = time.perf_counter()
        if k == 0:
            first = t1 - t0
            continue
        for name, value in (("sampling (previews decoded inline)", t1 - t0), ("previews decoded", decoded[0]),
                            ("trajectory decode", t2 - t1), ("save to gallery", t3 - t2),
                            ("PNG of the result", t4 - t3)):
            rows[name].append(value)
    services.close()
    print(f"\nHandler pieces in-process ({MODEL_ID}, {d['num_inference_steps']} steps, guidance "
          f"{d['guidance_scale']}, {d['scheduler']}, 64 x 64; medians of {repeats}):")
    print(f"  import pipelines (torch, diffusers, transformers) {imports:6.2f} s")
    print(f"  model load                                        {load:6.2f} s")
    print(f"  first sampling after load                         {first:6.2f} s")
    for name, values in rows.items():
        if name == "previews decoded":
            print(f"  {name:<50}{statistics.median(values):4.0f}")
        else:
            print(f"  {name:<50}{statistics.median(values):6.3f} s")


def clicks(root, extra_args: list[str], page, warm: int, settle: float, pause: float) -> tuple[float, list[dict]]:
    """One fresh studio: (seconds from its start to the cold click, the marks of 1 + ``warm`` clicks)."""
    studio = start_studio(root, extra_args)
    try:
        page.goto(studio.url)
        page.locator("#generate-button").wait_for(state="visible", timeout=60_000)
        page.get_by_label("Prompt", exact=True).fill(PROMPT)
        time.sleep(settle)
        clicked_at = time.perf_counter() - studio.started
        marks = []
        for _ in range(1 + warm):
            marks.append(click_once(page))
            time.sleep(pause)
        return clicked_at, marks
    finally:
        studio.stop()


def report(name: str, marks: list[dict]) -> float:
    """Prints the summary of ``marks``; returns the median click -> image in seconds."""
    if not marks:
        return float("nan")
    images = [m["image"] / 1000 for m in marks]
    print(summary(f"{name}: click -> image", images, GOAL_S))
    for key, label in (("first_status", "click -> first status"), ("loading", "click -> 'Loading model'"),
                       ("encoding", "click -> 'Encoding prompt'"), ("denoising", "click -> first 'Denoising'"),
                       ("saving", "click -> 'Saving' (image sent)"), ("done", "click -> 'Done' shown"),
                       ("handler", "handler ('Done in')"), ("sampling", "of it sampling")):
        values = [m[key] for m in marks if key in m]
        if not values:
            continue
        print(f"    {label:<30} median {statistics.median(values):6.0f} ms   p95 {p95(values):6.0f} ms")
    return statistics.median(images)


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    from bench.launch import ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh studios (one cold click each)")
    parser.add_argument("--warm", type=int, default=5, help="further clicks per run")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait on the rendered page before the cold click (default 0: at once)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between a finished run and the next click")
    parser.add_argument("--launch-args", default="", help="extra launch.py arguments, e.g. --launch-args=--no-warm-up")
    parser.add_argument("--compare", type=Path, default=None, metavar="DIR",
                        help="another checkout (e.g. git archive of the old commit) run in alternation; prints both "
                             "and the ratio")
    parser.add_argument("--breakdown", action="store_true", help="also time the handler's pieces in-process")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    roots = {"this checkout": ROOT} | ({f"compare ({args.compare})": args.compare} if args.compare else {})
    cold: dict[str, list[dict]] = {name: [] for name in roots}
    warm: dict[str, list[dict]] = {name: [] for name in roots}
    with sync_playwright() as playwright:
        browser, page = open_browser(playwright)
        try:
            for run in range(args.runs):
                for name, root in roots.items():  # interleaved, so both see the same load on the machine
                    clicked_at, marks = clicks(root, args.launch_args.split(), page, args.warm, args.settle,
                                               args.pause)
                    cold[name].append(marks[0])
                    warm[name].extend(marks[1:])
                    w = statistics.median(m["image"] for m in marks[1:]) if marks[1:] else float("nan")
                    print(f"run {run + 1} {name}: clicked {clicked_at:.1f} s after launch; "
                          f"cold {marks[0]['image']:.0f} ms (done {marks[0]['done']:.0f} ms), warm median {w:.0f} ms",
                          flush=True)
        finally:
            browser.close()

    print(f"\nClick to first image in Chromium, {MODEL_ID} at its defaults, {args.runs} fresh studios each "
          f"(launch.py --no-browser --no-hf-cache --device cpu {args.launch_args}):")
    medians = {}
    for name in roots:
        print(name)
        medians[name] = (report("  cold (first click)", cold[name]), report("  warm (later clicks)", warm[name]))
    this_cold, this_warm = medians["this checkout"]
    emit("first_image", "click -> first image, cold (first click after page load), median", this_cold, "s",
         f"<= {GOAL_S:g}", this_cold <= GOAL_S)
    emit("first_image", "click -> first image, warm (later clicks), median", this_warm, "s", f"<= {GOAL_S:g}",
         this_warm <= GOAL_S)
    if args.compare:
        other_cold, other_warm = medians[f"compare ({args.compare})"]
        print(f"click -> image, this checkout / compare: cold {this_cold / other_cold:.2f}, "
              f"warm {this_warm / other_warm:.2f}")
        emit("first_image", "cold click -> image, this checkout / compare", this_cold / other_cold, "x")
        emit("first_image", "warm click -> image, this checkout / compare", this_warm / other_warm, "x")
    if args.breakdown:
        breakdown()


if __name__ == "__main__":
    main()
