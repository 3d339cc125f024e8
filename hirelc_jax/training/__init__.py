"""Training: jitted AdamW loop, QAT fine-tuning under a plan, batched plan evaluation, checkpoints."""
