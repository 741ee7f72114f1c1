"""After training: the export format, export, ONNX, the Predictor, test-time augmentation, interpretation.
Imports no training feature (finetune/, callbacks/)."""
