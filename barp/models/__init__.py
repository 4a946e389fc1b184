"""Routers as LightningModules: the base RouterModule, BaRP, the comparison methods, checkpoints, trained routers."""
