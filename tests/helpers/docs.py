"""docs/design.md as the tests read it: one section at a time."""
import os

from helpers import ROOT

DESIGN = os.path.join(ROOT, "docs", "design.md")


def section(title: str) -> str:
    with open(DESIGN) as f:
        text = f.read()
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end if end > 0 else None]
