"""Generation in transformers: the ``Pipeline`` (text + images + video + audio → text, streaming) and the
``generate`` verb."""
