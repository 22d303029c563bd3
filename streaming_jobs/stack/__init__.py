"""The local stack: a single-node Kafka broker (KRaft), the Spark connector jars and the MLflow store."""
