"""LightningModules: the training logic around the plain networks of src/models/."""
