"""Stage 3, ``scalemm.evaluate``: embeddings, FAISS indexes, metrics, reports."""

if __name__ == "evaluate":  # `import evaluate` from the repository root: Hugging Face's, see scalemm/shadow.py
    import os as _os

    from scalemm.shadow import hand_over as _hand_over

    _hand_over(__name__, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
