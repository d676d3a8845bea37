"""Development kit: throwaway servers, the shared test/bench/demo harness, fault injection, the install locks.

Never imported by ``worker``, ``schemas`` or ``export``'s training and export
modules, and not shipped in the wheel or the container image. The tests, the
benchmarks and the demo all import it, so there is one way to start a broker,
publish, run a worker process and read its outputs (:mod:`devkit.harness`,
:mod:`devkit.outputs`). :mod:`devkit.lock` compiles and checks ``requirements/``.
"""
