"""Start the studio: ``python launch.py`` (see ``--help``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Multimodal Studio: a browser studio for small diffusion models.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: only this machine can connect); any other "
                             "address needs --auth")
    parser.add_argument("--auth", type=Path, default=None, metavar="FILE",
                        help="file of user:password lines; the studio then asks for a login (required with a "
                             "non-loopback --host)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port of the web UI (default 7860)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="folder with your own diffusers model folders (default ./models)")
    parser.add_argument("--gallery-dir", type=Path, default=Path("gallery"),
                        help="folder for generated media and the gallery database (default ./gallery)")
    parser.add_argument("--db-url", default=None,
                        help="SQLAlchemy database URL (default: sqlite file gallery.db inside --gallery-dir)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="folder of training runs started from the Train tab (default: runs/ beside --gallery-dir)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="where models run: auto picks CUDA, then MPS, then CPU (default auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="the models' number format: auto is float16 on a GPU, float32 on the CPU (default auto)")
    parser.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default="off",
                        help="torch.compile each model's UNet/transformer with this mode when it loads (default off; "
                             "the first run of each size compiles: seconds on a GPU, minutes on a CPU)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab on start")
    parser.add_argument("--no-hf-cache", action="store_true",
                        help="do not list models found in the Hugging Face cache")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="do not load the default model and compile the Embedding Map's UMAP kernels in the "
                             "background after start (each then happens on first use)")
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost" only reach this machine; every other address (0.0.0.0 included) is
    reachable from the network."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


class ExposureError(ValueError):
    """The studio would be reachable without a login, or the login file is unusable."""


def read_auth(path: Path) -> list[tuple[str, str]]:
    """``user:password`` lines (blank lines and ``#`` comments skipped) as Gradio's ``auth`` list."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExposureError(f"cannot read the --auth file {path}: {exc}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise ExposureError(f"--auth file {path}, line {number}: expected user:password")
        pairs.append((user.strip(), password))
    if not pairs:
        raise ExposureError(f"the --auth file {path} has no user:password line")
    return pairs


def check_exposure(host: str, auth_file: Path | None) -> list[tuple[str, str]] | None:
    """The login list to launch with (None: no login). Refuses a non-loopback address without one."""
    auth = read_auth(auth_file) if auth_file is not None else None
    if auth is None and not is_loopback(host):
        raise ExposureError(
            f"refusing to listen on {host} without a login: anyone who can reach this machine could then run "
            "models on it and read or delete your gallery (studios left open like this have been found and "
            "abused). Pass --auth FILE with user:password lines, or keep the default --host 127.0.0.1 and reach "
            "it through an SSH tunnel.")
    return auth


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        auth = check_exposure(args.host, args.auth)
    except ExposureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from studio.settings import Settings

    settings = Settings(host=args.host, port=args.port, models_dir=args.models_dir, gallery_dir=args.gallery_dir,
                        db_url=args.db_url, runs_dir=args.runs_dir, device=args.device, dtype=args.dtype,
                        compile=args.compile, open_browser=not args.no_browser,
                        use_hf_cache=not args.no_hf_cache)
    from studio.gallery import GalleryError
    from studio.services import build_services

    try:
        services = build_services(settings)
    except (GalleryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from starlette.middleware import Middleware

    from studio.gallery.reconcile import sweep

    try:
        print(sweep(services.gallery).summary())  # after a crash: files without rows are removed, and said
    except Exception as exc:  # the check must never keep the studio from starting
        print(f"gallery check skipped: {exc}", file=sys.stderr)
    from studio.app import CSS, HEAD, build_app
    from studio.origin_guard import OriginGuard

    demo = build_app(services)
    print(f"Studio: {len(services.registry.entries())} model(s), gallery {settings.gallery_dir.resolve()}")
    demo.launch(server_name=settings.host, server_port=settings.port, inbrowser=settings.open_browser,
                allowed_paths=[str(Path(settings.gallery_dir).resolve() / "media")], show_error=True,
                footer_links=["api", "settings"], css=CSS, head=HEAD, auth=auth,
                app_kwargs={"middleware": [Middleware(OriginGuard)]}, prevent_thread_lock=True)
    if not args.no_warm_up:
        start_warm_up(services)  # after the server answers: the page never waits for it
    demo.block_thread()  # until Ctrl+C, as launch() itself would
    return 0


UMAP_AFTER_S = 30.0  # the UMAP warm-up waits this long after the model's: importing umap (numba, pynndescent) is
# 1-2 s of pure-Python work that halves the speed of a Generate click running beside it (measured: bench.first_image)


def warm_up(services) -> None:
    """Background work after start, in this order: load the Generate tab's default model (so the first click
    only samples; a click meanwhile waits for this load on the model cache's lock), then, UMAP_AFTER_S later and
    not while a job runs, compile UMAP's kernels for the Embedding Map (~50 s of one core, at low priority).
    Never stops the studio: a failure is printed."""
    import time

    from studio.services import warm_up_default_model

    try:
        seconds = warm_up_default_model(services)
        if seconds is not None:
            print(f"Warm-up: {services.default_model_id()} loaded in {seconds:.1f} s")
    except Exception as exc:  # the studio works without it: the model then loads on first use
        print(f"warm-up of the default model skipped: {exc}", file=sys.stderr)
    time.sleep(UMAP_AFTER_S)
    while services.jobs.running():  # a running generation keeps its speed
        time.sleep(1.0)
    from pipelines.embedding_space import warm_up_umap

    try:
        warm_up_umap()  # lowers this thread's priority first
    except Exception as exc:
        print(f"UMAP warm-up skipped: {exc}", file=sys.stderr)


def start_warm_up(services):
    import threading

    thread = threading.Thread(target=warm_up, args=(services,), name="studio-warm-up", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    sys.exit(main())
