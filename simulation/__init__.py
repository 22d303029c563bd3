"""Event-driven federated simulation: real client training and the real server, on a virtual clock.

- :mod:`simulation.simulator`: :class:`Simulator`, which runs one configuration and reports a result;
- :mod:`simulation.event_loop`: the one event loop every strategy runs in;
- :mod:`simulation.devices`: what an update costs in time (training steps, device delay, upload);
- :mod:`simulation.fleet`: how devices are scheduled (own hardware, or queued on one machine as in the demo);
- :mod:`simulation.cadence`: how the streaming job judges updates and publishes versions;
- :mod:`simulation.clients`: the clients' real local training and personal layers;
- :mod:`simulation.encoding`: a compressed update's round trip, client's encoder to job's decoder;
- :mod:`simulation.strategy` and :mod:`simulation.results`: what to run and what it reached.
"""

from simulation.cadence import PER_ARRIVAL, JobCadence
from simulation.devices import DeviceCosts, NetworkSpeeds, update_message_bytes
from simulation.fleet import OWN_DEVICES, SIMULATED_FLEET, FleetTiming
from simulation.results import CurvePoint, SimulationResult
from simulation.simulator import Simulator
from simulation.strategy import StrategyConfig

__all__ = [
    "OWN_DEVICES",
    "PER_ARRIVAL",
    "SIMULATED_FLEET",
    "CurvePoint",
    "DeviceCosts",
    "FleetTiming",
    "JobCadence",
    "NetworkSpeeds",
    "SimulationResult",
    "Simulator",
    "StrategyConfig",
    "update_message_bytes",
]
