"""Modality encoders, pretrained backbones and the model catalogue."""
