"""Built-in adapters: one module per framework, each driving it through the adapter protocol.

Each module (``refws.backends.torch``, ...) imports its framework only when its backend class is
constructed, so ``import refws`` and ``import refws.backends`` never import a framework. Install a
framework with its extra, e.g. ``pip install 'refws[torch]'``. The protocol they implement is
:mod:`refws.conformance.protocol`.
"""
