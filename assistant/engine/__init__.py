"""The serving engine: every answer the apps and evaluation give runs here, one batch row per answer,
in one running batch per model that requests join at the next token and leave when done.

``requests`` (a request and the four calls the engine makes on it) -> ``sampling`` (each row's next
token) -> ``cache`` (the KV cache, grown, joined and trimmed in place) -> ``batch`` (the running batch:
prefill, step, join, keep) -> ``worker`` (the queue, the loop that isolates every fault, ``stream``).

Why a decode loop of our own rather than ``generate``, or transformers' continuous batching
(``generate_batch`` / ``ContinuousBatchingManager``)? ``generate`` runs a fixed batch to its end, so a
request arriving meanwhile would wait a whole answer. Continuous batching packs every request's tokens
into one row of one sequence and its ``add_request`` takes no adapter, while PEFT's ``adapter_names``
routes by batch row; it also has one sampler for all requests, no seed per request and no repetition
penalty. Our loop keeps one batch row per answer, each with its adapter, settings and seed.
"""

from assistant.engine.worker import Batcher, batcher_for, stream

__all__ = ["Batcher", "batcher_for", "stream"]
