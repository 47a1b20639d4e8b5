"""Task sub-packages: each holds one lab's data loader, synthetic generator and model."""
