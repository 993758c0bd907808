"""Training: the one optimisation loop and its callbacks, the strategies, the recipes, the feature cache."""
