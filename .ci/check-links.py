#!/usr/bin/env python3
"""Internal links of the manual and the README resolve: every relative href in the built book
(docs/book) names a page that exists and, with a #fragment, an id on it; every relative link in
README.md, CHANGELOG.md and SECURITY.md names a file that exists. External links are not
fetched (CI has no internet). Usage: check-links.py [BOOK_DIR]"""
import html
import pathlib
import re
import sys
from urllib.parse import unquote, urldefrag

root = pathlib.Path(__file__).resolve().parent.parent
book = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "book"
bad = []
ids = {}


def ids_of(page):
    if page not in ids:
        text = page.read_text(errors="replace")
        ids[page] = set(re.findall(r'\bid="([^"]+)"', text))
    return ids[page]


pages = sorted(book.rglob("*.html"))
if not pages:
    sys.exit(f"no HTML under {book}: build the book first (mdbook build docs)")
checked = 0
for page in pages:
    text = page.read_text(errors="replace")
    for href in re.findall(r'\bhref="([^"]+)"', text):
        href = html.unescape(href)
        # External, or site-absolute (the 404 page's base, which depends on where it is served).
        if re.match(r"^[a-z][a-z0-9+.-]*:", href) or href.startswith("/"):
            continue
        path, frag = urldefrag(href)
        target = page if not path else (page.parent / unquote(path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        checked += 1
        rel = page.relative_to(book)
        if not target.exists():
            bad.append(f"{rel}: {href}: no such page")
        elif frag and target.suffix == ".html" and unquote(frag) not in ids_of(target):
            bad.append(f"{rel}: {href}: no #{frag} on that page")

for doc in ["README.md", "CHANGELOG.md", "SECURITY.md"]:
    text = (root / doc).read_text()
    for href in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", href) or href.startswith("#"):
            continue
        path, _ = urldefrag(href)
        checked += 1
        if not (root / path).exists():
            bad.append(f"{doc}: {href}: no such file")

for b in bad:
    print(b)
print(f"links checked: {checked}, broken: {len(bad)}")
sys.exit(1 if bad else 0)
