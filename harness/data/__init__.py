"""Sample/dataset contract, folds, label fractions and augmentations."""
