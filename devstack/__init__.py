"""The local development stack, out of the job's way: ``fedstream stack up|down|status``.

A single-node Kafka broker (KRaft) from Maven Central jars, a secure one (SCRAM over TLS, a throwaway CA,
least-privilege ACLs), and topic set-up. Development, the tests, the demo and the benchmarks use it; the
streaming job never imports it. What the job and the clients share with it lives where they may import it:
``schemas.paths`` (local state, the local job key pair), ``schemas.topics.topic_configs`` and
``streaming_jobs.jars`` (Maven resolution, which the job's local Spark session needs for its connectors).
"""
