"""What is on disk, read and checked once for every verb: the checkpoint folder (config, index, safetensors headers,
tensor shapes), the state-dict key prefixes and the dtype table. Imports only ``errors``."""
