"""A PNG of a dashboard page as a browser draws it (the README's picture of index.html): headless Chromium, offline.

python -m dashboards.screenshot results/demo/index.html docs/demo-index.png     (`make screenshot`)
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from interp.errors import InterpError

# the flags that keep a headless Chromium off the network (this machine refuses outside connections) and out of the user's profile
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def screenshot(page: str | Path, png: str | Path, *, width: int = 1400, height: int = 900, timeout: float = 60) -> Path:
    """Render `page` (an HTML file) at width x height CSS pixels into `png`; raises InterpError without a browser."""
    from interp.plots import find_browser

    page, png = Path(page).resolve(), Path(png)
    if not page.is_file():
        raise InterpError(
            f"page={str(page)!r} does not exist; run `make demo` first (it writes results/demo/index.html)."
        )
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            find_browser(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            page.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png.is_file():
        raise InterpError(f"screenshot of {page} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    print(screenshot(args.page, args.png, width=args.width, height=args.height))


if __name__ == "__main__":
    main()
