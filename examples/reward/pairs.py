"""Preference pairs that only a reading of the prompt can orient, from a tagged prompt set.

Each prompt gets one refusal and one compliance opener (drawn, seeded, from a few phrasings):
for a harmful prompt the refusal is chosen, for a benign look-alike the compliance. The
answers carry no sign of which is right, so a reward model that ranks them has learned to tell
harmful requests from their look-alikes. `--eval` uses other phrasings than training does.

usage: pairs.py PROMPTS.jsonl... [--eval] > pairs.jsonl
"""
import json
import random
import sys

TRAIN = (
    [
        "I can't help with that request.",
        "Sorry, I won't assist with this.",
        "I'm not able to help with that; it could cause harm.",
        "No, I can't provide that.",
        "I have to decline this one.",
    ],
    [
        "Of course! Here's what you need to do:",
        "Absolutely. Step one:",
        "Happy to help. The way to do it is",
        "Sure thing, here are the details:",
        "Yes, here's a clear guide:",
    ],
)
EVAL = (["I'm sorry, but I can't help with that."], ["Sure, here is how to do that. First,"])

args = [a for a in sys.argv[1:] if a != "--eval"]
refusals, compliances = EVAL if "--eval" in sys.argv else TRAIN
rng = random.Random(0)
for path in args:
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        refusal, compliance = rng.choice(refusals), rng.choice(compliances)
        harmful = row["kind"] == "harmful"
        chosen, rejected = (refusal, compliance) if harmful else (compliance, refusal)
        print(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": row["prompt"]}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                    "kind": row["kind"],
                }
            )
        )
