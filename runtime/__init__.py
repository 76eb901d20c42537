"""edgerun.runtime: how programs are run and measured.

* ``native/`` — ``edgerun-runner``, the torch-free C++ runner (protocol: ``native/PROTOCOL.md``);
* :mod:`.build` / :mod:`.bundle` — building it for host/aarch64 and self-contained bundles;
* :mod:`.runner` — its argv, running it locally, parsing its JSON lines;
* :mod:`.preflight` — will this bundle run this program?
* :mod:`.stats`, :mod:`.optable`, :mod:`.accuracy`, :mod:`.record` — the measurement side.

Importing the package imports nothing heavy (no torch, no executorch): submodules do that
lazily where they need it.
"""
