"""The contract every edgerun room stands on (design card: ``core/``, installed as ``edgerun.core``).

* :mod:`edgerun.core.errors` — the one error tree and the one exit-code table;
* :mod:`edgerun.core.paths` — the ``EDGERUN_HOME`` layout (caches, bundles, runs, the store);
* :mod:`edgerun.core.numerics` — how close two sets of outputs are (SNR, cosine, top-1);
* :mod:`edgerun.core.artifact` — the typed artifact: :class:`Manifest` and its parts, its one reader
  and writer, test vectors and recipe identity;
* :mod:`edgerun.core.text` — :func:`sanitize_text`: device text made safe to print.

It imports nothing of edgerun (a test reads the imports and keeps it so) and nothing heavy (numpy
at most), so every room — export, runtime, devices — and the hall may import it.
"""
