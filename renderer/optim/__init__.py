"""The optimization engine's math: image losses, mesh/texture regularizers, optimizers and constraints."""
