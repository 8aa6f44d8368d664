"""Checks of the built documentation site that `mkdocs build --strict` does not make.

    python tools/check_site.py SITE_DIR SITE_URL

- nothing but the site is published (docs/requirements.txt stays out);
- 404.html, which a server shows at any path, links its assets from SITE_URL's path, so
  it works wherever the site is served when built with SITE_URL set to that place;
- every page loads the stylesheet that keeps names in tables from breaking mid-word.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit


def main(site: Path, site_url: str) -> int:
    problems: list[str] = []
    if (site / "requirements.txt").exists():
        problems.append("docs/requirements.txt was copied into the site")
    root = urlsplit(site_url).path or "/"
    links = re.findall(r'(?:href|src)="(/[^"]*)"', (site / "404.html").read_text())
    stray = [link for link in links if not link.startswith(root)]
    if not links or stray:
        problems.append(f"404.html links outside {root}: {stray[:3] or 'no local links at all'}")
    for page in site.rglob("*.html"):
        if "stylesheets/extra.css" not in page.read_text():
            problems.append(f"{page.relative_to(site)} does not load stylesheets/extra.css")
            break
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
