"""The applications built on the library: the command line, the demo, image-classifier
training and comparisons, language-model fine-tuning and the benchmarks."""
