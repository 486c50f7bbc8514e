#!/usr/bin/env python
"""Fine-tune an image classifier with KAdaptation (or LoRA, LoKr, a linear probe, full fine-tuning) via the Trainer.

The same code as `kadapt train` (peft_kadapt.train). Examples:

    python examples/image_classification/run_image_classification.py --dataset_name mnist5k --shots 20 \\
        --output_dir outputs/mnist5k-kadapt
    python examples/image_classification/run_image_classification.py --method lora --lora_r 8 ...
    python examples/image_classification/run_image_classification.py --model_name_or_path facebook/dinov2-small \\
        --dataset_name uoft-cs/cifar10 --image_column_name img --resolution 224 ...   # with network

Every `transformers.TrainingArguments` option is accepted (`--learning_rate`, `--num_train_epochs`,
`--resume_from_checkpoint`, ...); a single JSON file of all arguments works too.
"""

from peft_kadapt.train import main


if __name__ == "__main__":
    main()
