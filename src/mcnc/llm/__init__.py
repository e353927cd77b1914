"""Language models for fine-tuning experiments, loaded offline from pip packages.

``mcnc.llm.models`` builds the models (SmolLM2-135M-Instruct from its GGUF file, or a tiny
random Llama for tests) and ``mcnc.llm.data`` turns a small English Q/A corpus into
tokenized, batched training examples.
"""
