"""Publishing: the ``export`` verb (a Hub-ready repository: weights, remote code, GGUF files), the model card, the
licence policy and texts, and the push to the Hub."""
