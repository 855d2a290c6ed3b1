"""Quality metrics for generated samples, one module per modality."""
