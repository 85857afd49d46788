"""Loops shared by all methods: fine-tuning, evaluation (pretraining and semi-supervised loops
join here); device, AMP, seeding, checkpoints and progress."""
