"""Export encoder towers to ONNX and write the Triton model repository."""
