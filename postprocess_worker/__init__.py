"""The postprocess stage: logits -> label, confidence, probabilities, outlier flag."""
