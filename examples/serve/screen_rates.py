"""Sends every prompt of the given sets to a `tenets serve` at BASE_URL (one token of answer:
only the input screen's decision is read) and prints, per `kind` tag, how many were refused and
by which guard, with 95% Wilson intervals. Standard library only.

Usage: screen_rates.py BASE_URL MODEL LABEL SET.jsonl...
"""

import json
import math
import sys
import urllib.request

base_url, model, label, sets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


counts = {}
for path in sets:
    for line in open(path):
        row = json.loads(line)
        body = json.dumps({
            "model": model,
            "max_tokens": 1,
            "temperature": 0,
            "messages": [{"role": "user", "content": row["prompt"]}],
        }).encode()
        request = urllib.request.Request(
            base_url + "/chat/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as r:
            decision = json.load(r)["tenets"]
        kind = row.get("kind", "?")
        c = counts.setdefault(kind, {"n": 0, "refused": 0, "rule": 0, "classifier": 0})
        c["n"] += 1
        if decision["outcome"] == "refused":
            c["refused"] += 1
            c["classifier" if decision.get("rule") == "classifier" else "rule"] += 1

for kind, c in sorted(counts.items()):
    lo, hi = wilson(c["refused"], c["n"])
    print(
        f"{label}: {kind:<8} refused {c['refused']:>3}/{c['n']:<3} "
        f"{100 * c['refused'] / c['n']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]  "
        f"(rules {c['rule']}, classifier {c['classifier']})"
    )
