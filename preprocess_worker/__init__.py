"""The preprocess stage: uploaded image bytes in, a 28x28 MNIST-style digit out."""
