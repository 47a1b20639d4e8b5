"""SVG-style conditional VAE for action-conditioned video prediction (BAIR robot pushing)."""
