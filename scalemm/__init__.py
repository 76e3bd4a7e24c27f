"""scalemm: SCALE multimodal product representations.

One installed package with the project's folders mapped into it (see pyproject.toml):

    scalemm            this folder: the shared floor every stage uses and no stage owns
                       (store contract, modality list, corpus format, atomic I/O, run-folder
                       layout, config loading, the command-line convention, Ray addresses)
    scalemm.extract    extract/   stage 1: frozen backbones over a corpus into feature stores
    scalemm.fuse       fuse/      stage 2: the SCALE fusion model trained on cached features
    scalemm.evaluate   evaluate/  stage 3: embeddings, FAISS, metrics, reports
    scalemm.corpora    corpora/   corpus makers (built-in demo, real-media clipart, scale stores)
    scalemm.bench      bench/     benchmarks

The stages are imported as ``scalemm.<stage>``, never as top-level ``extract`` / ``evaluate``:
``evaluate`` is also Hugging Face's library, which our users often have installed beside us.
"""

import pkgutil

# Under `ray job submit --working-dir .` Ray puts its copy of the repository first on the
# workers' path, where this folder stands without the stage folders mapped into it; merge the
# installed package's folder in (pkgutil's standard way to spread a package over two places).
__path__ = pkgutil.extend_path(__path__, __name__)
