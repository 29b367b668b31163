"""What pruning is made of: channel groups, gates, the cost model, width planning, removal and its check,
the objective, rankers, the training loop, torch-mode helpers. Imports nothing from pipeline or outputs."""
