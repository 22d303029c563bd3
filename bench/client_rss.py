"""One federated client as its own process: load one HAPT subject, train once from the newest version, publish.

The benchmark runs this as a child and reads its peak RSS from ``os.wait4``. It prints one JSON line with
what it did. Needs a version on ``fl.models`` and the HAPT data (``producers.data.hapt``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Train one round on one subject and publish the update (acknowledged)."""
    parser = argparse.ArgumentParser(prog="python -m bench.client_rss", description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default="har-cnn")
    parser.add_argument("--subject", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import inspect

    import torch

    from producers.client import FederatedClient, LocalData
    from producers.data.hapt import load_hapt_clients
    from producers.models import build_model
    from producers.training import LocalTrainingConfig
    from producers.transport import GlobalModelSubscriber, UpdatePublisher
    from schemas.kafka_settings import KafkaSettings

    torch.set_num_threads(1)  # as the demo's devices do: one core each
    kafka = KafkaSettings.from_env()
    data = load_hapt_clients(subjects=[args.subject])[args.subject]
    client_id = f"subject-{args.subject:02d}"
    signing: dict[str, object] = {}
    if "identity" in inspect.signature(FederatedClient).parameters:  # this checkout signs updates
        from producers.identity import ClientIdentity

        signing["identity"] = ClientIdentity.generate(client_id)
    client = FederatedClient(
        client_id=client_id,
        model_name=args.model_name,
        model=build_model(args.model_name, args.seed),
        data=LocalData(data.train.windows, data.train.labels, data.validation.windows, data.validation.labels),
        training=LocalTrainingConfig(epochs=1, learning_rate=0.02, seed=args.seed),  # the demo's local training
        **signing,  # type: ignore[arg-type]
    )
    subscriber = GlobalModelSubscriber(kafka, args.model_name)
    publisher = UpdatePublisher(kafka)
    started = time.perf_counter()
    try:
        prepared = client.run_once(subscriber, publisher)
    finally:
        publisher.close()
        subscriber.close()
    report = {
        "subject": args.subject,
        "train_windows": len(data.train.labels),
        "train_and_publish_seconds": round(time.perf_counter() - started, 3),
        "update_bytes": len(prepared.value),
        "self_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
