"""mkdocs hooks for the refws site: pages that are files of the repository, links that work.

* A page whose text is ``<!-- include: PATH -->`` (``docs/index.md`` includes ``README.md``) is
  replaced by that repository file, so the README is the home page without a copy.
* Every relative link is read as a path of the repository (relative to the file it was written in)
  and, when that file is a page of the site, rewritten to the page: ``docs/backward.md`` in the
  README becomes ``backward.md`` on the home page, ``../CONTRIBUTING.md`` in a docs page becomes
  ``contributing.md``. Links to anything else are left alone, so ``mkdocs build --strict`` reports
  them as broken.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r"^<!--\s*include:\s*(\S+)\s*-->\s*$", re.M)
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")
# repository files shown as a page of the site (docs/*.md are pages under their own name)
INCLUDED = {"README.md": "index.md", "CONTRIBUTING.md": "contributing.md", "benchmarks/README.md": "benchmarks.md"}


def _site_page(repo_path: str) -> str | None:
    if repo_path in INCLUDED:
        return INCLUDED[repo_path]
    if repo_path.startswith("docs/") and (ROOT / repo_path).is_file():
        return repo_path[len("docs/") :]
    return None


def _rewrite(markdown: str, written_in: str, page_src: str) -> str:
    """Links of ``markdown`` (written in repository file ``written_in``) as seen from page ``page_src``."""

    def one(m):
        target = m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return m.group(0)
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(written_in), target))
        page = _site_page(repo_path)
        if page is None:
            return m.group(0)
        rel = posixpath.relpath(page, posixpath.dirname(page_src) or ".")
        return f"{m.group(1)}{rel}{m.group(3) or ''}{m.group(4)}"

    return LINK.sub(one, markdown)


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri
    m = INCLUDE.search(markdown)
    if m:
        written_in = m.group(1)
        markdown = (ROOT / written_in).read_text(encoding="utf-8")
    else:
        written_in = "docs/" + src
    return _rewrite(markdown, written_in, src)
