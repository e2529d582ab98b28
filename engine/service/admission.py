"""Admission control: shed the calls this process cannot score in time, at once and with a clear status.

Two signals are kept apart (README, "Overload and outages"):

- **This process is behind.** A call that waited longer than `max_queue_s`
  for a worker thread, or that arrives while `max_concurrent_rpcs` calls are
  already in progress, is refused with `RESOURCE_EXHAUSTED` before any work
  is done (`shed`), and so is a call whose deadline leaves no time for the
  window store (`engine.pipeline.DeadlineTooClose`). The gateway retries on
  another instance or applies its own fallback: a busy engine never answers
  "allow" on its behalf.
- **The store does not answer.** Redis errors and socket timeouts go to the
  store's circuit breakers and give degraded answers
  (`engine.windows.breaker`, `engine.windows.fallback`).

Queue wait is measured from the moment gRPC's poller thread looks up the
call's handler (its arrival in this process: `AdmittingHandler.service`) to
the moment a worker thread starts it. The in-progress limit itself is gRPC's
(`maximum_concurrent_rpcs`, answered by the poller thread without taking a
worker); `AdmittingHandler` only counts those refusals, from the server's
own count of active calls, so that they appear in the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc

#: Why a call was shed (`risk_shed_total{cause}`).
SHED_CAUSES = ("queue", "in_flight", "deadline")


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    #: Longest a call may wait for a worker thread before it is shed (seconds).
    max_queue_s: float = 0.05


class Admission:
    """The limits and their counters, shared by the servicer and its handler."""

    def __init__(
        self,
        policy: AdmissionPolicy,
        on_shed: Callable[[str, str], None] | None = None,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.policy = policy
        self.on_shed = on_shed or (lambda cause, detail: None)
        self.observe_wait = observe_wait or (lambda seconds: None)
        self._over_limit: Callable[[], bool] = lambda: False

    def watch(self, server: grpc.Server) -> None:
        """Read the server's count of active calls, to count the ones gRPC refuses beyond its limit.

        gRPC keeps that count in the server's private state; when a future
        version moves it, refusals are still made by gRPC, only not counted
        here (`tests` check that they are).
        """
        state = getattr(server, "_state", None)
        if state is None or not hasattr(state, "active_rpc_count"):
            return

        def over_limit() -> bool:
            limit = state.maximum_concurrent_rpcs
            return limit is not None and state.active_rpc_count >= limit

        self._over_limit = over_limit

    def arrived(self) -> float:
        """Called on gRPC's poller thread as a call arrives: its arrival time; counts a refusal by gRPC's limit."""
        if self._over_limit():
            self.on_shed("in_flight", "more calls in progress than RISK_MAX_CONCURRENT_RPCS")
        return time.monotonic()

    def queued_too_long(self, arrived: float) -> str | None:
        """At a call's start: why it must be shed for its wait in the queue, or None (the wait is observed)."""
        waited = time.monotonic() - arrived
        self.observe_wait(waited)
        if waited <= self.policy.max_queue_s:
            return None
        detail = (
            f"overloaded: this call waited {waited * 1000:.0f} ms for a worker (limit"
            f" {self.policy.max_queue_s * 1000:.0f} ms); retry on another instance"
        )
        self.on_shed("queue", detail)
        return detail


class AdmittingHandler(grpc.GenericRpcHandler):
    """A service's unary methods, each call stamped with its arrival time (module docstring).

    `methods` maps a method name to (behavior, response serializer); the
    behavior is called as `behavior(request_bytes, context, arrived)`.
    """

    def __init__(
        self,
        service: str,
        methods: dict[str, tuple[Callable[[bytes, grpc.ServicerContext, float], Any], Callable[[Any], bytes]]],
        admission: Admission,
    ) -> None:
        self.admission = admission
        self._handlers = {
            f"/{service}/{name}": (behavior, grpc.unary_unary_rpc_method_handler(behavior, None, serializer))
            for name, (behavior, serializer) in methods.items()
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        found = self._handlers.get(handler_call_details.method)  # type: ignore[attr-defined]
        if found is None:
            return None
        behavior, handler = found
        arrived = self.admission.arrived()
        stamped: Callable[[bytes, grpc.ServicerContext], Any] = partial(behavior, arrived=arrived)  # type: ignore[call-arg]
        return handler._replace(unary_unary=stamped)  # type: ignore[attr-defined,no-any-return]
