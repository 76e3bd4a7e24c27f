"""Search a catalogue index with a catalogue product or a new product's media (``pipelines/search.py``),
and the local search page (``pipelines/serve.py``)."""
