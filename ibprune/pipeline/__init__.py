"""The pipeline: one configuration, the stages from a pretrained model to a report, sweeps, the model check,
latency budgets, stage checkpoints."""
