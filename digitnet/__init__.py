"""DigitNet and loading a model version for inference: the torch code that serving and training share."""
