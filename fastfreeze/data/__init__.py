"""Data: preprocessing from timm's pretrained configs, image DataLoaders (folders, tables, arrays), table
reading, and the Fashion-MNIST reader of the demo."""
