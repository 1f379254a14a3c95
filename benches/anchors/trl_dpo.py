"""TRL's DPOTrainer + PEFT LoRA on the same work as `cargo bench --bench train`: the anchor.

Loads the GGUF with transformers (dequantized to fp32), LoRA r=8 / alpha 16 on all seven
projections, batch 4, max length 256, on the CPU in fp32 or under TRL's default bf16 autocast
(PRECISION, default fp32); times each optimiser step after the first and counts real
(non-padding) tokens of the chosen and rejected sequences. Prints one JSON line:
tokens_per_second, seconds_per_step, seconds_per_pair, peak_rss_mib, steps.

Usage: python trl_dpo.py MODEL.gguf PAIRS.jsonl STEPS THREADS [fp32|bf16]
"""
import json
import resource
import sys
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from hf_gguf import load_fp32


def main() -> None:
    model_path, pairs_path, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    precision = sys.argv[5] if len(sys.argv) > 5 else "fp32"
    if precision not in ("fp32", "bf16"):
        sys.exit(f"precision must be fp32 or bf16, not {precision!r}")
    torch.set_num_threads(threads)
    folder, name = model_path.rsplit("/", 1)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = load_fp32(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [json.loads(line) for line in open(pairs_path) if line.strip()]
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])

    times, tokens = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    config = DPOConfig(
        output_dir="/tmp/trl-anchor",
        per_device_train_batch_size=4,
        max_length=256,
        max_steps=steps,
        learning_rate=2e-4,
        beta=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        gradient_checkpointing=False,
        # Said outright: TRL's default is bf16 autocast, which on this CPU made a step of the
        # Qwen2.5-0.5B-shaped model 20× slower than fp32 (558 s against 28 s).
        bf16=precision == "bf16",
    )
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora, callbacks=[Timer()])
    # Real tokens per step: the non-padding tokens of each batch's chosen and rejected inputs.
    loader = trainer.get_train_dataloader()
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        real = 0
        # TRL 1.16 batches chosen and rejected sequences (prompt + answer) as rows of one
        # padded tensor: the attention mask counts the real tokens.
        real += int(batch["attention_mask"].sum())
        tokens.append(real)
    started = time.perf_counter()
    trainer.train()
    whole = time.perf_counter() - started
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    timed = times[1:] or times
    seconds = sum(timed)
    counted = sum(tokens[1:len(times)]) if len(times) > 1 else sum(tokens)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "tokens_per_second": counted / seconds,
        "seconds_per_step": seconds / len(timed),
        "seconds_per_pair": seconds / len(timed) / 4,
        "peak_rss_mib": peak,
        "steps": len(times),
        "precision": precision,
        # TRL's own count (cumulative `num_tokens`) over the whole train() call, first step
        # included: a cross-check of the figures above.
        "trl_num_tokens": float(logged[-1]) if logged else None,
        "train_seconds": whole,
    }))


if __name__ == "__main__":
    main()
