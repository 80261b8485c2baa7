"""Write README.md from nbs/index.ipynb (Quarto is not needed): markdown cells as they are, code cells as fenced Python.

Run from the repository root: `python .ci/readme.py`. CI fails when README.md and the notebook disagree.
"""
import json
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root / "nbs" / "index.ipynb").read_text())
parts = []
for c in nb["cells"]:
    src = "".join(c["source"]).strip()
    lines = src.splitlines()
    if lines and lines[0].startswith("#|"):
        if any(l.strip() in ("#| hide", "#|hide") for l in lines if l.startswith("#|")): continue
        src = "\n".join(l for l in lines if not l.startswith("#|")).strip()
    if not src: continue
    parts.append(src if c["cell_type"] == "markdown" else f"```python\n{src}\n```")
text = "<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n" + "\n\n".join(parts) + "\n"
out = root / "README.md"
if not out.exists() or out.read_text() != text:
    out.write_text(text)
    print("wrote", out)
