"""Cross-check of `tenets train`'s PEFT output: per-token log-probs of a token sequence under the
base model and under base + PEFT adapter, from transformers (GGUF dequantized to fp32) and peft.
Compare with `tenets score --json` (native engine, with and without `--lora A.gguf`) on the same
tokens: they agree to ~1e-5 nats when the adapter's q/k rows are in HF's order.

Usage: python peft_logps.py MODEL.gguf PEFT_DIR TOKENS.json   (a JSON list of token ids)
Prints one JSON object: {"base": [...], "adapted": [...]}, log p of tokens[1:].
"""
import json
import sys

import torch
from peft import PeftModel

from hf_gguf import load_fp32


def main() -> None:
    model_path, peft_dir, tokens_path = sys.argv[1:4]
    base = load_fp32(model_path)
    tokens = json.load(open(tokens_path))
    ids = torch.tensor([tokens])

    def logps(model):
        with torch.no_grad():
            out = model(ids).logits[0].log_softmax(-1)
        return [float(out[i, tokens[i + 1]]) for i in range(len(tokens) - 1)]

    base_logps = logps(base)
    adapted = PeftModel.from_pretrained(base, peft_dir)
    print(json.dumps({"base": base_logps, "adapted": logps(adapted)}))


if __name__ == "__main__":
    main()
