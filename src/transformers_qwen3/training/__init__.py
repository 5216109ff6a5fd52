"""Fine-tuning: chat JSONL data, LoRA through peft, and the ``finetune`` verb on transformers' Trainer."""
