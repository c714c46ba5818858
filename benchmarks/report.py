"""Rewrite the generated tables of BENCHMARKS.md from outputs/bench/*.json (run by `make bench`)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from benchmarks.common import RESULTS

DOC = Path("BENCHMARKS.md")


def table(name: str, r: dict) -> str:
    rows = [f"Machine: {r['machine']}. Command: `{r['command']}`.", "", "| metric | value |", "|---|---|"]
    for k, v in r.items():
        if k in ("machine", "command"):
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items())
        rows.append(f"| {k} | {v} |")
    return "\n".join(rows)


def main() -> None:
    text = DOC.read_text()
    for path in sorted(RESULTS.glob("*.json")):
        name = path.stem
        block = f"<!-- bench:{name} -->\n{table(name, json.loads(path.read_text()))}\n<!-- /bench:{name} -->"
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _, block=block: block, text)
        else:
            text += f"\n## {name}\n\n{block}\n"
    DOC.write_text(text)
    print(f"updated {DOC}")


if __name__ == "__main__":
    sys.exit(main())
