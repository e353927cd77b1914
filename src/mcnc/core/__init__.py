"""The core: seeded randomness, the generator, the chunked manifold, the layout, the
reparameterisation every method shares and the file format. It knows nothing of data sets,
Hugging Face or the command line."""
