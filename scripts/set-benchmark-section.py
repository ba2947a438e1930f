#!/usr/bin/env python3
"""Replaces one "## HEADING" section of docs/BENCHMARKS.md (up to the next "## " heading) with
new text, or appends it; creates the file when missing. Used by every scripts/bench-* script.

Usage: set-benchmark-section.py DOC HEADING SECTION_FILE   (SECTION_FILE "-" reads stdin)
"""
import re
import sys
from pathlib import Path

doc, heading, source = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
section = (sys.stdin.read() if source == "-" else Path(source).read_text()).rstrip() + "\n"
doc.parent.mkdir(parents=True, exist_ok=True)
text = doc.read_text() if doc.exists() else "# Benchmarks\n"
pattern = re.compile(r"^## " + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
if pattern.search(text):
    text = pattern.sub(lambda _: section + "\n", text, count=1)
else:
    text = text.rstrip() + "\n\n" + section
doc.write_text(text.rstrip() + "\n")
