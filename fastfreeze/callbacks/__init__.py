"""Optional callbacks: EMA, MixUp/CutMix, loggers, torch.compile, distributed training, saving the best model and
early stopping, progressive resizing."""
