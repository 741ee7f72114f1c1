"""The core: `BaseLearner` (the training loop, layer groups, freezing, evaluation, saving and resuming) and
what it needs: callbacks and their events, the Recorder, the divergence guard, the optimizer and weight decay,
lr specs, norm layers, losses, metrics, tasks, data containers, devices. Needs torch only: no model library."""
