"""Trainable adapter parameters of KAdaptation, LoRA and LoKr on a ViT-B/16-shaped model (q and v adapted).

Counts come from PEFT itself (`get_nb_trainable_parameters`) on a randomly initialised ViTForImageClassification with
ViT-B/16 shapes (hidden 768, 12 blocks, MLP 3072), minus the classifier head. Usage: python benchmarks/param_counts.py
"""

from __future__ import annotations

import transformers
from peft import LoKrConfig, LoraConfig, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import peft_kadapt


def main() -> None:
    transformers.logging.set_verbosity_error()
    config = ViTConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        num_labels=10,
    )
    qv = ["q_proj", "v_proj"]
    configs = {
        "KAdaptation n=32 r=1 (paper)": peft_kadapt.KAdaptationConfig(n=32, r=1),
        "KAdaptation n=16 r=1": peft_kadapt.KAdaptationConfig(n=16, r=1),
        "KAdaptation n=8 r=1": peft_kadapt.KAdaptationConfig(n=8, r=1),
        "KAdaptation n=32 r=1 slow_rank=1 (official code's form)": peft_kadapt.KAdaptationConfig(
            n=32, r=1, slow_rank=1
        ),
        "KAdaptation n=32 r=1 slow_rank=4": peft_kadapt.KAdaptationConfig(n=32, r=1, slow_rank=4),
        "KAdaptation n=32 r=1, share 'global'": peft_kadapt.KAdaptationConfig(n=32, r=1, share_slow_weights="global"),
        "KAdaptation n=32 r=1, share 'none'": peft_kadapt.KAdaptationConfig(n=32, r=1, share_slow_weights="none"),
        "LoRA r=1": LoraConfig(r=1, target_modules=qv),
        "LoRA r=8": LoraConfig(r=8, target_modules=qv),
        "LoKr r=8 (PEFT defaults)": LoKrConfig(r=8, target_modules=qv),
    }
    print("| method | trainable adapter parameters | max rank of ΔW per layer |")
    print("|---|---|---|")
    for name, peft_config in configs.items():
        model = get_peft_model(ViTForImageClassification(config), peft_config)
        trainable, _ = model.get_nb_trainable_parameters()
        if isinstance(peft_config, peft_kadapt.KAdaptationConfig):
            rank = min(peft_config.n * (peft_config.slow_rank or peft_config.n) * peft_config.r, 768)
        elif isinstance(peft_config, LoraConfig):
            rank = peft_config.r
        else:  # LoKr: ΔW = w1 ⊗ (w2_a w2_b), rank(ΔW) = rank(w1) · rank(w2)
            shapes = {
                n.split(".")[-2]: p.shape
                for n, p in model.named_parameters()
                if "layers.0.attention.q_proj.lokr_" in n
            }
            w1 = min(shapes["lokr_w1"]) if "lokr_w1" in shapes else peft_config.r
            w2 = min(shapes["lokr_w2"]) if "lokr_w2" in shapes else peft_config.r
            rank = min(w1 * w2, 768)
        print(f"| {name} | {trainable:,d} | {rank} |")


if __name__ == "__main__":
    main()
