"""Commands over files: train, evaluate, fine-tune, calibrate, export, report, info."""
