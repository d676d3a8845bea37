"""Development kit: throwaway servers, the shared test/bench/demo harness, fault injection.

Never imported by ``worker``, ``schemas`` or ``export``'s serving path, and not
shipped in the wheel or the container image. The tests, the benchmarks and the
demo all import it, so there is one way to start a broker, publish, run a
worker process and read its outputs.
"""
