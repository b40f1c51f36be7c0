#!/usr/bin/env python3
"""Open an HTML page of decodelab's (the figures' index.html, a plot's) in a real headless
browser and check what a reader would see: every image rendered at a non-zero size, no
console error, no request that failed. Chromium from the system (Debian's `chromium`), driven
by Playwright (`pip install playwright`; no browser download).

    python3 scripts/check_page.py PAGE.html [--chromium /usr/bin/chromium]

Prints one line per image and exits 1 on any problem."""
import argparse
import pathlib
import sys

from playwright.sync_api import sync_playwright


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("page")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    url = pathlib.Path(a.page).resolve().as_uri()
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=a.chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(url, wait_until="load")
        images = page.eval_on_selector_all(
            "img",
            "imgs => imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete,"
            " natural: i.naturalWidth, w: i.getBoundingClientRect().width,"
            " h: i.getBoundingClientRect().height}))",
        )
        browser.close()
    if not images:
        problems.append("no images on the page")
    for i in images:
        ok = i["complete"] and i["natural"] > 0 and i["w"] > 0 and i["h"] > 0
        print(f'{"ok  " if ok else "BAD "} {i["src"]}: {i["w"]:.0f} x {i["h"]:.0f} px (natural width {i["natural"]})')
        if not ok:
            problems.append(f'{i["src"]} not rendered')
    for pr in problems:
        print(pr)
    print(f"{len(images)} images, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
