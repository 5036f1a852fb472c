"""Running a model: the Llama forward pass (model.py) and text generation with sampling,
streaming and chat templates (generate.py). Imports format, kernels and io."""
