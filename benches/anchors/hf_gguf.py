"""Loading a GGUF model into transformers for the anchors: dequantized to fp32, with the
"quantized" tag transformers puts on GGUF-loaded models removed (it refuses to train them, though
the weights are plain fp32 by then)."""
import torch
from transformers import AutoModelForCausalLM


def load_fp32(model_path: str):
    folder, name = model_path.rsplit("/", 1)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    for holder in (model, model.config):
        for attr in ("quantization_config", "hf_quantizer"):
            if hasattr(holder, attr):
                try:
                    delattr(holder, attr)
                except AttributeError:
                    setattr(holder, attr, None)
    model.is_quantized = False
    return model
