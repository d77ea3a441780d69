"""Project code: networks, loss, augmentation, dataset, training loop."""
